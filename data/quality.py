"""Non-finite values (NaN / Inf): find them, refuse them, or fill them.

Policies (data.nan_policy):
  error  every block read is checked; the first NaN/Inf stops the run naming the
         session, row and column (the check is a vectorized isfinite, cheap
         next to the read itself)
  drop   a streaming scan finds the bad rows once; windows containing one are left
         out of the block plan
  ffill  values are forward-filled on read from the last finite value of the same
         column (looking back before the block when needed); rows before a
         column's first finite value, and non-finite `targets` rows, are dropped
"""

import logging

import numpy as np
from tqdm import tqdm

from data.session import MIB, ChunkCache, HandlePool, scratch_copy
from errors import InputError

log = logging.getLogger("h5series")

NAN_POLICIES = ("error", "drop", "ffill")
SCAN_ROWS = 1 << 18  # rows per read while scanning


def read_columns(columns):
    """Feature columns that windows read: model inputs, plus targets taken from features."""
    if columns.target_source == "features":
        return sorted(set(columns.feature_index) | set(columns.target_index))
    return sorted(columns.feature_index)


def column_positions(columns):
    """(read columns, input positions, target positions): the feature columns a window
    reads, where the model's inputs sit among them, and where its targets sit (among them
    when targets are features, else in the `targets` dataset)."""
    read = read_columns(columns)
    x = [read.index(c) for c in columns.feature_index]
    y = ([read.index(c) for c in columns.target_index] if columns.target_source == "features"
         else list(columns.target_index))
    return read, x, y


def check_finite(values, session, start, what, names):
    """Raise InputError at the first non-finite value of a (n, C) block read from row start."""
    finite = np.isfinite(values)
    if finite.all():
        return
    row, col = np.argwhere(~finite)[0]
    where = f"{session.path}: session {session.name!r} {what} row {start + int(row)} column {names[int(col)]!r}"
    stored = _stored_value(session, what, names[int(col)], start + int(row)) if np.isinf(values[row, col]) else None
    if stored is not None and np.isfinite(stored):
        # A float64 file value beyond float32's range became inf when read: the data is not inf.
        raise InputError(f"{where} is {stored:.6g} in the file, beyond float32's range (+-3.4e38), which training "
                         "reads: rescale that column (e.g. its log) or clean the value")
    raise InputError(
        f"{where} is {values[row, col]}; clean the data, or set data.nan_policy to "
        "drop (skip windows with it) or ffill (carry the last value forward)")


def _stored_value(session, what, name, row):
    """The value as stored in the file (float64 maybe), or None when it cannot be told."""
    try:
        kind, names = ("targets", session.target_names) if what == "targets" else ("features", session.feature_names)
        if name not in names:
            return None
        dataset = session._dataset(kind)
        return float(dataset[row, list(names).index(name)])
    except Exception:        # only to improve a message: any failure keeps the plain one
        return None


def scan_bad_rows(session, columns, policy, progress=False):
    """Sorted row indices that no window may contain under `policy` (drop or ffill)."""
    feature_cols = read_columns(columns)
    bad, leading_done = [], np.zeros(len(feature_cols), dtype=bool)
    target_cols = list(columns.target_index) if columns.target_source == "targets" else []
    steps = range(0, session.n_rows, SCAN_ROWS)
    for start in tqdm(steps, desc=f"scan {session.name}", unit="block", disable=None if progress else True, leave=False):
        stop = min(start + SCAN_ROWS, session.n_rows)
        feats = session.read_rows(start, stop)[:, feature_cols]
        finite = np.isfinite(feats)
        if policy == "drop":
            bad_mask = ~finite.all(axis=1)
        else:
            # ffill: only rows before a column's first finite value cannot be filled.
            seen = np.logical_or.accumulate(finite, axis=0) | leading_done
            bad_mask = ~seen.all(axis=1)
            leading_done = seen[-1]
        labelled = session.n_rows if session.labelled_rows is None else session.labelled_rows
        if target_cols and session.target_dtype and np.dtype(session.target_dtype).kind == "f" and start < labelled:
            # Rows from labelled_rows on wait for their future (a next-row return's last row): no window
            # uses them, and they are no gap (504 of "515 rows with NaN/Inf in 504 sessions" were those).
            targets = session.read_targets(start, min(stop, labelled))[:, target_cols]
            bad_mask[:len(targets)] |= ~np.isfinite(targets).all(axis=1)
        bad.append(np.flatnonzero(bad_mask) + start)
    return np.concatenate(bad) if bad else np.zeros(0, np.int64)


