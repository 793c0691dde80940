"""Where `similar` windows come from, and how each becomes a vector.

A window is `lookback` rows of the chosen columns ending at row e (its end row; its time is the
time of row e). Windows stream through the block loader (data/dataloader.py) in plan order: every
window once, session after session, rows increasing. Queries go through the same loader with
one-window blocks, so an index window and a query window are read and turned into vectors the
same way (a query window the index holds takes its stored vector: analysis/similar/query.py).

Two kinds of vector:
  raw    each column of the window z-normalized over its own rows, then reduced by piecewise
         aggregate approximation (PAA) to `segments` values; component i is sqrt(n_i) x the mean of
         segment i's n_i values, so the L2 distance of two vectors is the z-normalized Euclidean
         distance when segments == lookback, and a lower bound of it otherwise (Keogh et al. 2001).
  model  a trained run's `model.embed(x)` of the run's normalized window (its last hidden
         representation: GRU/LSTM, TCN, PatchTST).
"""

import dataclasses
import math

import numpy as np
import torch

from analysis.similar.index import FILES, build_index, index_window
from atomic import check_output_dir
from data.catalog import open_catalog
from data.dataloader import LoaderConfig, WindowLoader
from data.dataset import PreparedData, make_pool
from data.normalize import Normalizer
from data.splits import SPLITS, SplitSpec, split_ranges
from data.windows import block_windows_for, plan_blocks, resolve_columns
from errors import InputError
from times import to_ns

STD_FLOOR = 1e-7        # a column whose window std is below this is constant: its z-values are 0 (as stumpy)
SAMPLE_BLOCK_ROWS = 512  # rows per block when sampling windows to train IVF-PQ: many small, spread-out blocks


def paa_bounds(lookback, segments):
    """(start, size) of each PAA segment: lookback rows split as evenly as whole rows allow."""
    edges = np.linspace(0, lookback, segments + 1).round().astype(int)
    return edges[:-1], np.diff(edges)


class RawVectors:
    """x (B, L, C) raw values -> (B, C x segments) float32: z-normalized per column, PAA-reduced."""

    kind = "raw"

    def __init__(self, lookback, n_columns, segments):
        if not 1 <= segments <= lookback:
            raise InputError(f"similar.segments {segments}: give 1 .. lookback ({lookback}), or 0 for "
                             f"min(lookback, 32)")
        self.segments = segments
        self.dim = n_columns * segments
        starts, sizes = paa_bounds(lookback, segments)
        # (L, segments) matrix: a window's z-values times it give sqrt(n_i) * segment mean.
        weights = np.zeros((lookback, segments))
        for j, (a, n) in enumerate(zip(starts, sizes)):
            weights[a:a + n, j] = 1.0 / math.sqrt(n)
        self.weights = torch.as_tensor(weights)

    def __call__(self, x, session=None):                          # (B, L, C)
        x = x.double()
        mean = x.mean(1, keepdim=True)
        std = x.std(1, unbiased=False, keepdim=True)
        z = (x - mean) / torch.where(std < STD_FLOOR, torch.ones_like(std), std)
        z = torch.where(std < STD_FLOOR, torch.zeros_like(z), z)   # constant column: all zeros
        v = torch.einsum("blc,ls->bcs", z, self.weights)             # (B, C, segments)
        return v.reshape(len(x), -1).float().numpy()


class ModelVectors:
    """x (B, L, F) normalized as the run trains -> model.embed(x) (B, D) float32, through the run's
    Forecaster (trainers/forecaster.py)."""

    kind = "model"

    def __init__(self, forecaster, name, lookback, n_features):
        if not callable(getattr(forecaster.model, "embed", None)):
            raise InputError(f"--run: model {name!r} has no embed(x) (its last hidden representation); "
                             "similar --run works with gru, lstm, tcn and patchtst runs, or index raw windows "
                             "(leave out --run)")
        self.forecaster = forecaster
        self.dim = int(forecaster.embed(torch.zeros(2, lookback, n_features)).shape[-1])

    def __call__(self, x, session=None):
        return self.forecaster.embed(x)


