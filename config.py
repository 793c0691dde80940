"""Configuration: one dataclass per section, composed into `Config`.

Precedence, lowest to highest (stated here once, tested in tests/test_config.py):
    dataclass defaults -> profile YAML (configs/<profile>.yaml) -> --config FILE
    -> key=value overrides on the command line.
Unknown keys are rejected with the valid ones listed; bad values are rejected
naming the field. YAML is read with yaml's SafeLoader only (dates left as text).
"""

import dataclasses
import math
import os
from pathlib import Path
from typing import Optional

from models.configs import SECTIONS
from errors import InputError
from profiles import PROFILES  # noqa: F401  (kept importable from here)
from schema import from_dict, merge, parse_override, read_yaml, to_dict  # noqa: F401  (read_yaml, to_dict: config's API)
from times import to_ns

DEMO_PATH = "demo_data/demo.h5"  # the built-in demo data: a run on it makes the file when missing (data/demo.py)

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
MIB = 1024 * 1024


SPLITS = ("train", "val", "test")


@dataclasses.dataclass
class SplitSpec:
    method: str = "fractions"                       # fractions | timestamps | rows
    fractions: tuple = (0.7, 0.15, 0.15)            # train, val, test shares of each session's rows
    val_start: Optional[object] = None              # timestamps: first val time (int ns or ISO date)
    test_start: Optional[object] = None             # timestamps: first test time
    end: Optional[object] = None                    # timestamps: rows at or after it are unused
    rows: Optional[dict] = None                     # rows: {"train": [0, 8640], "val": [...], ...}
    gap: Optional[int] = None                       # embargo rows; None = lookback + horizon - 1
    inputs_before_border: bool = True               # val/test windows take inputs from before their range (targets stay inside, after the gap)
    holdout_val: tuple = ()                         # session names or globs kept whole for val
    holdout_test: tuple = ()                        # session names or globs kept whole for test

    def __post_init__(self):
        for name in ("holdout_val", "holdout_test"):
            values = getattr(self, name)
            if isinstance(values, str):
                setattr(self, name, values := (values,))
            if not isinstance(values, (list, tuple)) or not all(isinstance(v, str) for v in values):
                raise InputError(f"split.{name} is {list(values) if isinstance(values, tuple) else values!r}; give a "
                                 "list of session names or globs")
        if self.method not in ("fractions", "timestamps", "rows"):
            raise InputError(f"split.method is {self.method!r}; choose fractions, timestamps or rows")
        if self.method == "fractions":
            try:
                fr = tuple(float(f) for f in self.fractions)
            except (TypeError, ValueError):
                fr = ()
            if len(fr) != 3 or not all(math.isfinite(f) for f in fr) or min(fr) < 0 or sum(fr) > 1 + 1e-9 \
                    or fr[0] <= 0:
                raise InputError(f"split.fractions is {list(self.fractions)}; give three finite shares "
                                 "(train, val, test), train > 0, summing to at most 1")
            self.fractions = fr
        if self.method == "timestamps" and (self.val_start is None or self.test_start is None):
            raise InputError("split.method is timestamps but split.val_start / split.test_start are "
                             "not both set; give both (ISO dates or int ns)")
        for name in ("val_start", "test_start", "end"):
            value = getattr(self, name)
            if value is not None:
                try:
                    to_ns(value)                    # read again where the borders are placed
                except InputError:
                    raise InputError(f"split.{name} is {value!r}, not a time; use ISO like 2016-07-01 or an "
                                     "integer of ns since the epoch") from None
        if self.method == "rows":
            if self.rows is not None and not isinstance(self.rows, dict):
                raise InputError(f"split.rows is {self.rows!r}; give a mapping like {{train: [0, 8640], val: "
                                 "[8304, 11520]}")
            if not self.rows or "train" not in self.rows:
                raise InputError("split.method is rows but split.rows has no train range; give "
                                 "split.rows like {train: [0, 8640], val: [8304, 11520], test: [11184, 14400]}")
            for name, border in self.rows.items():
                integers = isinstance(border, (list, tuple)) and all(
                    isinstance(v, int) and not isinstance(v, bool) for v in border)
                if name not in SPLITS or not integers or len(border) != 2 or not 0 <= border[0] <= border[1]:
                    raise InputError(f"split.rows.{name} is {border}; give [start, stop) with "
                                     f"0 <= start <= stop for splits {', '.join(SPLITS)}")
        if self.gap is not None and self.gap < 0:
            raise InputError(f"split.gap must be >= 0, got {self.gap}")


