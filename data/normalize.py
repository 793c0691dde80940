"""Per-column mean/std from the train split only, applied in torch on batches.

Statistics come from at most `max_samples` rows of the train ranges, read as
whole random contiguous blocks (one h5py call each; point indexing is slow in
h5py) and merged with sklearn's StandardScaler.partial_fit in float64 (Chan et
al.'s parallel update). `exact=True` streams every train row instead.
Modes: "global" (one set of statistics) or "per_session" (each session its own,
from its own train rows; sessions without train rows use the global ones).
"""

import dataclasses
import json
import logging
import math

import numpy as np
import torch
from tqdm import tqdm

from atomic import write_json
from data.quality import check_finite
from data.session import MIB, ChunkCache, HandlePool, scratch_copy
from errors import InputError

log = logging.getLogger("h5series")

MODES = ("global", "per_session", "none")


@dataclasses.dataclass
class ColumnStats:
    mean: np.ndarray     # (C,) float64
    std: np.ndarray      # (C,) float64, constant columns set to 1
    rows: int            # rows the statistics were computed from

    def to_json(self):
        return {"mean": self.mean.tolist(), "std": self.std.tolist(), "rows": int(self.rows)}

    @classmethod
    def from_json(cls, obj):
        return cls(np.asarray(obj["mean"], np.float64), np.asarray(obj["std"], np.float64), int(obj["rows"]))


class _Accumulator:
    """Streaming float64 mean/variance of (n, C) blocks, NaN ignored."""

    def __init__(self):
        # Imported here: sklearn (with scipy) adds ~140 MB to every process that imports this module,
        # and only fitting statistics needs it (predict and similar load saved ones).
        from sklearn.preprocessing import StandardScaler
        self.scaler = StandardScaler()
        self.rows = 0

    def add(self, block):
        block = np.asarray(block, dtype=np.float64)
        block[~np.isfinite(block)] = np.nan  # partial_fit ignores NaN; Inf would poison the sums
        self.scaler.partial_fit(block)
        self.rows += len(block)

    def stats(self, names, where):
        if self.rows == 0:
            raise InputError(f"{where}: no train rows to compute normalization from; check the split")
        std = np.sqrt(self.scaler.var_)
        mean = self.scaler.mean_.copy()
        bad = ~np.isfinite(mean)
        if bad.any():
            raise InputError(f"{where}: column {names[int(np.flatnonzero(bad)[0])]!r} has no finite "
                             "value in the sampled train rows; drop the column or fix the data")
        constant = std < 1e-12
        if constant.any():
            log.warning("%s: columns %s are constant in the train split; their std is set to 1",
                        where, [names[i] for i in np.flatnonzero(constant)][:5])
            std[constant] = 1.0
        return ColumnStats(mean, std, self.rows)


