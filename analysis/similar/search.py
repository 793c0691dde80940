"""Batched neighbour search with the rules an analog forecast needs.

For a batch of queries (vectors, and each query's session, end row and end time) FAISS returns
candidates for all of them in one call, in its order (exact for a flat index, PQ-approximate for
IVF-PQ); then, with numpy over (queries, candidates) arrays:
  - windows of the query's own session that share a row with it (end rows closer than the lookback)
    are dropped;
  - past only: a candidate must have ended before the query's time and what followed it (its end
    row + ahead) must be known at the query's time (its time <= the query's end time);
  - the first k x similar.rerank candidates left get exact distances (float64, from the stored
    vectors) and are re-sorted by them; the first k are the neighbours.
The rules come first because they need only the memory-mapped ids. On an IVF-PQ index (ids in time
order) a past-only query's search is limited inside FAISS to the windows that ended before it (an ID
selector over ids [0, count)), so later windows cannot crowd its candidates: what it returns depends
on the past alone (point-in-time). On a flat index, exact, FAISS is asked for more candidates the
smaller the share of the index a query may use (its past), and only the kept ones are read from disk.
A query left with fewer than k x rerank asks again, with 4x the candidates, until it has them or the
index has no more to give (then its missing neighbours are -1 / NaN).
The null of an analog forecast, `random`, draws the candidates uniformly from the index instead and
keeps the first k the rules allow, in draw order.
"""

import concurrent.futures
import dataclasses
import math
import os
import time

import faiss
import numpy as np

from data.predictions import NAT


@dataclasses.dataclass
class Neighbours:
    ids: np.ndarray           # (Q, k) int64 vector ids, -1 where fewer than k were found
    distance: np.ndarray      # (Q, k) float64, NaN where none
    returns: np.ndarray       # (Q, k) float64, what followed each neighbour (NaN: not known)
    session: np.ndarray       # (Q, k) int32 session index of each neighbour, -1 where none
    end_row: np.ndarray       # (Q, k) int64 its end row, -1 where none
    query_returns: np.ndarray  # (Q,) float64, what followed each query (NaN: not known yet)

    @classmethod
    def empty(cls, Q, k):
        return cls(np.full((Q, k), -1, np.int64), np.full((Q, k), np.nan), np.full((Q, k), np.nan),
                   np.full((Q, k), -1, np.int32), np.full((Q, k), -1, np.int64), np.full(Q, np.nan))

    @property
    def found(self):
        return (self.ids >= 0).sum(1)


BRUTE_MAX = 65_536      # a query with at most this many past windows is searched exactly over them, by numpy
MAX_WANT = 65_536       # most candidates one FAISS search asks for per query
CELLS = 1 << 19         # (queries x candidates) handled at once: bounds a search round (x D x 12 bytes)