def _check_at_least_one(section, obj, names):
    for name in names:
        if getattr(obj, name) < 1:
            raise InputError(f"{section}.{name} must be at least 1, got {getattr(obj, name)}")


def _check_choice(section, obj, choices):
    for name, allowed in choices.items():
        if getattr(obj, name) not in allowed:
            raise InputError(f"{section}.{name} is {getattr(obj, name)!r}; choose one of {', '.join(allowed)}")


@dataclasses.dataclass
class DataConfig:
    """Where the data is, how windows are cut, split and normalized, and how HDF5 is read."""

    paths: list = dataclasses.field(default_factory=lambda: [DEMO_PATH])
    """HDF5 files, directories or globs; each file holds one or many sessions."""
    feature_columns: list = dataclasses.field(default_factory=list)
    """Model inputs by name; empty = every feature column."""
    target_columns: list = dataclasses.field(default_factory=list)
    """Predicted columns, from `targets` or from the features; empty = all targets, else all features."""
    known_future_columns: list = dataclasses.field(default_factory=list)
    """Input columns whose future values are known when forecasting (calendar, scheduled events): the
    model also gets their values at the rows each target describes (gru, lstm, tcn, dlinear)."""
    lookback: int = 64
    """Input rows per window (L)."""
    horizon: int = 1
    """Target rows per window (H)."""
    stride: int = 1
    """Rows between consecutive window starts."""
    split: SplitSpec = dataclasses.field(default_factory=SplitSpec)
    """Train/val/test borders per session (fractions, timestamps or rows) and held-out sessions."""
    nan_policy: str = "error"
    """NaN/Inf in the data: error (stop naming session and row), drop (skip those windows), ffill."""
    normalize: str = "global"
    """global, per_session or none; statistics always from the train split only."""
    normalize_targets: bool = True
    """Also standardize float targets (metrics are reported in original units)."""
    normalize_exact: bool = False
    """Stream every train row for exact statistics instead of sampling."""
    max_samples_for_normalize: int = 1_000_000
    """Rows sampled (in contiguous blocks) for the statistics; ~1M gives 3+ significant digits."""
    normalize_sample_rows: int = 1024
    """Rows per sampled block: more, smaller blocks cover drifting series better (docs/data_format.md)."""
    chunk_cache_size: int = 1 * MIB
    """HDF5 chunk cache bytes per open dataset per process (rdcc_nbytes)."""
    chunk_cache_slots: int = 0
    """rdcc_nslots; 0 = a prime ~100x the number of chunks that fit in the cache."""
    chunk_cache_w0: float = 0.75
    """rdcc_w0: 0 evicts least recently used chunks, 1 evicts fully read chunks first."""
    max_open_sessions: int = 64
    """Open sessions per process (LRU); bounds chunk-cache memory with many sessions."""
    block_rows: int = 8192
    """Rows per block read (one h5py call); windows per block follow from it."""
    check_time_order: bool = True
    """Refuse sessions whose timestamps go back or repeat (read once at start: 8 bytes a row)."""
    allow_external_links: bool = False
    """Follow external links / virtual datasets that point outside the data files."""

    def __post_init__(self):
        if isinstance(self.paths, (str, os.PathLike)):
            self.paths = [self.paths]
        self.paths = [os.fspath(p) if isinstance(p, os.PathLike) else p for p in self.paths]   # (the Python API)
        for name in ("paths", "feature_columns", "target_columns", "known_future_columns"):
            values = getattr(self, name)
            wrong = next((v for v in values if not isinstance(v, str)), None)
            if wrong is not None:
                raise InputError(f"data.{name} must be a list of names, got {list(values)!r} ({wrong!r} is not a "
                                 "name); write it like data.feature_columns=[close,volume]")
        _check_at_least_one("data", self, ("lookback", "horizon", "stride", "max_samples_for_normalize",
                                           "normalize_sample_rows", "chunk_cache_size", "max_open_sessions",
                                           "block_rows"))
        _check_choice("data", self, {"nan_policy": ("error", "drop", "ffill"),
                                     "normalize": ("global", "per_session", "none")})
        if not 0.0 <= self.chunk_cache_w0 <= 1.0:
            raise InputError(f"data.chunk_cache_w0 must be within [0, 1], got {self.chunk_cache_w0}")
        if self.chunk_cache_slots < 0:
            raise InputError(f"data.chunk_cache_slots must be >= 0, got {self.chunk_cache_slots}")


