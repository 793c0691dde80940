"""From a DataConfig to window datasets: prepare_data() and the per-index dataset.

prepare_data runs the data flow of DESIGN.md up to the block plans:
catalog -> columns -> splits (with embargo gap) -> NaN scan (drop/ffill) ->
block plan per split -> normalization statistics from the train split.
TimeSeriesDataset is the per-index compatibility path over the same block plan
(the fast block path is data/dataloader.py).
"""

import dataclasses
import hashlib
import logging

import numpy as np
import torch

from data import quality
from data.catalog import check_time_order, open_catalog
from data.normalize import fit_normalizer
from data.session import ChunkCache, HandlePool
from data.splits import SPLITS, split_ranges
from data.windows import WindowIndex, WindowSpec, block_windows_for, plan_blocks, resolve_columns, valid_ranges
from errors import InputError

log = logging.getLogger("h5series")


@dataclasses.dataclass
class PreparedData:
    catalog: object        # data.catalog.Catalog
    window: WindowSpec
    columns: object        # data.windows.Columns
    ranges: dict           # split -> [(session, start, stop)] before NaN handling
    blocks: dict           # split -> int64 (n_blocks, 3) block plan
    normalizer: object     # data.normalize.Normalizer
    nan_policy: str

    @property
    def target_lead(self):
        """Rows from a target's own row to the row whose time it describes: the sessions'
        target_lead_rows for a `targets` column, 0 for feature columns (their rows are their times)."""
        return target_lead(self.catalog, self.columns)

    def n_windows(self, split):
        return int(self.blocks[split][:, 2].sum()) if len(self.blocks[split]) else 0

    def predicted_span(self, split):
        """(first, last) time a forecast of `split` is made for (its targets' times, int64 ns), over every
        session; None without timestamps or windows. Two timestamp reads per session."""
        table = np.asarray(self.blocks[split]).reshape(-1, 3)
        if not len(table) or not all(s.has_timestamps for s in self.catalog.sessions):
            return None
        w, lead = self.window, self.target_lead
        table = table[np.argsort(table[:, 0], kind="stable")]
        sessions, at = np.unique(table[:, 0], return_index=True)
        starts = np.minimum.reduceat(table[:, 1], at) + w.first_target + lead                # each session's first ...
        ends = np.maximum.reduceat(table[:, 1] + (table[:, 2] - 1) * w.stride, at) + w.first_target + w.horizon - 1 + lead
        first, last = [], []
        for session, a, b in zip(sessions.tolist(), starts.tolist(), ends.tolist()):        # ... and last target row
            stamps = self.catalog.sessions[session]
            a, b = min(a, stamps.n_rows - 1), min(b, stamps.n_rows - 1)    # (a look-ahead label's last time)
            first.append(int(stamps.read_timestamps(a, a + 1)[0]))
            last.append(int(stamps.read_timestamps(b, b + 1)[0]))
        return min(first), max(last)

    def fingerprint(self):
        """What a checkpoint's loader positions refer to, as plain data: every session's name and rows,
        the window, and digests of the split borders and block plan. A resume compares it with the data
        it finds (issue 10, case 2); values changed in place with the same rows are not seen."""
        def digest(table):
            return hashlib.sha256(np.ascontiguousarray(table, dtype=np.int64).tobytes()).hexdigest()[:16]
        w = self.window
        return {"sessions": {s.name: int(s.n_rows) for s in self.catalog.sessions},
                "window": [w.lookback, w.horizon, w.stride, w.target_offset] + ([w.covariate_rows] if w.covariate_rows else []),
                "splits": {split: digest(np.asarray(self.ranges[split]).reshape(-1, 3)) for split in self.ranges},
                "blocks": {split: digest(self.blocks[split]) for split in self.blocks}}

    def dataset(self, split, return_ids=False):
        """The per-index dataset of one split."""
        return TimeSeriesDataset(self.catalog, self.blocks[split], self.window, self.columns,
                                 nan_policy=self.nan_policy, normalizer=self.normalizer,
                                 return_ids=return_ids)


def make_pool(data_cfg):
    cache = ChunkCache(nbytes=data_cfg.chunk_cache_size, nslots=data_cfg.chunk_cache_slots,
                       w0=data_cfg.chunk_cache_w0)
    return HandlePool(cache, max_open=data_cfg.max_open_sessions)