@dataclasses.dataclass
class WindowSet:
    """The windows of a dataset as the index sees them: data, columns, window and vectorizer."""

    prepared: PreparedData     # window (lookback, horizon 1, stride, target at the last input row)
    vectors: object            # RawVectors or ModelVectors
    split_spec: SplitSpec
    split: str                 # all, train, val or test
    block_rows: int
    batch_windows: int
    run: str = None
    checkpoint: str = None
    model_name: str = None
    other_data: bool = False   # a run's windows of other files (--data) than its own
    skipped: int = 0           # windows left out for NaN/Inf (their vector is not finite)

    @property
    def catalog(self):
        return self.prepared.catalog

    @property
    def window(self):
        return self.prepared.window

    @property
    def columns(self):
        return list(self.prepared.columns.feature_names)

    def ranges(self, split=None):
        """(session, start, stop) row ranges of `split` (default: the index's own)."""
        split = split or self.split
        if split == "all":
            return [(i, 0, s.n_rows) for i, s in enumerate(self.catalog.sessions)
                    if self.window.n_windows(s.n_rows) > 0]
        return split_ranges(self.catalog, self.split_spec, self.window)[split]

    def plan(self, ranges, block_rows=None):
        return plan_blocks(ranges, self.window, block_windows_for(block_rows or self.block_rows, self.window))

    def sample_plan(self, n_windows, seed=0, ranges=None):
        """Blocks of ~SAMPLE_BLOCK_ROWS rows of `ranges` (default: the index's) drawn at random (without
        replacement) until they hold n_windows windows: the sample IVF-PQ is trained on, spread over
        sessions and time."""
        table = self.plan(self.ranges() if ranges is None else ranges, SAMPLE_BLOCK_ROWS)
        order = np.random.default_rng(seed).permutation(len(table))
        counts = np.cumsum(table[order, 2])
        take = int(np.searchsorted(counts, n_windows)) + 1
        return table[np.sort(order[:take])]

    def batches(self, table):
        """(session index (B,), end row (B,), vectors (B, D) float32) of every window of the block table
        (session, first row, windows), in table order; windows whose vector is not finite (NaN/Inf in
        the data) are left out and counted in `skipped`."""
        prepared = dataclasses.replace(self.prepared, blocks={"windows": np.asarray(table, np.int64).reshape(-1, 3)})
        loader = WindowLoader(prepared, "windows", batch_size=self.batch_windows, shuffle=False, return_ids=True,
                              round_blocks=LoaderConfig.round_blocks)
        last = self.window.lookback - 1
        for batch in loader:
            vectors = self.vectors(batch.x, batch.session)
            session = batch.session.numpy().astype(np.int32)
            end = batch.row.numpy() + last
            finite = np.isfinite(vectors).all(1)
            if not finite.all():
                self.skipped += int((~finite).sum())
                session, end, vectors = session[finite], end[finite], vectors[finite]
            yield session, end, vectors

    def end_times(self, session, end_row):
        """The time of each window (its end row's timestamp), read per session in one slice."""
        out = np.empty(len(session), np.int64)
        for s in np.unique(session):
            where = np.flatnonzero(session == s)
            rows = end_row[where]
            stamps = self.catalog.sessions[int(s)].read_timestamps(int(rows.min()), int(rows.max()) + 1)
            out[where] = stamps[rows - rows.min()]
        return out

    def describe(self):
        w = self.window
        return {"vectors": self.vectors.kind, "columns": self.columns, "lookback": w.lookback, "stride": w.stride,
                "segments": getattr(self.vectors, "segments", None), "dim": self.vectors.dim,
                "split": self.split, "split_spec": dataclasses.asdict(self.split_spec),
                "run": self.run, "checkpoint": self.checkpoint, "model": self.model_name, "other_data": self.other_data,
                "nan_policy": self.prepared.nan_policy}


def raw_windows(data_cfg, similar_cfg, columns, split="all", catalog=None):
    """The windows of data_cfg.paths (columns, lookback, stride, split and reading settings from it);
    `catalog`: those files already open (a query's, read through its own pool), used as they are."""
    given = catalog is not None
    if not given:
        catalog = open_catalog(data_cfg.paths, pool=make_pool(data_cfg),
                               allow_external_links=data_cfg.allow_external_links)
    columns = list(columns or data_cfg.feature_columns)
    if not columns:
        raise InputError(f"give the columns windows are made of: --columns NAME ... (features of the data: "
                         f"{', '.join(catalog.feature_names[:10])})")
    cols = resolve_columns(catalog, columns, columns[:1])
    window = index_window(data_cfg.lookback, data_cfg.stride)
    segments = similar_cfg.segments or min(data_cfg.lookback, 32)
    vectors = RawVectors(data_cfg.lookback, len(columns), segments)
    normalizer = Normalizer("none", cols.feature_names, cols.target_names, None, None)
    prepared = PreparedData(catalog, window, cols, {}, {}, normalizer, "drop")
    if not given:
        catalog.close()                 # (reopened by whoever reads: the loader's workers fork)
    return _checked(WindowSet(prepared, vectors, data_cfg.split, split, data_cfg.block_rows,
                              similar_cfg.batch_windows))