@dataclasses.dataclass
class _ModelSettings:
    """Which network, for which task; each built-in model's hyperparameters in its own section."""

    name: str = "dlinear"
    """dlinear, lstm, gru, tcn, patchtst, repeat_last (the no-training baseline), or your own model as
    package.module:ClassName (docs/models.md)."""
    task: str = "forecast"
    """forecast (regression of H steps of K targets) or classify (integer labels in `targets`)."""
    n_classes: int = 0
    """classify: number of classes (labels 0 .. n_classes - 1)."""
    quantiles: list = dataclasses.field(default_factory=list)
    """Quantile forecasts, e.g. [0.1, 0.5, 0.9] (with training.loss=quantile): each in (0, 1), increasing.
    The point forecast that mse/mae score and predict writes is the quantile nearest 0.5."""
    session_embedding: int = 0
    """A learned vector of this size per session (the ticker's identity; gru, lstm, tcn, dlinear); sessions
    the run did not train on share one 'unknown' vector. 0 = none."""

    # Keys of the one flat section before each model had its own (issue 11): where they went.
    MOVED = {"hidden_size": ("dlinear", "lstm", "gru", "tcn"), "num_layers": ("lstm", "gru", "tcn", "patchtst"),
             "dropout": ("lstm", "gru", "tcn", "patchtst"), "kernel_size": ("dlinear",), "individual": ("dlinear",),
             "tcn_kernel_size": ("tcn",), "patch_len": ("patchtst",), "patch_stride": ("patchtst",),
             "d_model": ("patchtst",), "n_heads": ("patchtst",), "revin": ("patchtst",), "d_ff": ("patchtst",),
             "norm": ("patchtst",)}

    @classmethod
    def unknown_key_message(cls, key, values):
        """schema.from_dict's word for a key of the old flat layout: where it went."""
        return moved_model_key(key, values.get("name", "")) if key in cls.MOVED else None

    def __post_init__(self):
        if self.task == "classify" and self.n_classes < 2:
            raise InputError(f"model.task is classify but model.n_classes is {self.n_classes}; give the "
                             "number of classes (at least 2)")
        if self.session_embedding < 0:
            raise InputError(f"model.session_embedding must be >= 0 (0 = none), got {self.session_embedding}")
        q = self.quantiles
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1 for v in q):
            raise InputError(f"model.quantiles is {q}; give levels strictly between 0 and 1, e.g. [0.1, 0.5, 0.9]")
        if any(b <= a for a, b in zip(q, q[1:])):
            raise InputError(f"model.quantiles is {q}; list them increasing, each once, e.g. {sorted(set(q))}")
        self.quantiles = [float(v) for v in q]


