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
from errors import InputError

MERGE_ROWS = 2048     # windows of a session closer than this are read in one slice


class Outcomes:
    def __init__(self, catalog, column, kind, ahead):
        if ahead < 1:
            raise InputError(f"--ahead {ahead}: give the rows after a window to measure (1 or more)")
        names = list(catalog.feature_names) + list(catalog.target_names)
        if column not in names:
            flag = "--price-column" if kind == "price" else "--return-column"
            raise InputError(f"{flag} {column!r} is not a column of {catalog.sessions[0].path}; it has {names}")
        self.catalog, self.column, self.kind, self.ahead = catalog, column, kind, ahead
        self.lead = catalog.sessions[0].target_lead if kind == "log_return" and column in catalog.target_names else 0

    def read(self, session, end_row):
        """(returns (n,) float64, known_at (n,) int64 ns, NAT where not in the data) for windows
        ending at end_row (n,) of sessions session (n,)."""
        session, end_row = np.asarray(session), np.asarray(end_row, np.int64)
        returns = np.full(len(session), np.nan)
        known_at = np.full(len(session), NAT, np.int64)
        for s in np.unique(session[session >= 0]):
            where = np.flatnonzero(session == s)
            order = where[np.argsort(end_row[where], kind="stable")]
            rows = end_row[order]
            breaks = np.flatnonzero(np.diff(rows) > MERGE_ROWS) + 1
            for part in np.split(np.arange(len(rows)), breaks):
                returns[order[part]], known_at[order[part]] = self._piece(self.catalog.sessions[int(s)], rows[part])
        return returns, known_at

    def _piece(self, src, rows):
        h, n = self.ahead, src.n_rows
        lo = max(0, int(rows[0]) - self.lead)                   # covers row e (prices) and e+1-lead (returns)
        hi = min(n, int(rows[-1]) + h + 1)
        values = src.read_column(self.column, lo, hi)
        stamps = src.read_timestamps(lo, hi)
        target = rows + h
        inside = target < hi
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