def prepare_data(data_cfg, seed=0, progress=True, normalizer=None):
    """Everything a loader needs, from metadata and the sampled train statistics
    (or the given `normalizer`, e.g. a run's saved one, when evaluating or resuming)."""
    pool = make_pool(data_cfg)
    catalog = open_catalog(data_cfg.paths, pool=pool, allow_external_links=data_cfg.allow_external_links)
    columns = resolve_columns(catalog, data_cfg.feature_columns, data_cfg.target_columns,
                              data_cfg.known_future_columns)
    window = window_spec(data_cfg, columns, catalog)
    if data_cfg.check_time_order or data_cfg.split.method == "timestamps":
        check_time_order(catalog)           # borders by time need rows in time order, whatever the key says
    ranges = split_ranges(catalog, data_cfg.split, window, labelled=columns.target_source == "targets")
    clean_ranges, blocks = _plan_blocks(catalog, columns, window, ranges, data_cfg, progress)
    if normalizer is not None:
        normalizer = normalizer.for_catalog(catalog, columns)
    normalizer = normalizer or fit_normalizer(
        catalog, clean_ranges["train"], columns, mode=data_cfg.normalize,
        max_samples=data_cfg.max_samples_for_normalize,
        sample_rows=data_cfg.normalize_sample_rows, exact=data_cfg.normalize_exact, seed=seed,
        nan_policy=data_cfg.nan_policy, normalize_targets=data_cfg.normalize_targets, progress=progress)
    # The main process may fork workers next: no HDF5 handle may be open across fork.
    pool.close()
    return PreparedData(catalog, window, columns, ranges, blocks, normalizer, data_cfg.nan_policy)


def window_spec(data_cfg, columns, catalog):
    """The window of a config over its columns: the one place the target offset is decided (feature
    targets forecast the next rows; a `targets` column belongs to its own row), and how far past the
    targets known-future values are read (the rows the targets describe: target_lead_rows)."""
    lead = target_lead(catalog, columns) if columns.future_names else 0
    return WindowSpec(data_cfg.lookback, data_cfg.horizon, data_cfg.stride,
                      target_offset=1 if columns.target_source == "features" else 0, covariate_rows=lead)


def target_lead(catalog, columns):
    """See PreparedData.target_lead."""
    return catalog.sessions[0].target_lead if columns.target_source == "targets" else 0


def _plan_blocks(catalog, columns, window, ranges, data_cfg, progress):
    """(ranges without the rows nan_policy keeps out, block plan) per split."""
    bad_rows = quality.bad_rows_by_session(catalog, columns, ranges, data_cfg.nan_policy, progress)
    per_block = block_windows_for(data_cfg.block_rows, window)
    blocks, clean_ranges = {}, {}
    for split in SPLITS:
        pieces = []
        for session, start, stop in ranges[split]:
            if session in bad_rows:
                pieces.extend((session, a, b) for a, b in valid_ranges(start, stop, bad_rows[session], window))
            else:
                pieces.append((session, start, stop))
        clean_ranges[split] = pieces
        blocks[split] = plan_blocks(pieces, window, per_block)
    return clean_ranges, blocks


def prepare_new_data(data_cfg, paths, normalizer, *, fit_new_sessions=None, progress=True):
    """Data a trained run has not seen (`predict --data`), read with the run's window, columns (by
    name, from its normalizer) and statistics. Every window of every session is in the "test" split.

    Sessions the run has no statistics for are fine under global normalization; under per_session
    they are refused unless `fit_new_sessions` = R rows: their statistics are then fitted on their
    own first R rows, and only windows whose targets come after those rows are scored."""
    data_cfg = dataclasses.replace(data_cfg, paths=list(paths), feature_columns=list(normalizer.feature_names),
                                   target_columns=list(normalizer.target_names))
    pool = make_pool(data_cfg)
    catalog = open_catalog(data_cfg.paths, pool=pool, allow_external_links=data_cfg.allow_external_links)
    where = ", ".join(map(str, paths))
    missing = [c for c in data_cfg.feature_columns if c not in catalog.feature_names]
    missing_targets = [c for c in data_cfg.target_columns
                       if c not in catalog.target_names and c not in catalog.feature_names]
    if missing or missing_targets:
        raise InputError(f"{where}: lacks the run's columns {missing + missing_targets} (features "
                         f"{list(data_cfg.feature_columns)}, targets {list(data_cfg.target_columns)}); the file has "
                         f"features {catalog.feature_names} and targets {catalog.target_names}; convert it with "
                         "the columns the run was trained on")
    columns = resolve_columns(catalog, data_cfg.feature_columns, data_cfg.target_columns,
                              data_cfg.known_future_columns)
    window = window_spec(data_cfg, columns, catalog)
    if data_cfg.check_time_order:
        check_time_order(catalog)
    if fit_new_sessions is not None and normalizer.mode != "per_session":
        raise InputError(f"--fit-new-sessions fits per-session statistics, but the run normalizes "
                         f"{normalizer.mode!r} (one set for every session, new ones included); leave it out")
    known = set(normalizer.session_names) if normalizer.mode == "per_session" else None
    new = [i for i, s in enumerate(catalog.sessions) if known is not None and s.name not in known]
    if new and fit_new_sessions is None:
        names = ", ".join(repr(catalog.sessions[i].name) for i in new[:3]) + (", ..." if len(new) > 3 else "")
        raise InputError(f"{where}: {len(new)} session(s) the run has no statistics for ({names}) and the run "
                         "normalizes per session; pass --fit-new-sessions ROWS to fit theirs on their own first "
                         "ROWS rows (only later targets are then predicted)")
    labelled = columns.target_source == "targets"
    test, fit_ranges = [], []
    for i, s in enumerate(catalog.sessions):
        start, stop = 0, s.window_rows(labelled)
        if i in new:
            if not 0 < fit_new_sessions < stop:
                raise InputError(f"{s.path}: session {s.name!r} has {stop} rows; --fit-new-sessions "
                                 f"{fit_new_sessions} must leave rows to predict after the fitted ones")
            fit_ranges.append((i, 0, fit_new_sessions))
            start = max(0, fit_new_sessions - window.first_target)      # targets after the fitted rows
        if window.n_windows(stop - start) > 0:
            test.append((i, start, stop))
    ranges = {"train": [], "val": [], "test": test}
    _, blocks = _plan_blocks(catalog, columns, window, ranges, data_cfg, progress)
    if new:
        fitted = fit_normalizer(catalog, fit_ranges, columns, mode="per_session", exact=True,
                                nan_policy=data_cfg.nan_policy, normalize_targets=normalizer.targets is not None,
                                progress=progress)
        normalizer = normalizer.with_sessions(fitted, [catalog.sessions[i].name for i in new])
        log.info("statistics of %d new session(s) fitted on their rows [0, %d)", len(new), fit_new_sessions)
    normalizer = normalizer.for_catalog(catalog, columns, source="the run's normalizer")
    pool.close()
    return PreparedData(catalog, window, columns, ranges, blocks, normalizer, data_cfg.nan_policy)