# ModelConfig: the settings above, then one section per built-in model (model.<name>, derived from the sections
# models/configs.py declares: a model's settings are written once, there), then `custom`: the settings of a
# model given as package.module:ClassName, checked against its `Config` dataclass.
ModelConfig = dataclasses.make_dataclass(
    "ModelConfig",
    [(name, cls, dataclasses.field(default_factory=cls)) for name, cls in SECTIONS.items()]
    + [("custom", dict, dataclasses.field(default_factory=dict))],
    bases=(_ModelSettings,))
ModelConfig.__module__ = __name__             # (pickled by name into loader workers: config.ModelConfig)
ModelConfig.__doc__ = _ModelSettings.__doc__


def _moved_name(key):
    """A flat model key's name inside its section (tcn_kernel_size became model.tcn.kernel_size)."""
    return "kernel_size" if key == "tcn_kernel_size" else key


def moved_model_key(key, model_name):
    """The message for a flat model key of the old layout (model.hidden_size): where it lives now."""
    sections = ModelConfig.MOVED[key]
    section = model_name if model_name in sections else sections[0]
    new_key = _moved_name(key)
    return (f"model.{key} moved to each model's own section: model.{section}.{new_key} "
            f"(sections: {', '.join(sections)}); see docs/configuration.md")


def migrate_flat_model_keys(values):
    """A saved run's config of the old layout (every model's settings flat in `model`), in the new one:
    each flat value goes to every section that had used it, so the run rebuilds the same model."""
    model = dict(values.get("model") or {})
    for key in [k for k in model if k in ModelConfig.MOVED]:
        value = model.pop(key)
        for section in ModelConfig.MOVED[key]:
            model.setdefault(section, {})[_moved_name(key)] = value
    return {**values, "model": model}


