"""Time-aligned panels of many sessions, streamed in blocks of time (DESIGN.md, analysis/).

A *source* is one session's column with times: `read(start, stop) -> (times int64 ns (n,),
values float64 (n,))`, read strictly in order. Prices come from a session column (or are
rebuilt from a log-return column); signals from a prediction file or from the signal files
the workers write (analysis/backtest/signals.py).

`Panel.blocks()` walks time: each block is the next `block_rows` timestamps of the union of
the price sessions' calendars, as (T, N) arrays with NaN where a session has no bar at that
time (never filled from the future), plus `lookahead` more rows for statistics that look
ahead (forward returns). Other fields (the signal) are placed onto the same times by exact
match; a signal row with no price bar at its time is counted, not used. Each session's rows
are read once, through a small buffer, so memory depends on sessions x block_rows only.
"""

import dataclasses

import numpy as np

from data.catalog import time_text
from errors import InputError

class ColumnSource:
    """A named column of one session (data.session.SessionData) as a source."""

    def __init__(self, session, column):
        self.session, self.column = session, column
        self.name, self.n_rows = session.name, session.n_rows
        self.where = f"{session.path}: session {session.name!r}"

    def read(self, start, stop):
        return self.session.read_timestamps(start, stop), self.session.read_column(self.column, start, stop)

    def first_row_at(self, time):
        """The first row whose time is >= `time` (a binary search of point reads); reading starts there."""
        return self.session.timestamp_row(int(time))


class PriceFromLogReturns(ColumnSource):
    """Prices rebuilt from a log-return column: row t's value is the log return from row t+L-1 to
    t+L, L = the column's lead (the file's target_lead_rows for a target, 0 for a feature), so the
    price of row u is exp(sum of the returns that end at or before u), 1.0 at the first row.
    A NaN return leaves the price of the row it ends at unknown (NaN) and adds nothing."""

    def __init__(self, session, column):
        super().__init__(session, column)
        self.lead = session.target_lead if column in session.target_names else 0
        self._log_price, self._next, self._first = 0.0, 0, 0

    def first_row_at(self, time):
        row = super().first_row_at(time)
        self._next = self._first = row                      # the walk starts here: this row is the base, price 1.0
        return row

    def read(self, start, stop):
        if start != self._next:
            raise ValueError(f"{self.name}: log-return prices are read in order ({start} != {self._next})")
        self._next = stop
        times = self.session.read_timestamps(start, stop)
        lo, hi = start - self.lead, stop - self.lead          # the returns that end at rows [start, stop)
        returns = np.full(stop - start, np.nan)
        have = slice(max(lo, 0) - lo, max(min(hi, self.n_rows), lo) - lo)
        if have.stop > have.start:
            returns[have] = self.session.read_column(self.column, max(lo, 0), min(hi, self.n_rows))
        if stop > start and start == self._first:
            returns[0] = 0.0                                  # the first row read is the base, price 1.0
        known = np.isfinite(returns)
        log_price = self._log_price + np.cumsum(np.where(known, returns, 0.0))
        self._log_price = log_price[-1] if len(log_price) else self._log_price
        return times, np.where(known, np.exp(log_price), np.nan)


class ArrayRows:
    """Values held in memory, row-aligned with a price session (a small signal the workers sent back)."""

    def __init__(self, values):
        self.values = values

    def read(self, start, stop):
        return np.asarray(self.values[start:stop], np.float64)


class ArrayPrices:
    """A session's times and prices held in memory (sent back by a signal worker): a price source."""

    def __init__(self, name, times, values, where):
        self.name, self.times, self.values, self.where = name, times, values, where
        self.n_rows = len(times)

    def read(self, start, stop):
        return self.times[start:stop], self.values[start:stop]

    def first_row_at(self, time):
        return int(np.searchsorted(self.times, time, side="left"))


class _Cursor:
    """One source read ahead in pieces, with the fields stored row by row beside it (`aligned`:
    {field: source with read(start, stop) -> values}); hands out its rows before a time, checking
    time order."""

    def __init__(self, source, piece_rows, aligned=None):
        self.source, self.piece_rows = source, piece_rows
        self.aligned = aligned or {}
        self.pos = 0
        self.times = np.empty(0, np.int64)
        self.values = np.empty(0, np.float64)
        self.extra = {f: np.empty(0, np.float64) for f in self.aligned}
        self.last_time = None

    @property
    def exhausted(self):
        return self.pos >= self.source.n_rows

    def fill(self, need):
        """Buffer at least `need` rows (fewer at the end of the source)."""
        while len(self.times) < need and not self.exhausted:
            stop = min(self.source.n_rows, self.pos + max(self.piece_rows, need - len(self.times)))
            times, values = self.source.read(self.pos, stop)
            self._check_order(times)
            self.times = np.concatenate([self.times, times])
            self.values = np.concatenate([self.values, values])
            for f, src in self.aligned.items():
                self.extra[f] = np.concatenate([self.extra[f], src.read(self.pos, stop)])
            self.pos = stop

    def fill_until(self, t_end):
        """Buffer rows until one at or after t_end (or the end of the source)."""
        while not self.exhausted and (len(self.times) == 0 or self.times[-1] < t_end):
            self.fill(len(self.times) + self.piece_rows)

    def _check_order(self, times):
        stamps = times if self.last_time is None else np.concatenate([[self.last_time], times])
        bad = np.flatnonzero(np.diff(stamps) <= 0)
        if len(bad):
            i = int(bad[0])
            row = self.pos + i + (0 if self.last_time is not None else 1)
            what = "repeats" if stamps[i + 1] == stamps[i] else "is before"
            raise InputError(f"{self.source.where}: row {row} time {time_text(stamps[i + 1])} {what} the previous "
                             f"row's {time_text(stamps[i])}; sort the rows by time and drop duplicates (convert "
                             "does both), then run again")
        if len(times):
            self.last_time = int(times[-1])

    def take_before(self, t_end):
        """Remove and return the buffered rows with time < t_end: (times, values, {field: values})."""
        k = int(np.searchsorted(self.times, t_end, side="left"))
        out = self.times[:k], self.values[:k], {f: v[:k] for f, v in self.extra.items()}
        self.times, self.values = self.times[k:], self.values[k:]
        self.extra = {f: v[k:] for f, v in self.extra.items()}
        return out