class TimeSeriesDataset(torch.utils.data.Dataset):
    """dataset[i] -> (x (L, F), y (H, K)) [, session index, first row] for any PyTorch code.

    Opens files lazily in whichever process reads (safe with DataLoader workers);
    one h5py call per window, so prefer the block loader for speed.
    """

    def __init__(self, catalog, blocks, window, columns, *, nan_policy="error", normalizer=None,
                 return_ids=False):
        self.catalog = catalog
        self.window = window
        self.columns = columns
        self.index = WindowIndex(blocks, window)
        self.nan_policy = nan_policy
        self.normalizer = normalizer
        self.return_ids = return_ids
        self._read_cols, self._x_cols, self._y_cols = quality.column_positions(columns)

    def __len__(self):
        return len(self.index)

    def __getitem__(self, i):
        session_idx, row = self.index.locate(int(i))
        session = self.catalog.sessions[session_idx]
        w = self.window
        values = session.read_rows(row, row + w.span)[:, self._read_cols]         # (span, C)
        if self.nan_policy == "ffill":
            quality.forward_fill(values, session, row, self._read_cols)
        target_start = w.first_target
        x = values[:w.lookback, self._x_cols]                                      # (L, F)
        if self.columns.target_source == "features":
            y = values[target_start:target_start + w.horizon, self._y_cols]        # (H, K)
        else:
            y = session.read_targets(row + target_start, row + target_start + w.horizon)[:, self._y_cols]
        if self.nan_policy == "error":
            quality.check_finite(x, session, row, "features", self.columns.feature_names)
            if y.dtype.kind == "f":
                quality.check_finite(y, session, row + target_start, self.columns.target_source,
                                     self.columns.target_names)
        x = torch.from_numpy(np.ascontiguousarray(x))
        y = torch.from_numpy(np.ascontiguousarray(y))
        if self.normalizer is not None:
            ids = torch.tensor([session_idx])
            x = self.normalizer.normalize_features(x[None], ids)[0]
            if y.is_floating_point():
                y = self.normalizer.normalize_targets(y[None], ids)[0]
        if self.return_ids:
            return x, y, session_idx, row
        return x, y


def fingerprint_changes(saved, now):
    """What differs between two fingerprints, in words (first few), or [] when they match."""
    changes = []
    before, after = saved.get("sessions", {}), now["sessions"]
    changes += [f"session {n!r} added" for n in after if n not in before][:3]
    changes += [f"session {n!r} gone" for n in before if n not in after][:3]
    changes += [f"session {n!r} rows {before[n]:,} -> {after[n]:,}" for n in after
                if n in before and before[n] != after[n]][:3]
    if list(saved.get("window", [])) != list(now["window"]):
        changes.append(f"window (lookback, horizon, stride, offset) {saved.get('window')} -> {now['window']}")
    if not changes:
        changes += [f"split {k!r} borders" for k in now["splits"] if saved.get("splits", {}).get(k) != now["splits"][k]]
        changes += [f"split {k!r} block plan" for k in now["blocks"] if saved.get("blocks", {}).get(k) != now["blocks"][k]]
    return changes