@dataclasses.dataclass
class TrainingConfig:
    """The optimization loop and the loader that feeds it."""

    epochs: int = 10
    """Passes over the training windows."""
    max_steps_per_epoch: int = 0
    """Stop an epoch after this many optimizer steps; 0 = the whole epoch."""
    max_val_windows: int = 0
    """Validate each epoch on at most this many windows: a fixed subset of whole blocks drawn once with
    the run's seed (the same windows every epoch, so val losses compare); 0 = every window. The final
    test evaluation is always whole. A minute-scale val split took >10 min per epoch on 2 cores."""
    batch_size: int = 256
    """Windows per micro-batch."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step (effective batch = batch_size x this)."""
    learning_rate: float = 1e-3
    """AdamW peak learning rate."""
    weight_decay: float = 1e-4
    """AdamW decoupled weight decay."""
    scheduler: str = "cosine"
    """cosine (with linear warmup), halving (lr x 0.5 each epoch, the DLinear paper's "type1"),
    hold_decay (lr held 3 epochs, then x 0.9 each epoch, PatchTST's "type3"), plateau (halve on a
    flat validation loss) or none."""
    warmup_steps: int = 100
    """cosine: optimizer steps of linear warmup."""
    grad_clip: float = 1.0
    """Clip the gradient norm to this; 0 = no clipping."""
    amp: str = "auto"
    """auto (fp16 on CUDA, bf16 on CPU), off, bf16 or fp16 (CUDA only, with GradScaler)."""
    device: str = "auto"
    """auto (cuda if available), cpu, cuda, cuda:N."""
    compute_metrics_online: bool = True
    """Streaming exact metrics in O(1) memory; false collects every prediction (old path)."""
    early_stopping_patience: int = 5
    """Epochs without improvement of the validation loss before stopping; 0 = never."""
    max_nonfinite_steps: int = 10
    """Non-finite losses in a row before the run stops (each one is skipped and counted)."""
    log_every_steps: int = 50
    """Optimizer steps between TensorBoard scalars and host syncs."""
    checkpoint_every_steps: int = 0
    """Also save `last` every this many optimizer steps inside an epoch; 0 = off."""
    checkpoint_every_minutes: float = 30.0
    """Also save `last` when this many minutes passed since the last save; 0 = off. A SIGKILL (the
    out-of-memory killer) then loses at most this much of a long epoch, not the whole epoch."""
    gc_every_epoch: bool = True
    """gc.collect() and torch.cuda.empty_cache() after each epoch."""
    num_workers: int = -1
    """DataLoader worker processes; -1 = auto (0 on 2 cores, else cores - 1, at most 4)."""
    num_threads: int = -1
    """Threads of the training process's math; -1 = auto (the cores other processes leave free at start,
    at least 1), 0 = PyTorch's default (one per core). Threads on a busy core spin-wait for ones the OS
    has paused (measured 2-30x slower steps)."""
    pin_memory: bool = True
    """Pin host batches for fast non_blocking copies to the GPU; turned off without CUDA."""
    persistent_workers: bool = True
    """Keep workers (and their open files and caches) between epochs; off without workers."""
    prefetch_factor: int = 2
    """Rounds each worker reads ahead; not used without workers."""
    round_blocks: int = 8
    """Blocks per round: one worker item, and the shuffle buffer windows are drawn from."""
    drop_last: bool = False
    """Drop the last, smaller batch of a training epoch."""
    loss: str = "mse"
    """Regression loss, trained on and reported as the validation loss: mse, mae, huber
    (quadratic within training.huber_delta normalized units, linear beyond), or quantile (pinball
    loss of the levels in model.quantiles). classify always uses cross-entropy."""
    huber_delta: float = 1.0
    """huber: where the loss turns from quadratic to linear, in normalized target units."""

    def __post_init__(self):
        _check_at_least_one("training", self, ("epochs", "batch_size", "gradient_accumulation_steps",
                                               "prefetch_factor", "round_blocks", "log_every_steps"))
        if self.num_threads < -1:
            raise InputError(f"training.num_threads must be -1 (auto), 0 (PyTorch's default) or >= 1, "
                             f"got {self.num_threads}")
        if self.checkpoint_every_steps < 0 or self.checkpoint_every_minutes < 0:
            raise InputError("training.checkpoint_every_steps / checkpoint_every_minutes must be >= 0 (0 = off), got "
                             f"{self.checkpoint_every_steps} / {self.checkpoint_every_minutes}")
        if self.num_workers < -1:
            raise InputError(f"training.num_workers must be -1 (auto) or >= 0, got {self.num_workers}")
        if self.max_val_windows < 0:
            raise InputError(f"training.max_val_windows must be >= 0 (0 = every window), got {self.max_val_windows}")
        if self.early_stopping_patience < 0:
            raise InputError(f"training.early_stopping_patience must be >= 0 (0 = never stop early), "
                             f"got {self.early_stopping_patience}")
        if self.max_nonfinite_steps < 1:
            raise InputError(f"training.max_nonfinite_steps must be at least 1 (non-finite losses in a row before "
                             f"the run stops), got {self.max_nonfinite_steps}")
        if self.learning_rate <= 0:
            raise InputError(f"training.learning_rate must be > 0, got {self.learning_rate}")
        if self.weight_decay < 0:
            raise InputError(f"training.weight_decay must be >= 0, got {self.weight_decay}")
        if self.grad_clip < 0:
            raise InputError(f"training.grad_clip must be >= 0 (0 = no clipping), got {self.grad_clip}")
        _check_choice("training", self, {"scheduler": ("cosine", "halving", "hold_decay", "plateau", "none"),
                                         "amp": ("auto", "off", "bf16", "fp16"),
                                         "loss": ("mse", "mae", "huber", "quantile")})
        if not self.huber_delta > 0:
            raise InputError(f"training.huber_delta must be > 0, got {self.huber_delta}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise InputError(f"training.device is {self.device!r}; choose auto, cpu, cuda or cuda:N")


@dataclasses.dataclass
class OutputConfig:
    """Where a run writes, and how often."""

    runs_dir: str = "runs"
    """Parent of run directories (runs/<profile>-<time>/)."""
    tensorboard: bool = True
    """Write TensorBoard event files under <run>/tensorboard."""
    metrics_in_normalized_units: bool = False
    """Also report metrics on normalized values (they are always reported in original units)."""
    plot_sessions: int = 4
    """Sessions in the forecasts-vs-truth figure TensorBoard gets at each validation (forecast runs
    with output.tensorboard); 0 = no figure."""

    def __post_init__(self):
        if self.plot_sessions < 0:
            raise InputError(f"output.plot_sessions must be >= 0 (0 = no figure), got {self.plot_sessions}")


@dataclasses.dataclass
class SimilarConfig:
    """How `similar index` builds its FAISS index and how queries search it (docs/similar.md)."""

    flat_max_vectors: int = 200_000
    """Windows up to which the index is exact (FAISS flat); above it IVF-PQ. A flat search costs about
    7 ns per window and query on 2 cores: 600 queries over 200k windows ~0.8 s."""
    segments: int = 0
    """PAA segments per column of a raw window's vector; 0 = min(lookback, 32). Equal to lookback, the
    distance is the exact z-normalized Euclidean distance; fewer, a lower bound of it (Keogh's PAA)."""
    nlist: int = 0
    """IVF-PQ: coarse clusters; 0 = the power of 2 nearest sqrt(windows), within [16, 4096]."""
    pq_m: int = 0
    """IVF-PQ: 4-bit sub-quantizers (half a byte each per window's code); 0 = one per dimension, at
    most 64; vectors are padded with zeros to a multiple of it."""
    nprobe: int = 0
    """IVF-PQ: clusters searched per query (more: better recall, slower); 0 = 1/32 of them, at least 32."""
    rerank: int = 4
    """IVF-PQ: candidates per wanted neighbour, among those the query's rules keep, whose exact
    distances are read from the stored vectors (k x rerank a query); every reported distance is exact."""
    train_vectors: int = 0
    """IVF-PQ: windows sampled to train it; 0 = 40 per cluster (FAISS's k-means asks 39), at least 32,768."""
    batch_windows: int = 4096
    """Windows turned into vectors at a time (model embeddings: a forward pass each)."""

    def __post_init__(self):
        _check_at_least_one("similar", self, ("flat_max_vectors", "rerank", "batch_windows"))
        for name in ("segments", "nlist", "pq_m", "nprobe", "train_vectors"):
            if getattr(self, name) < 0:
                raise InputError(f"similar.{name} must be >= 0 (0 = automatic), got {getattr(self, name)}")


@dataclasses.dataclass
class Config:
    """The whole run."""

    profile: str = "default"
    """Name of the profile this config started from."""
    seed: int = 0
    """Seed of every random choice (sampling, shuffling, initialization)."""
    memory_budget_mb: int = 4096
    """Memory the run plans to stay within (main process + workers, PSS)."""
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)
    output: OutputConfig = dataclasses.field(default_factory=OutputConfig)
    similar: SimilarConfig = dataclasses.field(default_factory=SimilarConfig)

    def __post_init__(self):
        if self.memory_budget_mb < 64:
            raise InputError(f"memory_budget_mb must be at least 64, got {self.memory_budget_mb}")
        if not 0 <= self.seed < 2**32:          # numpy's and torch's seeds; (a run adds its rank to it)
            raise InputError(f"seed must be within 0 .. 4294967295, got {self.seed}")
        if (self.training.loss == "quantile") != bool(self.model.quantiles):
            raise InputError("training.loss=quantile and model.quantiles go together: "
                             + (f"training.loss is {self.training.loss!r} but model.quantiles is {self.model.quantiles}; set "
                                "training.loss=quantile" if self.model.quantiles else
                                "give the levels, e.g. model.quantiles=[0.1,0.5,0.9]"))
        if self.model.task == "classify" and self.model.quantiles:
            raise InputError("model.quantiles are forecast quantiles; a classifier (model.task=classify) gives "
                             "class probabilities instead: remove model.quantiles")
        if self.model.task == "classify":
            # Class labels are never standardized: 1, 2, 0 became 0, 1, -1 after .long() (issue 10, case 4).
            self.data.normalize_targets = False
            if self.data.horizon != 1:
                raise InputError(f"model.task is classify but data.horizon is {self.data.horizon}; a classifier "
                                 "predicts one label per window: set data.horizon=1")
            if len(self.data.target_columns) > 1:
                raise InputError(f"model.task is classify but data.target_columns has {len(self.data.target_columns)} "
                                 f"columns {self.data.target_columns}; name the one label column")


