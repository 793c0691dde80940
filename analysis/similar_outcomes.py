"""What followed a window: the return of a chosen column over `ahead` rows after its end row, and
the time that return was known (the time of row end + ahead).

    price column       p[e + ahead] / p[e] - 1
    log-return column  exp(sum of the returns ending at rows e+1 .. e+ahead) - 1; a return ending at
                       row u is stored at row u - lead (the file's target_lead_rows for a target, 0 for
                       a feature), as in analysis/panel.py's PriceFromLogReturns
Rows past a session's end give NaN and NaT (not known yet). Rows are read per session in a few
slices (windows close together share one read), never row by row.
"""

import numpy as np

from data.predictions import NAT
from data.session import ChunkCache, HandlePool, scratch_copy
from errors import InputError

MERGE_ROWS = 256      # windows of a session closer than this are read in one slice (dense: few rows wasted)
ONE_READ_ROWS = 8192  # a session's windows within this span are read in one slice whatever their gaps
                      # (daily stocks: one read per session instead of one per neighbour)


class Outcomes:
    def __init__(self, catalog, column, kind, ahead):
        if ahead < 1:
            raise InputError(f"--ahead {ahead}: give the rows after a window to measure (1 or more)")
        names = list(catalog.feature_names) + list(catalog.target_names)
        if column not in names:
            flag = "--price-column" if kind == "price" else "--return-column"
            raise InputError(f"{flag} {column!r} is not a column of {catalog.sessions[0].path}; it has {names}")
        self.column, self.kind, self.ahead = column, kind, ahead
        self.lead = catalog.sessions[0].target_lead if kind == "log_return" and column in catalog.target_names else 0
        # Its own handles: every session stays open (queries jump between sessions; an LRU smaller than
        # them reopened one per read, ~0.2 ms each) with no chunk cache (a few small reads per session).
        pool = HandlePool(ChunkCache(nbytes=0), max_open=1 << 30)
        self.sessions = [scratch_copy(session, pool) for session in catalog.sessions]

    def times_at(self, session, rows):
        """Timestamps (n,) of rows (n,) of sessions (n,); NAT past a session's end."""
        session, rows = np.asarray(session), np.asarray(rows, np.int64)
        out = np.full(len(rows), NAT, np.int64)
        for s in np.unique(session):
            where = np.flatnonzero(session == s)
            src = self.sessions[int(s)]
            inside = where[rows[where] < src.n_rows]
            for i in inside:
                out[i] = src.read_timestamps(int(rows[i]), int(rows[i]) + 1)[0]
        return out

    def read(self, session, end_row, times=True):
        """(returns (n,) float64, known_at (n,) int64 ns, NAT where not in the data; all NAT when not
        `times`: the reads of neighbours skip them) for windows ending at end_row (n,) of sessions (n,)."""
        session, end_row = np.asarray(session), np.asarray(end_row, np.int64)
        returns = np.full(len(session), np.nan)
        known_at = np.full(len(session), NAT, np.int64)
        for s in np.unique(session[session >= 0]):
            where = np.flatnonzero(session == s)
            order = where[np.argsort(end_row[where], kind="stable")]
            rows = end_row[order]
            breaks = np.flatnonzero(np.diff(rows) > MERGE_ROWS) + 1 if rows[-1] - rows[0] > ONE_READ_ROWS else []
            for part in np.split(np.arange(len(rows)), breaks):
                returns[order[part]], known_at[order[part]] = self._piece(self.sessions[int(s)], rows[part], times)
        return returns, known_at

    def _piece(self, src, rows, times):
        h, n = self.ahead, src.n_rows
        lo = max(0, int(rows[0]) - self.lead)                   # covers row e (prices) and e+1-lead (returns)
        hi = min(n, int(rows[-1]) + h + 1)
        values = src.read_column(self.column, lo, hi)
        target = rows + h
        inside = target < hi
        known_at = np.full(len(rows), NAT, np.int64)
        if times:
            stamps = src.read_timestamps(lo, hi)
            known_at = np.where(inside, stamps[np.minimum(target, hi - 1) - lo], NAT)
        if self.kind == "price":
            start = values[rows - lo]
            end = np.where(inside, values[np.minimum(target, hi - 1) - lo], np.nan)
            with np.errstate(divide="ignore", invalid="ignore"):
                out = end / start - 1.0
        else:
            # Returns ending at rows e+1 .. e+h sit at rows e+1-lead .. e+h-lead.
            first, last = rows + 1 - self.lead, rows + h - self.lead
            ok = (first >= lo) & (last < hi) & inside
            cum = np.concatenate([[0.0], np.cumsum(np.nan_to_num(values, nan=0.0))])
            bad = np.concatenate([[0], np.cumsum(~np.isfinite(values))])
            f, l_ = np.clip(first - lo, 0, len(values)), np.clip(last - lo + 1, 0, len(values))
            total = cum[l_] - cum[f]
            ok &= (bad[l_] - bad[f]) == 0
            out = np.where(ok, np.expm1(total), np.nan)
        return out, known_at
