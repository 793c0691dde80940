"""What followed a window: the return of a chosen column over `ahead` rows after its end row, and
the time that return was known (the time of row end + ahead).

    price column       p[e + ahead] / p[e] - 1
    log-return column  exp(sum of the returns ending at rows e+1 .. e+ahead) - 1; a return ending at
                       row u is stored at row u - lead (the file's target_lead_rows for a target, 0 for
                       a feature), as in analysis/backtest/panel.py's PriceFromLogReturns
Rows past a session's end give NaN and NaT (not known yet). A short session (daily data) is read
whole once and kept (at most KEEP_BYTES in all): a query run looks at each session several times
(the queries' own outcomes, the neighbours', the past-only check). A long one is read in one call
per lookup: one slice when its rows lie close together, else one HDF5 point selection of just the
rows needed (minute data: ~8 us a row against ~0.3 ms for a slice read per neighbour).
"""

import numpy as np

from data.layout import TIMESTAMPS
from data.predictions import NAT
from errors import InputError

ONE_READ_ROWS = 8192  # a session's rows within this span are read in one slice (dense: few rows wasted)
KEEP_BYTES = 64 << 20  # whole short sessions kept (505 daily stocks x 5 years: ~10 MB a column)


class Outcomes:
    def __init__(self, catalog, column, kind, ahead):
        """Read through the catalog's own sessions: queries open every session once, in one pool
        (windows_from_settings), shared by the query windows, their times and what followed."""
        if ahead < 1:
            raise InputError(f"--ahead {ahead}: give the rows after a window to measure (1 or more)")
        names = list(catalog.feature_names) + list(catalog.target_names)
        if column not in names:
            flag = "--price-column" if kind == "price" else "--return-column"
            raise InputError(f"{flag} {column!r} is not a column of {catalog.sessions[0].path}; it has {names}")
        self.column, self.kind, self.ahead = column, kind, ahead
        self.lead = catalog.sessions[0].target_lead if kind == "log_return" and column in catalog.target_names else 0
        self.sessions = catalog.sessions
        self._kept, self._kept_bytes = {}, 0          # (session index, column) -> whole short session

    def times_at(self, session, rows):
        """Timestamps (n,) of rows (n,) of sessions (n,); NAT past a session's end."""
        session, rows = np.asarray(session), np.asarray(rows, np.int64)
        out = np.full(len(rows), NAT, np.int64)
        for s in np.unique(session):
            where = np.flatnonzero(session == s)
            src = self.sessions[int(s)]
            where = where[rows[where] < src.n_rows]
            out[where] = self._read(int(s), TIMESTAMPS, rows[where])
        return out

    def open_while(self, busy):
        """While busy() (the FAISS index file still being read, in its thread), open the column's dataset
        of each session and read a row of it the way its lookups will (a short session whole, a long one
        by point selection): HDF5's first point read of a dataset costs ~0.7 ms (opening it, its chunk
        index), 0.35 s of a 600-query minute run over 500 sessions, otherwise paid after the search."""
        first = np.zeros(1, np.int64)
        for s, src in enumerate(self.sessions):
            if not busy():
                return
            if src.n_rows <= ONE_READ_ROWS:
                self._read(s, self.column, first)
            else:
                src.read_points(self.column, first)

    def read(self, session, end_row):
        """Returns (n,) float64 (NaN where not in the data) of windows ending at end_row (n,) of sessions
        (n,); when each was known is times_at(session, end_row + ahead)."""
        session, end_row = np.asarray(session), np.asarray(end_row, np.int64)
        returns = np.full(len(session), np.nan)
        for s in np.unique(session[session >= 0]):
            where = np.flatnonzero(session == s)
            returns[where] = self._session(int(s), end_row[where])
        return returns

    def _session(self, s, end_row):
        h, src = self.ahead, self.sessions[s]
        if self.kind == "price":
            rows = np.stack([end_row, end_row + h], 1)                              # (n, 2): p[e], p[e+h]
        else:
            rows = end_row[:, None] + 1 - self.lead + np.arange(h)[None]            # (n, h): returns e+1..e+h
        known = (end_row + h < src.n_rows) & (rows >= 0).all(1) & (rows < src.n_rows).all(1)
        values = np.full(rows.shape, np.nan)
        values[known] = self._read(s, self.column, rows[known].ravel()).reshape(-1, rows.shape[1])
        with np.errstate(divide="ignore", invalid="ignore"):
            return values[:, 1] / values[:, 0] - 1.0 if self.kind == "price" else np.expm1(values.sum(1))

    def _read(self, s, column, rows):
        """Values of `column` (or "timestamps") of session s at rows (any order, repeats allowed)."""
        src = self.sessions[s]
        if not len(rows):
            return np.empty(0, np.int64 if column == TIMESTAMPS else np.float64)
        whole = self._kept.get((s, column))
        if whole is None and src.n_rows <= ONE_READ_ROWS and self._kept_bytes < KEEP_BYTES:
            whole = self._kept[(s, column)] = _slice(src, column, 0, src.n_rows)
            self._kept_bytes += whole.nbytes
        if whole is not None:
            return whole[rows]
        unique, where = np.unique(rows, return_inverse=True)
        lo, hi = int(unique[0]), int(unique[-1]) + 1
        if hi - lo <= ONE_READ_ROWS:
            return _slice(src, column, lo, hi)[unique - lo][where]
        return src.read_points(column, unique)[where]


def _slice(src, column, lo, hi):
    return src.read_timestamps(lo, hi) if column == TIMESTAMPS else src.read_column(column, lo, hi)