def forward_fill(values, session, start, feature_cols):
    """Forward-fill non-finite values of a (n, C) block in place.

    values holds columns feature_cols of rows [start, start + n). Columns whose
    first rows are non-finite take the last finite value before `start`.
    """
    finite = np.isfinite(values)
    if finite.all():
        return values
    carry = np.full(values.shape[1], np.nan, dtype=values.dtype)
    need = ~finite[0]
    cursor = start
    while need.any() and cursor > 0:
        lo = max(0, cursor - 4096)
        before = session.read_rows(lo, cursor)[:, feature_cols]
        ok = np.isfinite(before)
        for c in np.flatnonzero(need):
            rows = np.flatnonzero(ok[:, c])
            if len(rows):
                carry[c] = before[rows[-1], c]
                need[c] = False
        cursor = lo
    stacked = np.vstack([carry[None, :], values])
    ok = np.isfinite(stacked)
    idx = np.where(ok, np.arange(len(stacked))[:, None], 0)
    np.maximum.accumulate(idx, axis=0, out=idx)
    values[:] = np.take_along_axis(stacked, idx, axis=0)[1:]
    return values


def bad_rows_by_session(catalog, columns, ranges, policy, progress=True):
    """{session index: bad rows} for every session that appears in `ranges`."""
    if policy == "error":
        return {}
    indices = sorted({r[0] for split in ranges.values() for r in split})
    out = {}
    pool = HandlePool(ChunkCache(nbytes=MIB), max_open=1)
    for i in tqdm(indices, desc=f"nan_policy={policy}: scanning sessions", unit="session",
                  disable=None if progress and len(indices) >= 2 else True):
        rows = scan_bad_rows(scratch_copy(catalog.sessions[i], pool), columns, policy)
        if len(rows):
            out[i] = rows
    pool.close()
    if out:
        total = sum(len(v) for v in out.values())
        log.warning("nan_policy=%s: %d rows with NaN/Inf in %d sessions are kept out of every window",
                    policy, total, len(out))
    return out


def check_labels(prepared, n_classes, rows_per_read=1 << 20):
    """Class labels: one column, whole numbers in [0, n_classes), checked once over every row the
    splits use (CPU, in pieces) before training: out of range, cross_entropy fails (on a GPU as a
    device assert), and a fraction was truncated by .long() without a word (issue 10, case 4)."""
    cols = prepared.columns
    if cols.target_source != "targets":
        return                              # refused right after, with its own message
    if len(cols.target_index) != 1:
        raise InputError(f"model.task is classify but the data has {len(cols.target_index)} target columns "
                         f"{list(cols.target_names)}; set data.target_columns to the one label column")
    column = cols.target_index[0]
    for split, pieces in prepared.ranges.items():
        for session_index, start, stop in pieces:
            session = prepared.catalog.sessions[session_index]
            for a in range(start, stop, rows_per_read):
                labels = session.read_targets(a, min(stop, a + rows_per_read))[:, column]
                bad = np.flatnonzero(~np.isfinite(labels) | (labels != np.round(labels)) | (labels < 0)
                                     | (labels >= n_classes)) if labels.dtype.kind == "f" else \
                    np.flatnonzero((labels < 0) | (labels >= n_classes))
                if len(bad):
                    i = int(bad[0])
                    raise InputError(
                        f"{session.path}: session {session.name!r} row {a + i}: label {labels[i].item()!r} is not "
                        f"a class 0 .. {n_classes - 1} (model.n_classes={n_classes}); fix the labels or "
                        "model.n_classes")
