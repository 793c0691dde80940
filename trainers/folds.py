"""Walk-forward folds: train / validation / test borders that move forward through time (issue 26).

A fold is four times on the data's calendar (the union of the sessions' bar times): its training starts at
`train_start` (the data's first bar for an expanding window, or `--train-window` back from validation), its
validation block precedes its test block, and the test blocks of successive folds tile the time from
`--first-test` to the end of the data, each `--test-length` long, without overlap. The embargo gap between
the parts is the splits' own (data.split.gap), applied when the borders are turned into rows.

Lengths are a number of bars ("63") or a duration ("63D", "3M", "1Y": days, months, years of the calendar).
"""

import dataclasses
import re

import numpy as np

from errors import InputError
from times import to_ns

NS_PER_DAY = 86_400 * 10**9
_DURATION = re.compile(r"^\s*(\d+)\s*([DMY]?)\s*$", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Length:
    """A span of bars (`unit` "rows") or of the calendar ("D", "M", "Y")."""

    count: int
    unit: str

    def after(self, calendar, start):
        """The first index of `calendar` at or after `start` (an index) moved forward by this length."""
        if self.unit == "rows":
            return start + self.count
        return int(np.searchsorted(calendar, _shift(calendar[start], self.count, self.unit), "left"))

    def before(self, calendar, end):
        """The first index of the span of this length that ends just before index `end`."""
        if self.unit == "rows":
            return end - self.count
        return int(np.searchsorted(calendar, _shift(calendar[end], -self.count, self.unit), "left"))

    def __str__(self):
        return f"{self.count} rows" if self.unit == "rows" else f"{self.count}{self.unit}"


def _shift(ns, count, unit):
    """A time moved by `count` days, calendar months or years; a day the target month lacks becomes its
    last day (Jan 31 + 1M = Feb 28, as pandas' DateOffset), the time of day kept."""
    if unit == "D":
        return int(ns) + count * NS_PER_DAY
    when = np.datetime64(int(ns), "ns")
    day = when.astype("datetime64[D]")
    month = day.astype("datetime64[M]")
    target = month + np.timedelta64(count * (12 if unit == "Y" else 1), "M")
    days_in_target = int(((target + np.timedelta64(1, "M")).astype("datetime64[D]") - target.astype("datetime64[D]"))
                         .astype(int))
    offset = min(int((day - month.astype("datetime64[D]")).astype(int)), days_in_target - 1)
    moved = target.astype("datetime64[D]") + np.timedelta64(offset, "D")
    return int(moved.astype("datetime64[ns]").astype(np.int64)) + int((when - day.astype("datetime64[ns]")).astype(np.int64))


def parse_length(text, what):
    """'63' (bars), '63D', '3M', '1Y' -> Length; one line naming `what` otherwise."""
    match = _DURATION.match(str(text))
    if not match:
        raise InputError(f"{what} {text!r}: give a number of bars (63) or a duration (63D, 3M, 1Y)")
    count, unit = int(match.group(1)), match.group(2).upper() or "rows"
    if count < 1:
        raise InputError(f"{what} {text!r}: a length must be at least 1")
    return Length(count, unit)


@dataclasses.dataclass(frozen=True)
class Fold:
    """One fold's borders, int64 ns: train [train_start, val_start), val [val_start, test_start),
    test [test_start, test_end); test_end None: to the data's end (the last fold)."""

    number: int
    train_start: int
    val_start: int
    test_start: int
    test_end: int = None

    def as_dict(self):
        return {"fold": self.number, **{k: None if getattr(self, k) is None else _text(getattr(self, k))
                                        for k in ("train_start", "val_start", "test_start", "test_end")}}


def plan_folds(calendar, first_test, test_length, val_length, train_window="expanding", min_train_rows=1):
    """The folds over `calendar` ((T,) increasing int64 ns: every bar time of the data). Test blocks start at
    the first bar at or after `first_test` and follow each other to the data's end (the last one may be
    shorter); each validation block is the `val_length` before its test block; training is everything
    before validation (`expanding`) or the `train_window` (a Length) before it. Refused by name: a first test
    time outside the data, a training part under `min_train_rows` bars, a validation part of no bar."""
    calendar = np.asarray(calendar, np.int64)
    if len(calendar) == 0:
        raise InputError("the data has no bars to place folds on")
    first = int(np.searchsorted(calendar, to_ns(first_test, "--first-test"), "left"))
    if first >= len(calendar):
        raise InputError(f"--first-test {first_test}: after the data's last bar ({_text(calendar[-1])}); "
                         "give an earlier time")
    folds = []
    start = first
    while start < len(calendar):
        end = min(len(calendar), max(start + 1, test_length.after(calendar, start)))
        val_start = max(0, val_length.before(calendar, start))
        train_start = 0 if train_window == "expanding" else max(0, train_window.before(calendar, val_start))
        number = len(folds) + 1
        if val_start >= start:
            raise InputError(f"fold {number}: --val-length {val_length} holds no bar before the test block "
                             f"starting {_text(calendar[start])}; give a longer validation block")
        if val_start - train_start < min_train_rows:
            raise InputError(f"fold {number}: {val_start - train_start} training bars before its validation block "
                             f"({_text(calendar[val_start])}), {min_train_rows} needed (a window and its gap); "
                             "give a later --first-test or a longer --train-window")
        folds.append(Fold(number, int(calendar[train_start]), int(calendar[val_start]), int(calendar[start]),
                          int(calendar[end]) if end < len(calendar) else None))
        start = end
    return folds


def _text(ns):
    from data.catalog import time_text
    return time_text(int(ns))