# --- building a Config from nested dicts -------------------------------------------------

def auto_profile(ram_gb=None):
    """`auto`: low_memory under 8 GB of RAM, default up to 16 GB, high_performance above."""
    import logging
    import psutil
    import torch
    ram_gb = ram_gb if ram_gb is not None else psutil.virtual_memory().total / 2**30
    chosen = "low_memory" if ram_gb < 8 else "default" if ram_gb <= 16 else "high_performance"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    logging.getLogger("h5series").info("profile auto: %.1f GB RAM, %s -> %s", ram_gb, gpu, chosen)
    return chosen


def profile_path(profile):
    if profile not in PROFILES or profile == "auto":
        raise InputError(f"profile {profile!r} does not exist; choose one of {', '.join(PROFILES)}")
    return CONFIG_DIR / f"{profile}.yaml"


def load_config(profile, config_file=None, overrides=()):
    """Defaults -> profile YAML -> config file -> key=value overrides, validated. The library never
    imports the command line: main.py and h5series.load_config pass main.py's SELECTED_CONFIG when
    no profile is named (one default for the CLI and the Python API)."""
    if profile is None:
        raise TypeError("load_config needs a profile name (h5series.load_config() defaults to main.SELECTED_CONFIG)")
    if profile == "auto":
        profile = auto_profile()
    values = {"profile": profile}
    values = merge(values, read_yaml(profile_path(profile)))
    if config_file:
        values = merge(values, read_yaml(config_file))
    for text in overrides:
        values = merge(values, parse_override(text))
    values["profile"] = profile
    return from_dict(Config, values, "")