class Normalizer:
    """Feature and target statistics, global or per session; applied in torch."""

    def __init__(self, mode, feature_names, target_names, features, targets, session_names=(),
                 session_features=None, session_targets=None, info=None):
        self.mode = mode
        self.feature_names = list(feature_names)
        self.target_names = list(target_names)
        self.features = features                  # ColumnStats or None (mode none)
        self.targets = targets                    # ColumnStats or None (class labels, mode none)
        self.session_names = list(session_names)  # per_session: order of session ids
        self.session_features = session_features  # per_session: list of ColumnStats
        self.session_targets = session_targets
        self.info = info or {}
        self._tensors = {}

    # --- torch -------------------------------------------------------------
    def _table(self, which, device, dtype):
        key = (which, device, dtype)
        if key not in self._tensors:
            if self.mode == "per_session":
                stats = self.session_features if which == "features" else self.session_targets
                mean = np.stack([s.mean for s in stats])       # (S, C)
                std = np.stack([s.std for s in stats])
            else:
                stats = self.features if which == "features" else self.targets
                mean, std = stats.mean[None, :], stats.std[None, :]  # (1, C)
            # non_blocking: a blocking copy to a GPU would wait for it (a host sync in the first round).
            self._tensors[key] = (torch.as_tensor(mean, dtype=dtype).to(device, non_blocking=True),
                                  torch.as_tensor(std, dtype=dtype).to(device, non_blocking=True))
        return self._tensors[key]

    def _stats_for(self, x, which, session_ids):
        mean, std = self._table(which, x.device, x.dtype)
        if self.mode == "per_session":
            if session_ids is None:
                raise ValueError("per_session normalization needs the batch's session ids")
            mean, std = mean[session_ids], std[session_ids]    # (B, C)
        # Broadcast (B or 1, C) over every axis between batch and columns.
        shape = (mean.shape[0],) + (1,) * (x.dim() - 2) + (mean.shape[1],)
        return mean.reshape(shape), std.reshape(shape)

    def normalize_features(self, x, session_ids=None):
        """x (B, L, F) or (B, F) -> normalized copy."""
        if self.mode == "none":
            return x
        mean, std = self._stats_for(x, "features", session_ids)
        return (x - mean) / std

    def normalize_targets(self, y, session_ids=None):
        """y (B, H, K) -> normalized copy (unchanged for class labels)."""
        if self.mode == "none" or self.targets is None:
            return y
        mean, std = self._stats_for(y, "targets", session_ids)
        return (y - mean) / std

    def denormalize_targets(self, y, session_ids=None):
        """Inverse of normalize_targets: back to original units."""
        if self.mode == "none" or self.targets is None:
            return y
        mean, std = self._stats_for(y, "targets", session_ids)
        return y * std + mean

    def for_catalog(self, catalog, columns, source="the saved normalizer"):
        """This normalizer checked against the data it is applied to, by name: the same feature and
        target columns in the same order, and, per session, statistics reordered to the catalog's
        sessions. Positions alone would hand a session another's statistics when the files or their
        order changed (issue 10, case 1: means 99.9 instead of -0.1)."""
        for which, saved, now in (("feature", self.feature_names, columns.feature_names),
                                  ("target", self.target_names, columns.target_names)):
            if list(saved) != list(now):
                raise InputError(f"{source} was fitted on {which} columns {list(saved)} but the data has "
                                 f"{list(now)}; use the run's data.{which}_columns, or train a new run")
        if self.mode != "per_session":
            return self
        names = [s.name for s in catalog.sessions]
        index = {name: i for i, name in enumerate(self.session_names)}
        missing = [n for n in names if n not in index]
        if missing:
            raise InputError(f"{source} has no statistics for {len(missing)} session(s) of the data "
                             f"({', '.join(repr(n) for n in missing[:3])}{', ...' if len(missing) > 3 else ''}); "
                             "per_session normalization needs the sessions the run was trained on")
        order = [index[n] for n in names]
        targets = [self.session_targets[i] for i in order] if self.session_targets else None
        return Normalizer(self.mode, self.feature_names, self.target_names, self.features, self.targets, names,
                          [self.session_features[i] for i in order], targets, self.info)

    def with_sessions(self, fitted, names):
        """A per_session normalizer with the statistics of sessions `names` taken from `fitted` (another
        per_session normalizer over the same columns, e.g. fitted on new sessions' own first rows)."""
        index = {n: i for i, n in enumerate(fitted.session_names)}
        features = list(self.session_features) + [fitted.session_features[index[n]] for n in names]
        targets = None
        if self.session_targets is not None:
            targets = list(self.session_targets) + [fitted.session_targets[index[n]] for n in names]
        return Normalizer(self.mode, self.feature_names, self.target_names, self.features, self.targets,
                          self.session_names + list(names), features, targets, self.info)

    # --- persistence -------------------------------------------------------
    def to_json(self):
        obj = {"mode": self.mode, "feature_names": self.feature_names, "target_names": self.target_names,
               "features": self.features.to_json() if self.features else None,
               "targets": self.targets.to_json() if self.targets else None, "info": self.info}
        if self.mode == "per_session":
            obj["sessions"] = {
                name: {"features": f.to_json(), "targets": t.to_json() if t else None}
                for name, f, t in zip(self.session_names, self.session_features,
                                      self.session_targets or [None] * len(self.session_names))}
        return obj

    @classmethod
    def from_json(cls, obj):
        load = lambda o: ColumnStats.from_json(o) if o else None  # noqa: E731
        sessions = obj.get("sessions") or {}
        names = list(sessions)
        session_targets = [load(sessions[n]["targets"]) for n in names]
        return cls(obj["mode"], obj["feature_names"], obj["target_names"], load(obj["features"]),
                   load(obj["targets"]), names, [load(sessions[n]["features"]) for n in names] or None,
                   session_targets if any(t is not None for t in session_targets) else None, obj.get("info"))

    def save(self, path):
        write_json(path, self.to_json())

    @classmethod
    def load(cls, path):
        with open(path) as f:
            return cls.from_json(json.load(f))