@dataclasses.dataclass
class PanelBlock:
    """`own` rows of the walk plus up to `lookahead` rows after them (the next block's first rows)."""

    times: np.ndarray          # (T,) int64 ns
    price: np.ndarray          # (T, N) float64, NaN = no bar
    fields: dict               # name -> (T, N) float64, NaN = no value
    own: int                   # rows [0, own) belong to this block; the rest is lookahead


class Panel:
    """Price sessions (the calendar) and other fields, walked in aligned blocks of time.

    names: the sessions, in column order; prices: {name: source}; aligned: {field: {name: source}}
    stored row by row beside the prices (read in step with them); matched: {field: {name: source}}
    with times of their own, placed where they equal a price bar's time. A session may lack a field:
    its column is NaN."""

    def __init__(self, names, prices, *, aligned=None, matched=None, block_rows=1024, piece_rows=None,
                 start_time=None):
        if block_rows < 2:
            raise ValueError("block_rows must be at least 2")
        self.names = list(names)
        self.block_rows = block_rows
        piece = max(block_rows + 1, piece_rows or 0)
        aligned = aligned or {}
        self.aligned_fields = list(aligned)
        self._prices = [_Cursor(prices[n], piece, {f: src[n] for f, src in aligned.items() if n in src})
                        for n in self.names]
        self._matched = {f: [(_Cursor(src[n], piece) if n in src else None) for n in self.names]
                         for f, src in (matched or {}).items()}
        if start_time is not None:                 # skip each session's rows before it (no read of them)
            for cur in self._prices:
                cur.pos = cur.source.first_row_at(start_time)
        self.unmatched = {f: 0 for f in self._matched}     # field rows whose time has no price bar

    def _next_rows(self):
        """The next aligned rows, (times (T,), price (T, N), fields), or None at the end."""
        b = self.block_rows
        ends = []
        for cur in self._prices:
            cur.fill(b + 1)
            if len(cur.times) > b:
                ends.append(cur.times[b])
        t_end = min(ends) if ends else np.iinfo(np.int64).max
        taken = [cur.times[:np.searchsorted(cur.times, t_end)] for cur in self._prices]
        first = taken[0]
        shared = all(len(t) == len(first) and np.array_equal(t, first) for t in taken[1:])
        union = first if shared else np.unique(np.concatenate(taken))    # one shared calendar: the usual case
        if len(union) > b:                                   # disjoint calendars: cut at b times
            t_end = union[b]
            union = union[:b]
        if len(union) == 0:
            return None
        shape = (len(union), len(self.names))
        price = np.full(shape, np.nan)
        fields = {f: np.full(shape, np.nan) for f in self.aligned_fields}
        for j, cur in enumerate(self._prices):
            times, values, extra = cur.take_before(t_end)
            at = slice(None) if shared and len(times) == len(union) else np.searchsorted(union, times)
            price[at, j] = values
            for f, v in extra.items():
                fields[f][at, j] = v
        for f, cursors in self._matched.items():
            out = np.full(shape, np.nan)
            for j, cur in enumerate(cursors):
                if cur is None:
                    continue
                cur.fill_until(t_end)
                times, values, _ = cur.take_before(t_end)
                if len(times) == 0:
                    continue
                at = np.minimum(np.searchsorted(union, times), len(union) - 1)
                hit = union[at] == times
                self.unmatched[f] += int(len(times) - hit.sum())
                out[at[hit], j] = values[hit]
            fields[f] = out
        return union, price, fields

    def blocks(self, lookahead=0):
        """Yield PanelBlocks of `block_rows` own rows, each followed by `lookahead` more rows."""
        pending = None
        while True:
            rows = self._next_rows()
            if rows is not None:
                pending = rows if pending is None else _concat(pending, rows)
            done = rows is None
            while pending is not None and (len(pending[0]) >= self.block_rows + lookahead or done):
                own = min(self.block_rows, len(pending[0]))
                times, price, fields = pending
                yield PanelBlock(times[:own + lookahead], price[:own + lookahead],
                                 {k: v[:own + lookahead] for k, v in fields.items()}, own)
                rest = (times[own:], price[own:], {k: v[own:] for k, v in fields.items()})
                pending = rest if len(rest[0]) else None
            if done:
                return


def _concat(a, b):
    return (np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]]),
            {k: np.concatenate([a[2][k], b[2][k]]) for k in a[2]})