def run_windows(run_dir, similar_cfg, data=None, columns=None, lookback=None, stride=1, split="all",
                checkpoint=None):
    """The windows of a trained run's data (or of other files, `data`, read with the run's columns and
    statistics), as its model sees them; vectors are the model's embeddings."""
    from data.dataset import prepare_new_data
    from trainers.forecaster import load_run
    run = load_run(run_dir, checkpoint)
    config, prepared = run.config, run.prepared
    if data:
        if split != "all":
            raise InputError(f"--split {split}: with --data the run's splits do not apply to the other files; "
                             "leave out --split")
        prepared = prepare_new_data(config.data, data, prepared.normalizer, progress=False)
    own = list(prepared.columns.feature_names)
    if columns and list(columns) != own:
        raise InputError(f"--columns {list(columns)}: run {run_dir} was trained on {own}; leave out --columns "
                         "(a run's windows are its own inputs)")
    if lookback is not None and lookback != config.data.lookback:
        raise InputError(f"--lookback {lookback}: run {run_dir} reads {config.data.lookback} rows a window; "
                         "leave out --lookback")
    if config.data.known_future_columns:
        raise InputError(f"run {run_dir} uses known-future columns; its embedding needs values beyond the "
                         "window: index raw windows instead (leave out --run)")
    vectors = ModelVectors(run.forecaster(prepared), config.model.name, config.data.lookback, len(own))
    window = index_window(config.data.lookback, stride)
    policy = "ffill" if prepared.nan_policy == "ffill" else "drop"
    view = dataclasses.replace(prepared, window=window, nan_policy=policy, blocks={})
    return _checked(WindowSet(view, vectors, config.data.split, split, config.data.block_rows,
                              similar_cfg.batch_windows, run=str(run_dir), checkpoint=run.checkpoint,
                              model_name=config.model.name, other_data=bool(data)))


def _checked(windows):
    if windows.split not in ("all",) + SPLITS:
        raise InputError(f"--split {windows.split!r}: choose all, {', '.join(SPLITS)}")
    unstamped = [s.name for s in windows.catalog.sessions if not s.has_timestamps]
    if unstamped:
        raise InputError(f"{windows.catalog.sessions[0].path}: session {unstamped[0]!r} has no timestamps; similar "
                         "windows are found and reported by time: convert the data with its time column")
    if not windows.ranges():
        raise InputError(f"no session has a full window of {windows.window.lookback} rows in split "
                         f"{windows.split!r}; lower --lookback or use longer sessions")
    return windows


def open_windows(config, *, run=None, checkpoint=None, data=None, columns=None, lookback=None, stride=None,
                 split="all"):
    """The windows `similar index` indexes: a run's (model embeddings) or raw ones of config.data, with the
    command line's --data / --columns / --lookback / --stride in place of the config's."""
    if run is not None:
        return run_windows(run, config.similar, data=data, columns=columns, lookback=lookback,
                           stride=1 if stride is None else stride, split=split, checkpoint=checkpoint)
    # (`is not None`: a --lookback or --stride of 0 is refused by the window, never read as "not given")
    changes = {key: value for key, value in (("paths", list(data) if data else None), ("lookback", lookback),
                                             ("stride", stride)) if value is not None}
    data_cfg = dataclasses.replace(config.data, **changes)
    return raw_windows(data_cfg, config.similar, columns, split)


def index_command(cfg, config, progress=True):
    """`similar index` (an IndexConfig over the run's `config`): outputs checked before any window is read,
    then the windows opened and indexed. Returns build_index's settings."""
    train_until = None if cfg.train_until is None else to_ns(cfg.train_until, "--train-until")
    check_output_dir(cfg.out, cfg.overwrite, "index", reads=(cfg.data or []) + ([cfg.run] if cfg.run else []),
                     owns=FILES)
    windows = open_windows(config, run=cfg.run, checkpoint=cfg.checkpoint, data=cfg.data, columns=cfg.columns,
                           lookback=cfg.lookback, stride=cfg.stride, split=cfg.split)
    return build_index(windows, config.similar, cfg.out, overwrite=cfg.overwrite, seed=config.seed,
                       train_until=train_until, progress=progress)
