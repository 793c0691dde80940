"""Time-based train/val/test splits per session, with an embargo gap.

Three ways to place the borders (the same for every session):
  fractions   train [0, a), val [a + gap, b), test [b + gap, c), a/b/c from fractions of T
  timestamps  the same shape with a = first row at or after val_start, b = test_start
  rows        explicit [start, stop) per split, used as given (published protocols such
              as ETTh1's, whose val/test inputs start lookback rows before the border)
plus whole sessions held out for val or test.

Every window of a split lies inside its range, so with gap = lookback + horizon - 1
(the default) no val/test window's input or target shares a row with a training
window, and a label that looks ahead (next-row return) cannot reach across.
With inputs_before_border, val/test windows may take their inputs from before their
range (the past, known at prediction time) while their targets stay inside it, after
the gap: the first prediction then falls right after the gap instead of a lookback later.
"""

import dataclasses
import datetime
import fnmatch
import logging
import math
import warnings
from typing import Optional

import numpy as np

from errors import InputError

log = logging.getLogger("h5series")

SPLITS = ("train", "val", "test")


@dataclasses.dataclass
class SplitSpec:
    method: str = "fractions"                       # fractions | timestamps | rows
    fractions: tuple = (0.7, 0.15, 0.15)            # train, val, test shares of each session's rows
    val_start: Optional[object] = None              # timestamps: first val time (int ns or ISO date)
    test_start: Optional[object] = None             # timestamps: first test time
    end: Optional[object] = None                    # timestamps: rows at or after it are unused
    rows: Optional[dict] = None                     # rows: {"train": [0, 8640], "val": [...], ...}
    gap: Optional[int] = None                       # embargo rows; None = lookback + horizon - 1
    inputs_before_border: bool = False              # val/test windows may take inputs from before their range
    holdout_val: tuple = ()                         # session names or globs kept whole for val
    holdout_test: tuple = ()                        # session names or globs kept whole for test

    def __post_init__(self):
        for name in ("holdout_val", "holdout_test"):
            values = getattr(self, name)
            if isinstance(values, str):
                setattr(self, name, values := (values,))
            if not isinstance(values, (list, tuple)) or not all(isinstance(v, str) for v in values):
                raise InputError(f"split.{name} is {list(values) if isinstance(values, tuple) else values!r}; give a "
                                 "list of session names or globs")
        if self.method not in ("fractions", "timestamps", "rows"):
            raise InputError(f"split.method is {self.method!r}; choose fractions, timestamps or rows")
        if self.method == "fractions":
            try:
                fr = tuple(float(f) for f in self.fractions)
            except (TypeError, ValueError):
                fr = ()
            if len(fr) != 3 or not all(math.isfinite(f) for f in fr) or min(fr) < 0 or sum(fr) > 1 + 1e-9 \
                    or fr[0] <= 0:
                raise InputError(f"split.fractions is {list(self.fractions)}; give three finite shares "
                                 "(train, val, test), train > 0, summing to at most 1")
            self.fractions = fr
        if self.method == "timestamps" and (self.val_start is None or self.test_start is None):
            raise InputError("split.method is timestamps but split.val_start / split.test_start are "
                             "not both set; give both (ISO dates or int ns)")
        for name in ("val_start", "test_start", "end"):
            value = getattr(self, name)
            if value is not None:
                try:
                    to_ns(value)                    # read again where the borders are placed
                except InputError:
                    raise InputError(f"split.{name} is {value!r}, not a time; use ISO like 2016-07-01 or an "
                                     "integer of ns since the epoch") from None
        if self.method == "rows":
            if not self.rows or "train" not in self.rows:
                raise InputError("split.method is rows but split.rows has no train range; give "
                                 "split.rows like {train: [0, 8640], val: [8304, 11520], test: [11184, 14400]}")
            if not isinstance(self.rows, dict):
                raise InputError(f"split.rows is {self.rows!r}; give a mapping like {{train: [0, 8640], val: "
                                 "[8304, 11520]}")
            for name, border in self.rows.items():
                integers = isinstance(border, (list, tuple)) and all(
                    isinstance(v, int) and not isinstance(v, bool) for v in border)
                if name not in SPLITS or not integers or len(border) != 2 or not 0 <= border[0] <= border[1]:
                    raise InputError(f"split.rows.{name} is {border}; give [start, stop) with "
                                     f"0 <= start <= stop for splits {', '.join(SPLITS)}")
        if self.gap is not None and self.gap < 0:
            raise InputError(f"split.gap must be >= 0, got {self.gap}")


