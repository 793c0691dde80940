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
With inputs_before_border (the default), val/test windows take their inputs from before
their range (the past, known at prediction time) while their targets stay inside it, after
the gap: the first prediction then falls right after the gap instead of a lookback later.
Their inputs still come after every train target (tests/test_splits.py).
"""

import fnmatch
import logging

from config import SPLITS, SplitSpec  # noqa: F401  (a config section; importable from here as before)
from errors import InputError
from times import to_ns  # noqa: F401  (the time parser; importable from here as before)

log = logging.getLogger("h5series")


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