def fit_normalizer(catalog, train_ranges, columns, *, mode="global", max_samples=1_000_000,
                   sample_rows=1024, exact=False, seed=0, nan_policy="error", normalize_targets=True,
                   progress=True):
    """Statistics of the train split for the model's feature and target columns."""
    if mode not in MODES:
        raise InputError(f"data.normalize is {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "none":
        return Normalizer("none", columns.feature_names, columns.target_names, None, None)
    if max_samples < 1:
        raise InputError(f"data.max_samples_for_normalize must be at least 1, got {max_samples}")
    rng = np.random.default_rng(seed)
    fit_targets = normalize_targets and _float_targets(catalog, columns)
    pieces = _Pieces(train_ranges, sample_rows)
    total_rows = sum(stop - start for _, start, stop in train_ranges)

    per_session = mode == "per_session"
    if exact or total_rows <= max_samples:
        chosen = range(len(pieces))
    elif per_session:
        chosen = _per_session_choice(pieces, max_samples, sample_rows, rng)
    else:
        chosen = _stratified(0, len(pieces), math.ceil(max_samples / sample_rows), rng)

    all_f, all_t, feats, targs = _Accumulator(), _Accumulator(), {}, {}
    pool, copies = HandlePool(ChunkCache(nbytes=MIB), max_open=2), {}
    for j in tqdm(chosen, desc="normalization statistics", unit="block",
                  disable=None if progress and len(chosen) >= 50 else True, leave=False):
        session, start, stop = pieces[j]
        if session not in copies:
            copies = {session: scratch_copy(catalog.sessions[session], pool)}
        x, y = _read_piece(copies[session], start, stop, columns, fit_targets, nan_policy)
        all_f.add(x)
        if per_session:
            feats.setdefault(session, _Accumulator()).add(x)
        if y is not None:
            all_t.add(y)
            if per_session:
                targs.setdefault(session, _Accumulator()).add(y)
    pool.close()
    info = {"rows_used": all_f.rows, "train_rows": int(total_rows),
            "exact": bool(exact or total_rows <= max_samples), "sample_rows": int(sample_rows), "seed": int(seed)}
    global_f = all_f.stats(columns.feature_names, "normalization (features)")
    global_t = all_t.stats(columns.target_names, "normalization (targets)") if fit_targets else None
    if mode == "global":
        return Normalizer("global", columns.feature_names, columns.target_names, global_f, global_t, info=info)

    session_f, session_t = [], []
    for i, s in enumerate(catalog.sessions):
        if i in feats:
            session_f.append(feats[i].stats(columns.feature_names, f"normalization of session {s.name!r}"))
            session_t.append(targs[i].stats(columns.target_names, f"normalization of session {s.name!r}")
                             if fit_targets else None)
        else:
            session_f.append(global_f)   # held-out sessions have no train rows of their own
            session_t.append(global_t)
    return Normalizer("per_session", columns.feature_names, columns.target_names, global_f, global_t,
                      [s.name for s in catalog.sessions], session_f, session_t if fit_targets else None, info)


def _float_targets(catalog, columns):
    if columns.target_source == "features":
        return True
    return np.dtype(catalog.sessions[0].target_dtype).kind == "f"


class _Pieces:
    """The train ranges cut into aligned pieces of sample_rows rows, indexed without
    listing them (memory grows with the number of ranges, not of rows)."""

    def __init__(self, ranges, sample_rows):
        self.ranges = list(ranges)
        self.sample_rows = sample_rows
        counts = [math.ceil((stop - start) / sample_rows) for _, start, stop in self.ranges]
        self.ends = np.cumsum(counts, dtype=np.int64)

    def __len__(self):
        return int(self.ends[-1]) if len(self.ends) else 0

    def range_bounds(self, r):
        """Piece numbers [first, stop) of range r."""
        return (int(self.ends[r - 1]) if r else 0), int(self.ends[r])

    def __getitem__(self, j):
        r = int(np.searchsorted(self.ends, j, side="right"))
        session, start, stop = self.ranges[r]
        a = start + (j - self.range_bounds(r)[0]) * self.sample_rows
        return session, a, min(a + self.sample_rows, stop)


def _per_session_choice(pieces, max_samples, sample_rows, rng):
    """The budget spread evenly over sessions, at least one piece each."""
    by_session = {}
    for r, (session, _, _) in enumerate(pieces.ranges):
        by_session.setdefault(session, []).append(r)
    per = max(1, math.ceil(max_samples / sample_rows / max(1, len(by_session))))
    chosen = []
    for range_ids in by_session.values():
        for r in range_ids:
            # Split the session's share over its ranges by their piece counts.
            first, stop = pieces.range_bounds(r)
            share = max(1, round(per * (stop - first) / sum(
                pieces.range_bounds(q)[1] - pieces.range_bounds(q)[0] for q in range_ids)))
            chosen.extend(_stratified(first, stop, share, rng))
    return chosen


def _stratified(first, stop, k, rng):
    """k piece numbers in [first, stop), one at random from each of k equal strata.

    Series drift: a simple random draw of a few blocks can miss a whole regime,
    while one block per stratum covers the span evenly (measured on ETTh1:
    docs/data_format.md, "Normalization")."""
    n = stop - first
    if k >= n:
        return list(range(first, stop))
    edges = np.linspace(0, n, k + 1)
    lo, hi = np.ceil(edges[:-1]).astype(np.int64), np.ceil(edges[1:]).astype(np.int64)
    picks = lo + (rng.random(k) * (hi - lo)).astype(np.int64)
    return (first + picks).tolist()


def _read_piece(session, start, stop, columns, fit_targets, nan_policy):
    raw = session.read_rows(start, stop)                                   # (n, F_all)
    x = raw[:, list(columns.feature_index)]
    if nan_policy == "error":
        check_finite(x, session, start, "features", columns.feature_names)
    y = None
    if fit_targets:
        if columns.target_source == "features":
            y = raw[:, list(columns.target_index)]
        else:
            y = session.read_targets(start, stop)[:, list(columns.target_index)]
        if nan_policy == "error":
            check_finite(y, session, start, columns.target_source, columns.target_names)
    return x, y