class Searcher:
    def __init__(self, index, outcomes, k, *, past_only=True, random=False, nprobe=None, seed=0):
        self.index, self.outcomes, self.k = index, outcomes, k
        self.past_only, self.random = past_only, random
        self.rng = np.random.default_rng(seed)
        self.lookback = index.lookback
        self.ivf = index.settings["kind"] == "ivfpq"
        self.rerank = max(1, int(index.settings.get("rerank", 0))) if self.ivf else 1
        self.nprobe = nprobe
        self.padded = int(index.settings["padded_dim"])
        self.time_ordered = getattr(index, "by_time", None) is not None   # FAISS id = rank in time
        self._faiss = None        # the FAISS index, taken at the first search (its file may still be being read)
        self.seconds = {"faiss_s": 0.0, "rerank_s": 0.0, "outcomes_s": 0.0}     # where search time goes

    def search(self, vectors, q_session, q_end_row, q_end_time, past=None):
        """Neighbours of each query (vectors (Q, D) float32 and the queries' ids (Q,)), with what followed
        them and the queries. `past`: past_counts(q_end_time) when already counted (a query run counts
        the first batch's while the FAISS index is read)."""
        Q, k, n = len(vectors), self.k, self.index.n
        out = Neighbours.empty(Q, k)
        if past is None and self.past_only:
            past = self.past_counts(q_end_time)                              # (Q, S) windows ended before
        ask = dict(q_session=q_session, q_end_row=q_end_row, q_end_time=q_end_time, past=past)
        pending = np.arange(Q)
        if past is not None and not self.random:
            # Few past windows (early queries): exact search over exactly those, no FAISS.
            small = np.flatnonzero(past.sum(1) <= BRUTE_MAX)
            for q in small:
                ids = self._past_ids(past[q])[None]
                dist = self._exact(vectors[[q]], ids)
                order = np.lexsort((ids, dist), axis=1)               # by distance, ties by id
                self._pick(out, np.array([q]), vectors[[q]], np.take_along_axis(ids, order, 1), ask,
                           dist=np.take_along_axis(dist, order, 1))
            pending = np.setdiff1d(pending, small)
        keep = k if self.random else k * self.rerank
        stride = int(self.index.settings.get("stride", 1))
        overlap = math.ceil((2 * self.lookback - 1) / stride)              # windows sharing a row with the query
        # Past-only on a time-ordered index: FAISS searches only the windows ended before each query.
        limit = past.sum(1) if past is not None and self.time_ordered and not self.random else None
        share = past.sum(1) / n if past is not None and limit is None else np.ones(Q)  # of the index a query may use
        want = np.minimum(2 * keep / np.maximum(share, 1e-9) + overlap, MAX_WANT)
        while len(pending):
            # Queries asking about as many candidates go to FAISS together (one k per call).
            bucket = np.minimum(2 ** np.ceil(np.log2(want[pending])).astype(np.int64), min(n, MAX_WANT))
            short = []
            for size in np.unique(bucket):
                group = pending[bucket == size]
                step = max(1, CELLS // int(size))
                for part in (group[i:i + step] for i in range(0, len(group), step)):
                    ids, exhausted = self._candidates(vectors[part], int(size),
                                                      None if limit is None else limit[part])
                    allowed = self._pick(out, part, vectors[part], ids, ask)
                    exhausted |= size >= min(n, MAX_WANT)
                    short.append(part[(allowed < keep) & ~exhausted])
            pending = np.concatenate(short)
            want[pending] *= 4
        # What followed each neighbour and each query: one read per session for the whole batch.
        t0 = time.perf_counter()
        r, c = np.nonzero(out.ids >= 0)
        followed = self.outcomes.read(np.concatenate([out.session[r, c], q_session]),
                                      np.concatenate([out.end_row[r, c], q_end_row]))
        out.returns[r, c], out.query_returns[:] = followed[:len(r)], followed[len(r):]
        self.seconds["outcomes_s"] += time.perf_counter() - t0
        return out

    def _pick(self, out, rows, q, ids, ask, dist=None):
        """Store in `out` (rows) the neighbours (what followed them is read once, after the last round)
        among candidates `ids` (P, C), in their order (FAISS's, a
        random draw's, or exact when `dist` is given with them): the rules first, then exact distances
        for the first k x rerank kept, the k nearest. Returns the number of candidates the rules kept (P,)."""
        k = self.k
        keep = self._allowed(ids, *(None if v is None else v[rows] for v in ask.values()))
        limit = k if (self.random or dist is not None) else k * self.rerank
        rank = np.cumsum(keep, 1)
        r, c = np.nonzero(keep & (rank <= limit))
        cand = np.full((len(ids), limit), -1, np.int64)
        cand[r, rank[r, c] - 1] = ids[r, c]
        if dist is not None:
            cand_dist = np.full(cand.shape, np.inf)
            cand_dist[r, rank[r, c] - 1] = dist[r, c]
        else:
            cand_dist = self._exact(q, cand)
        if not self.random:
            order = np.lexsort((cand, cand_dist), axis=1)[:, :k]       # by distance, ties by id
            cand, cand_dist = np.take_along_axis(cand, order, 1), np.take_along_axis(cand_dist, order, 1)
        got = Neighbours.empty(len(ids), k)
        found = cand[:, :k] >= 0
        got.ids[:] = cand[:, :k]
        got.distance[:] = np.where(found, cand_dist[:, :k], np.nan)
        r, c = np.nonzero(found)
        got.session[r, c] = self.index.session[got.ids[r, c]]
        got.end_row[r, c] = self.index.end_row[got.ids[r, c]]
        for name in ("ids", "distance", "session", "end_row"):
            getattr(out, name)[rows] = getattr(got, name)
        return keep.sum(1)

    def past_counts(self, q_end_time):
        """(Q, S): windows of each session that ended before each query's time (a prefix of the session's
        ids: they are in time order)."""
        offsets = self.index.offsets
        counts = np.empty((len(q_end_time), len(offsets) - 1), np.int64)
        for s in range(len(offsets) - 1):
            counts[:, s] = np.searchsorted(self.index.end_time[offsets[s]:offsets[s + 1]], q_end_time, side="left")
        return counts

    def _past_ids(self, counts):
        starts = self.index.offsets[:-1]
        return np.concatenate([np.arange(a, a + c) for a, c in zip(starts, counts) if c] or [np.zeros(0, np.int64)])

    def _candidates(self, q, want, limit=None):
        """(ids (Q, want), exhausted (Q,)): FAISS's candidates in its order (random draws in draw
        order), as window ids; exhausted where asking for more cannot give more. `limit` (Q,): search
        only FAISS ids below it (time-ordered index: the windows ended before each query)."""
        n = self.index.n
        if self.random:
            ids = np.stack([self.rng.choice(n, want, replace=False) for _ in range(len(q))]).astype(np.int64)
            return ids, np.full(len(q), want >= n)
        padded = q if q.shape[1] == self.padded else np.pad(q, ((0, 0), (0, self.padded - q.shape[1])))
        if self._faiss is None:
            self._faiss = self.index.index
            if self.nprobe and hasattr(self._faiss, "nprobe"):
                self._faiss.nprobe = self.nprobe
        padded = np.ascontiguousarray(padded, np.float32)
        t0 = time.perf_counter()
        if limit is None:
            _, ids = self._faiss.search(padded, want)
        else:
            # One call per distinct limit (FAISS's parameters hold one selector for all queries of a call),
            # spread over threads: FAISS lets go of the GIL, and a call of one query runs on one core (600
            # minute-scale queries at distinct times: FAISS 0.98 s serial, 0.52 s on 2 threads, same ids).
            ids = np.full((len(q), want), -1, np.int64)
            nprobe = int(self._faiss.nprobe)

            def search(bound):
                rows = np.flatnonzero(limit == bound)
                params = faiss.SearchParametersIVF(sel=faiss.IDSelectorRange(0, int(bound)), nprobe=nprobe)
                ids[rows] = self._faiss.search(padded[rows], want, params=params)[1]

            bounds = [int(b) for b in np.unique(limit) if b > 0]
            if len(bounds) > 1 and (os.cpu_count() or 1) > 1:
                with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
                    list(pool.map(search, bounds))
            else:
                for bound in bounds:
                    search(bound)
        self.seconds["faiss_s"] += time.perf_counter() - t0
        ids = ids.astype(np.int64)
        if self.time_ordered:
            ids = np.where(ids >= 0, self.index.by_time[np.maximum(ids, 0)], -1)
        # IVF-PQ probes some clusters only: when they held fewer than asked, more would not help.
        return ids, (want >= (n if limit is None else limit)) | (ids < 0).any(1)

    def _exact(self, q, ids):
        """Exact L2 distances (Q, C) float64 of the queries to the candidate vectors; inf for id -1."""
        t0 = time.perf_counter()
        valid = ids >= 0
        stored = self.index.vectors.take(np.where(valid, ids, 0).ravel())
        diff = stored.reshape(ids.shape + (q.shape[1],)).astype(np.float64) - q[:, None, :].astype(np.float64)
        dist = np.sqrt((diff * diff).sum(-1))
        self.seconds["rerank_s"] += time.perf_counter() - t0
        return np.where(valid, dist, np.inf)

    def _allowed(self, ids, q_session, q_end_row, q_end_time, past):
        """(P, C) bool: the candidates the rules keep (a real id, no row shared with the query, and past
        only: ended before the query, what followed known by then)."""
        valid = ids >= 0
        safe = np.where(valid, ids, 0)
        session = self.index.session[safe.ravel()].reshape(ids.shape)
        end_row = self.index.end_row[safe.ravel()].reshape(ids.shape)
        keep = valid & ~((session == q_session[:, None]) & (np.abs(end_row - q_end_row[:, None]) < self.lookback))
        if past is not None:
            # Ended before the query: among the first past[q, s] windows of its session.
            Q = len(ids)
            first = self.index.offsets[session]
            keep &= safe < first + past[np.arange(Q)[:, None], session]
            # What followed known by then: surely so when row end + ahead is at or before the last indexed
            # window end before the query (its time is earlier); else that row's time is read.
            last_past = first + past[np.arange(Q)[:, None], session] - 1
            last_row = self.index.end_row[np.maximum(last_past, 0).ravel()].reshape(ids.shape)
            ahead = self.outcomes.ahead
            # (few: the windows within `ahead` rows of that end, per session and query)
            r, c = np.nonzero(keep & (end_row + ahead > last_row))
            if len(r):
                t0 = time.perf_counter()
                t = times_at(self.index, self.outcomes, session[r, c], end_row[r, c] + ahead)
                keep[r, c] = (t != NAT) & (t <= q_end_time[r])
                self.seconds["outcomes_s"] += time.perf_counter() - t0
        return keep


def times_at(index, outcomes, session, rows):
    """Timestamps of rows of sessions (NaT past a session's end): the end time of the indexed window
    ending at the row where there is one, else read from the data."""
    out = np.empty(len(rows), np.int64)
    ids = np.full(len(rows), -1, np.int64)
    for s in np.unique(session):
        mine = np.flatnonzero(session == s)
        ids[mine] = index.window_ids(int(s), rows[mine])
    out[ids >= 0] = index.end_time[ids[ids >= 0]]
    other = ids < 0
    out[other] = outcomes.times_at(session[other], rows[other])
    return out