# Keys a resumed run may change: they alter how long it trains, what it logs and how it reads,
# never what one step computes, so the steps it has taken stay the run's own. Anything else
# (model, data, lookback, learning rate, seed, device...) would make it another run.
RESUME_KEYS = {"training.epochs", "training.max_val_windows", "training.early_stopping_patience", "training.max_nonfinite_steps",
               "training.log_every_steps", "training.num_workers", "training.num_threads",
               "training.prefetch_factor", "training.persistent_workers", "training.pin_memory",
               "training.gc_every_epoch", "training.compute_metrics_online", "output.tensorboard",
               "output.metrics_in_normalized_units", "output.plot_sessions", "memory_budget_mb", "training.checkpoint_every_steps",
               "training.checkpoint_every_minutes"}


def _flat_keys(nested, prefix=""):
    for key, value in nested.items():
        if isinstance(value, dict) and f"{prefix}{key}" not in RESUME_KEYS:
            yield from _flat_keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def resume_config(config, overrides):
    """A run's config with the overrides a resume may take (RESUME_KEYS), e.g. training.epochs=20 to
    extend a finished run; any other key is refused by name (it used to be ignored silently)."""
    values = to_dict(config)
    for text in overrides:
        update = parse_override(text)
        for key in _flat_keys(update):
            if key not in RESUME_KEYS:
                raise InputError(f"{key} cannot change on --resume: the resumed run would no longer be the one "
                                 f"its checkpoints hold; start a new run for it, or change only "
                                 f"{', '.join(sorted(RESUME_KEYS))}")
        values = merge(values, update)
    return from_dict(Config, values, "")