def to_ns(value):
    """A timestamp as int64 ns since the epoch (int passes through; strings are parsed as ISO 8601). A time
    with a UTC offset (2017-05-01T09:30+02:00, ...Z) is taken in UTC, as `convert` stores such times; an
    empty or NaT time is refused (numpy reads it as NaT, which would sort before every row)."""
    if isinstance(value, (int, np.integer)):
        return int(value)
    text = str(value).strip()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")      # numpy reads an offset with a deprecation warning
            stamp = np.datetime64(text, "ns")
    except ValueError:
        stamp = None
    except (UserWarning, DeprecationWarning):
        stamp = _utc_stamp(text)
    if stamp is None or np.isnat(stamp):
        raise InputError(f"split timestamp {value!r} is not a date; use ISO like 2016-07-01 "
                         "or an integer of ns since the epoch")
    return int(stamp.astype(np.int64))


def _utc_stamp(text):
    """np.datetime64 (ns, UTC) of an ISO time with an offset, or None."""
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is not None:
        when = when.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    return np.datetime64(when, "ns")


def split_ranges(catalog, spec, window, labelled=False):
    """Row ranges per split: {"train": [(session index, start, stop), ...], ...}.

    `labelled`: targets come from the `targets` dataset, so a session's rows end where its
    targets do (SessionData.window_rows); its last rows may wait for their future.
    Sessions too short for one window are skipped with one warning and a count.
    Raises InputError when no session is long enough or a requested split is empty.
    """
    gap = window.default_gap if spec.gap is None else spec.gap
    held = {name: _match(catalog, patterns, f"split.holdout_{name}")
            for name, patterns in (("val", spec.holdout_val), ("test", spec.holdout_test))}
    out = {name: [] for name in SPLITS}
    short = []
    for i, session in enumerate(catalog.sessions):
        n = session.window_rows(labelled)
        if window.n_windows(n) == 0:
            short.append(session.name)
            continue
        if i in held["val"] or i in held["test"]:
            out["val" if i in held["val"] else "test"].append((i, 0, n))
            continue
        for name, (start, stop) in _borders(session, n, spec, gap).items():
            stop = min(stop, n)
            if spec.inputs_before_border and name != "train" and spec.method != "rows":
                # Targets stay inside the range (after the gap); inputs are the past, known then.
                start = max(0, start - window.first_target)
            if window.n_windows(stop - start) > 0:
                out[name].append((i, start, stop))
    if short:
        log.warning("skipped %d of %d sessions shorter than one window (%d rows), e.g. %s",
                    len(short), len(catalog.sessions), window.span, ", ".join(short[:3]))
        if len(short) == len(catalog.sessions):
            longest = max(s.window_rows(labelled) for s in catalog.sessions)
            raise InputError(
                f"every session is shorter than one window ({window.span} rows = lookback "
                f"{window.lookback} + horizon {window.horizon}); the longest has {longest} rows; "
                "lower data.lookback / data.horizon or use longer sessions")
    for name in SPLITS:
        if not out[name] and _requested(spec, name, held):
            longest = max(s.window_rows(labelled) for s in catalog.sessions)
            raise InputError(
                f"split {name!r} has no complete window (a window spans {window.span} rows: lookback "
                f"{window.lookback}, horizon {window.horizon}) after the embargo gap of {gap} rows (longest "
                f"session: {longest:,} rows); give it a larger share in data.split, lower data.lookback, or use "
                "longer sessions")
    return out


def _requested(spec, name, held):
    if name == "train":
        return True                     # training needs windows whatever the method (issue 10, case 16)
    if held[name]:
        return True
    if spec.method == "fractions":
        return spec.fractions[SPLITS.index(name)] > 0
    if spec.method == "rows":
        return name in spec.rows
    return True


def _borders(session, n, spec, gap):
    if spec.method == "rows":
        return {name: tuple(int(v) for v in border) for name, border in spec.rows.items()}
    if spec.method == "fractions":
        f_train, f_val, f_test = spec.fractions
        a = int(round(f_train * n))
        b = int(round((f_train + f_val) * n))
        c = int(round((f_train + f_val + f_test) * n))
    else:
        a = session.timestamp_row(to_ns(spec.val_start))
        b = session.timestamp_row(to_ns(spec.test_start))
        c = min(session.timestamp_row(to_ns(spec.end)), n) if spec.end is not None else n
        if b < a:
            raise InputError(f"split.test_start {spec.test_start!r} is before split.val_start "
                             f"{spec.val_start!r}; put test after val")
    return {"train": (0, a), "val": (min(a + gap, b), b), "test": (min(b + gap, c), c)}


def _match(catalog, patterns, key):
    chosen = set()
    for pattern in patterns:
        hits = [i for i, s in enumerate(catalog.sessions) if fnmatch.fnmatchcase(s.name, pattern)]
        if not hits:
            raise InputError(f"{key}: {pattern!r} matches no session; e.g. "
                             f"{', '.join(s.name for s in catalog.sessions[:3])}")
        chosen.update(hits)
    return chosen
