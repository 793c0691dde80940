"""Batched neighbour search with the rules an analog forecast needs.

For a batch of queries (vectors, and each query's session, end row and end time) FAISS returns
candidates for all of them in one call; then, with numpy over (queries, candidates) arrays:
  - every candidate's distance is recomputed exactly (float64, from the stored vectors) and the
    candidates re-sorted by it: exact results for a flat index, re-ranked PQ candidates for IVF-PQ;
  - windows of the query's own session that share a row with it (end rows closer than the lookback)
    are dropped;
  - past only: a candidate must have ended before the query's time and what followed it (its end
    row + ahead) must be known at the query's time (its time <= the query's end time);
  - the first k candidates left are the neighbours.
A query left with fewer than k asks again, with 4x the candidates, until it has k or the index
has no more to give (then its missing neighbours are -1 / NaN).
The null of an analog forecast, `random`, draws the candidates uniformly from the index instead.
"""

import dataclasses
import math

import numpy as np

from data.predictions import NAT


@dataclasses.dataclass
class Neighbours:
    ids: np.ndarray           # (Q, k) int64 vector ids, -1 where fewer than k were found
    distance: np.ndarray      # (Q, k) float64, NaN where none
    returns: np.ndarray       # (Q, k) float64, what followed each neighbour (NaN: not known)
    known_at: np.ndarray      # (Q, k) int64 ns, when that was known (NAT: not in the data)

    @property
    def found(self):
        return (self.ids >= 0).sum(1)


class Searcher:
    def __init__(self, index, outcomes, k, *, past_only=True, random=False, nprobe=None, seed=0):
        self.index, self.outcomes, self.k = index, outcomes, k
        self.past_only, self.random = past_only, random
        self.rng = np.random.default_rng(seed)
        self.lookback = index.lookback
        self.ivf = index.settings["kind"] == "ivfpq"
        self.rerank = max(1, int(index.settings.get("rerank", 0))) if self.ivf else 1
        if nprobe and hasattr(index.index, "nprobe"):
            index.index.nprobe = nprobe
        self.padded = index.index.d

    def search(self, vectors, q_session, q_end_row, q_end_time):
        """Neighbours of each query (vectors (Q, D) float32 and the queries' ids (Q,))."""
        Q, k = len(vectors), self.k
        out = Neighbours(np.full((Q, k), -1, np.int64), np.full((Q, k), np.nan), np.full((Q, k), np.nan),
                         np.full((Q, k), NAT, np.int64))
        stride = int(self.index.settings.get("stride", 1))
        fetch = 2 * k + math.ceil((2 * self.lookback - 1) / stride)     # room for the overlapping windows
        pending = np.arange(Q)
        while len(pending):
            ids, dist, exhausted = self._candidates(vectors[pending], fetch)
            got = self._filter(ids, dist, q_session[pending], q_end_row[pending], q_end_time[pending])
            done = (got.ids >= 0).all(1) | exhausted
            for name in ("ids", "distance", "returns", "known_at"):
                getattr(out, name)[pending[done]] = getattr(got, name)[done]
            pending = pending[~done]
            fetch *= 4
        return out

    def _candidates(self, q, fetch):
        """(ids (Q, C), exact distances (Q, C), exhausted (Q,)): candidates ordered by exact distance
        (random draws in draw order); exhausted where asking for more cannot give more."""
        n = self.index.n
        if self.random:
            size = min(fetch, n)
            ids = np.stack([self.rng.choice(n, size, replace=False) for _ in range(len(q))]).astype(np.int64)
            return ids, self._exact(q, ids), np.full(len(q), size >= n)
        want = min(n, fetch * self.rerank)
        padded = q if q.shape[1] == self.padded else np.pad(q, ((0, 0), (0, self.padded - q.shape[1])))
        _, ids = self.index.index.search(np.ascontiguousarray(padded, np.float32), want)
        ids = ids.astype(np.int64)
        dist = self._exact(q, ids)
        order = np.lexsort((ids, dist), axis=1)               # by distance, ties by id
        ids, dist = np.take_along_axis(ids, order, 1), np.take_along_axis(dist, order, 1)
        # IVF-PQ probes some clusters only: when they held fewer than asked, more would not help.
        exhausted = (want >= n) | (ids < 0).any(1)
        return ids, dist, exhausted

    def _exact(self, q, ids):
        """Exact L2 distances (Q, C) float64 of the queries to the candidate vectors; inf for id -1."""
        valid = ids >= 0
        flat = np.where(valid, ids, 0).ravel()
        order = np.argsort(flat, kind="stable")            # sorted reads of the memory-mapped vectors
        stored = np.empty((len(flat), q.shape[1]), np.float32)
        stored[order] = self.index.vectors[flat[order]]
        diff = stored.reshape(ids.shape + (q.shape[1],)).astype(np.float64) - q[:, None, :].astype(np.float64)
        dist = np.sqrt((diff * diff).sum(-1))
        return np.where(valid, dist, np.inf)

    def _filter(self, ids, dist, q_session, q_end_row, q_end_time):
        """The first k candidates of each query that the rules keep, with what followed them."""
        Q, k = len(ids), self.k
        valid = ids >= 0
        safe = np.where(valid, ids, 0)
        session = np.asarray(self.index.session[safe.ravel()]).reshape(ids.shape)
        end_row = np.asarray(self.index.end_row[safe.ravel()]).reshape(ids.shape)
        keep = valid & ~((session == q_session[:, None]) & (np.abs(end_row - q_end_row[:, None]) < self.lookback))
        if self.past_only:
            end_time = np.asarray(self.index.end_time[safe.ravel()]).reshape(ids.shape)
            keep &= end_time < q_end_time[:, None]
        # What followed is read for the first 2k kept candidates (reads cost; most pass), for more
        # where too few of those pass.
        returns = np.full(ids.shape, np.nan)
        known_at = np.full(ids.shape, NAT, np.int64)
        rank = np.cumsum(keep, 1)
        read = np.zeros(ids.shape, bool)
        limit, rows = 2 * k, np.ones((Q, 1), bool)
        while True:
            new = keep & (rank <= limit) & ~read & rows
            r, c = np.nonzero(new)
            if len(r):
                returns[r, c], known_at[r, c] = self.outcomes.read(session[r, c], end_row[r, c])
            read |= new
            look = read.copy()
            if self.past_only:
                look &= (known_at != NAT) & (known_at <= q_end_time[:, None])
            short = (look.sum(1) < k) & (rank[:, -1] > limit) if ids.shape[1] else np.zeros(Q, bool)
            if not short.any():
                break
            limit, rows = limit * 4, short[:, None]
        take = look & (np.cumsum(look, 1) <= k)
        got = Neighbours(np.full((Q, k), -1, np.int64), np.full((Q, k), np.nan), np.full((Q, k), np.nan),
                         np.full((Q, k), NAT, np.int64))
        r, c = np.nonzero(take)
        slot = np.cumsum(take, 1)[r, c] - 1
        got.ids[r, slot], got.distance[r, slot] = ids[r, c], dist[r, c]
        got.returns[r, slot], got.known_at[r, slot] = returns[r, c], known_at[r, c]
        return got
