"""The one place that builds loaders: `build_loader(prepared, split, training_cfg, ...)`.

Workers (data/blocks.py) read rounds of raw row blocks; this module's
`WindowLoader` runs in the training process and turns each round into batches:
rows -> device (pinned + non_blocking on CUDA) -> normalized once per round ->
windows drawn at random from the whole round (the shuffle buffer: several blocks
from different sessions) -> x (B, L, F), y (B, H, K) gathered with one
index_select each.

Windows are gathered with `index_select` on flat row indices rather than by
indexing a `Tensor.unfold` view: measured here (2 cores, L=128, F=16, B=256) at
1.29M windows/s against 0.60M for the unfold view (docs/benchmarks.md).
"""

import dataclasses
import logging
import os

import numpy as np
import torch

from data.blocks import RoundReader, window_ids, window_starts
from data.sampler import BlockSampler, LoaderPosition
from errors import InputError

log = logging.getLogger("h5series")
_NOTED = set()  # adjustment messages already logged by this process


@dataclasses.dataclass
class Batch:
    x: torch.Tensor                 # (B, L, F) normalized inputs
    y: torch.Tensor                 # (B, H, K) targets (normalized floats, or class labels)
    session: torch.Tensor = None    # (B,) session index, when ids are asked for
    row: torch.Tensor = None        # (B,) first row of each window
    future: torch.Tensor = None     # (B, H, C) known-future inputs at the rows the targets describe


@dataclasses.dataclass
class LoaderConfig:
    """What a loader uses, and only that: the same names and defaults as the training section's
    (which a loader also takes), for building one from your own code (docs/api.md)."""

    batch_size: int = 256
    num_workers: int = 0
    pin_memory: bool = True
    persistent_workers: bool = True
    prefetch_factor: int = 2
    round_blocks: int = 8
    drop_last: bool = False


def loader_options(training_cfg, device, cpu_count=None):
    """DataLoader settings after adjusting what cannot apply here; returns (options, notes)."""
    cpu_count = cpu_count or os.cpu_count() or 1
    notes = []
    workers = training_cfg.num_workers
    if workers == -1:
        # On 2 cores the consumer's gather needs both; h5py holds the GIL, so reading in
        # the training process beat workers there (docs/benchmarks.md). More cores: workers.
        workers = 0 if cpu_count <= 2 else min(4, cpu_count - 1)
        notes.append(f"training.num_workers=-1 (auto): {workers} workers for {cpu_count} cores")
    pin = training_cfg.pin_memory
    if pin and torch.device(device).type != "cuda":
        pin = False
        notes.append("training.pin_memory: off, no CUDA device (pinning only speeds host-to-GPU copies)")
    persistent = training_cfg.persistent_workers
    prefetch = training_cfg.prefetch_factor
    if workers == 0:
        if persistent:
            notes.append("training.persistent_workers: off, no workers")
        persistent, prefetch = False, None
    return {"num_workers": workers, "pin_memory": pin, "persistent_workers": persistent,
            "prefetch_factor": prefetch}, notes


GATHER_CHUNK_BYTES = 32 * 1024 * 1024


def gather_batches(device, batch_size, window, n_features):
    """Batches gathered per kernel launch set: 1 on the CPU (the copy dominates there, and a
    larger chunk only costs memory); on a GPU enough for ~32 MiB of inputs, at most 64."""
    if torch.device(device).type != "cuda":
        return 1
    batch_bytes = batch_size * window.lookback * n_features * 4
    return max(1, min(64, GATHER_CHUNK_BYTES // max(1, batch_bytes)))


def _note_once(notes):
    for note in notes:
        if note not in _NOTED:
            _NOTED.add(note)
            log.info("loader: %s", note)


class _RoundSampler(torch.utils.data.Sampler):
    """Hands the DataLoader the block ids of each round of the current epoch, from `start`."""

    def __init__(self, sampler):
        self.sampler = sampler
        self.epoch = 0
        self.start = 0

    def __iter__(self):
        return iter(self.sampler.rounds(self.epoch)[self.start:])

    def __len__(self):
        return max(0, len(self.sampler.rounds(self.epoch)) - self.start)


def _worker_init(_):
    # One thread per worker: the consumer's gather owns the cores (torch sets this too).
    torch.set_num_threads(1)


class WindowLoader:
    """Batches of one split for one rank. Iterate once per epoch; `state_dict()` saves
    the position, so a resumed run yields the same batches in the same order."""

    def __init__(self, prepared, split, *, batch_size, shuffle, seed=0, rank=0, world_size=1,
                 round_blocks=8, drop_last=False, device="cpu", options=None, return_ids=False):
        self.prepared = prepared
        self.split = split
        self.window = prepared.window
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.device = torch.device(device)
        self.gather_batches = gather_batches(self.device, batch_size, prepared.window,
                                             len(prepared.columns.feature_index))
        self.return_ids = return_ids
        self.normalizer = prepared.normalizer
        self.sampler = BlockSampler(prepared.blocks[split], prepared.window.stride, shuffle=shuffle, seed=seed,
                                    rank=rank, world_size=world_size, round_blocks=round_blocks)
        if world_size > 1 and self.sampler.smallest_share == 0:
            raise InputError(f"split {split!r} has {self.sampler.total_windows} windows, fewer than the "
                             f"{world_size} processes; use fewer processes or more data")
        self.reader = RoundReader(prepared.catalog, prepared.window, prepared.columns, prepared.nan_policy)
        self.position = LoaderPosition()
        self.options = options or {"num_workers": 0, "pin_memory": False, "persistent_workers": False,
                                   "prefetch_factor": None}
        self._rounds = _RoundSampler(self.sampler)
        # Prepared data holds no open HDF5 handle (prepare_data closes them), so forking is safe.
        # Its own generator: otherwise each new iterator draws its base seed from the global RNG,
        # and a run resumed mid-epoch (iterator made at another point) would get other dropout masks.
        self.loader = torch.utils.data.DataLoader(
            self.reader, sampler=self._rounds, batch_size=None, worker_init_fn=_worker_init,
            generator=torch.Generator().manual_seed(seed),
            multiprocessing_context="fork" if self.options["num_workers"] else None, **self.options)
        reader = self.reader
        self._x_cols = reader.x_cols                     # a slice when every column is an input (no copy)
        self._y_cols = _as_index(reader.y_cols, len(reader.read_cols)) if reader.y_from_features else None
        self._future_cols = list(prepared.columns.future_positions)       # among the normalized inputs

    # --- position -------------------------------------------------------------
    def set_epoch(self, epoch):
        """Start `epoch` from its beginning (a no-op when resuming inside that epoch)."""
        if epoch != self.position.epoch:
            self.position = LoaderPosition(epoch, 0, 0)

    def state_dict(self):
        return self.position.to_dict()

    def load_state_dict(self, state):
        self.position = LoaderPosition.from_dict(state)

    def __len__(self):
        """Batches per epoch, the same on every rank: shares differ by at most one window, and
        that window joins the last batch of the ranks that have it (see __iter__)."""
        n = self.sampler.smallest_share
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _windows_before(self, epoch, round_index, window):
        """Windows of this rank's epoch handed out before (round_index, window)."""
        rounds = self.sampler.rounds(epoch)[:round_index]
        return sum(int(r[:, 2].sum()) for r in rounds) + window

    # --- iteration --------------------------------------------------------------
    def __iter__(self):
        pos = self.position
        epoch, first_round, skip = pos.epoch, pos.round, pos.window
        self._rounds.epoch, self._rounds.start = epoch, first_round
        # The epoch's last batch (after len(self) - 1 full ones) takes every window left, so a
        # rank holding one window more than the smallest share still makes len(self) batches.
        batch = self.batch_size
        last_batch_from = (len(self) - 1) * batch
        stop_at = len(self) * batch if self.drop_last else None   # drop_last: no full batch for every rank after
        handed = self._windows_before(epoch, first_round, skip)
        carry = None            # (x, y, session, row, future, round, first window, size) not yet a full batch
        for round_index, item in enumerate(self.loader, start=first_round):
            x_rows, y_rows, starts, ids, f_rows = self._prepare_round(item, epoch, round_index)
            n = int(starts.shape[0])
            k = skip if round_index == first_round else 0
            # Python ints only in this loop: it runs once per batch, and on a GPU its overhead,
            # not the gather, bounds windows/s (docs/benchmarks.md, GPU check).
            while k < n:
                carried = 0 if carry is None else carry[7]
                last = stop_at is None and handed - carried >= last_batch_from
                if carry is None and not last and n - k >= batch:
                    # A run of full batches: gathered together (one set of kernel launches on a
                    # GPU) and served as views. It ends before the epoch's last batch.
                    limit = -(-(last_batch_from - handed) // batch) if stop_at is None else (stop_at - handed) // batch
                    count = min((n - k) // batch, limit, self.gather_batches)
                    parts = self._take(x_rows, y_rows, starts, ids, f_rows, k, count * batch)
                    views = [p.split(batch) if p is not None else (None,) * count for p in parts]
                    for x, y, session, row, future in zip(*views):
                        k += batch
                        handed += batch
                        self.position = LoaderPosition(epoch, round_index, k) if k < n else \
                            LoaderPosition(epoch, round_index + 1, 0)
                        yield Batch(x, y, session, row, future)
                else:
                    # The round's end, the epoch's last batch, or the windows completing a carry.
                    size = n - k if last else min(batch - carried, n - k)
                    part = self._take(x_rows, y_rows, starts, ids, f_rows, k, size)
                    if carry is not None:
                        part = tuple(torch.cat([a, b]) if a is not None else None for a, b in zip(carry[:5], part))
                        carry_round, carry_first = carry[5], carry[6]
                    else:
                        carry_round, carry_first = round_index, k
                    k += size
                    handed += size
                    if last or carried + size < batch:
                        # Round exhausted: remember where these windows started, for resume.
                        carry = part + (carry_round, carry_first, carried + size)
                        self.position = LoaderPosition(epoch, carry_round, carry_first)
                        continue
                    carry = None
                    self.position = LoaderPosition(epoch, round_index, k) if k < n else \
                        LoaderPosition(epoch, round_index + 1, 0)
                    yield Batch(*part)
                if stop_at is not None and handed >= stop_at:
                    break
            else:
                continue
            break
        if carry is not None and stop_at is None and carry[7]:
            yield Batch(*carry[:5])
        self.position = LoaderPosition(epoch + 1, 0, 0)

    def _prepare_round(self, item, epoch, round_index):
        """Rows on the device, normalized once; window starts in the order they are served."""
        rows = item["rows"].to(self.device, non_blocking=True)                        # (R, C)
        starts, block_of, within = window_starts(item, self.window)                  # (Nw,)
        row_session = None
        if self.normalizer.mode == "per_session":
            table = item["blocks"].numpy()
            # (R,) session of each row; numpy, as in window_starts
            row_session = torch.from_numpy(np.repeat(table[:, 0], self.reader.block_rows(table)))
            row_session = row_session.to(self.device, non_blocking=True)
        x_rows = self.normalizer.normalize_features(rows[:, self._x_cols], row_session).contiguous()
        if self._y_cols is not None:
            y_rows = rows[:, self._y_cols]
        else:
            y_rows = item["targets"].to(self.device, non_blocking=True)               # (R, K)
        if y_rows.is_floating_point():
            y_rows = self.normalizer.normalize_targets(y_rows, row_session)
        y_rows = y_rows.contiguous()
        ids = window_ids(item, self.window, block_of, within) if self.return_ids else None
        if self.shuffle:
            # numpy for the same reason as window_starts (torch's threads against the workers).
            perm = self.sampler.window_rng(epoch, round_index).permutation(len(starts))
            starts = starts[perm]
            ids = None if ids is None else (ids[0][perm], ids[1][perm])
        if len(x_rows) < 2**31 - 1:
            starts = starts.astype(np.int32)        # int32 indices gather faster
        if ids is not None:
            ids = (torch.from_numpy(ids[0]), torch.from_numpy(ids[1]))
        f_rows = x_rows[:, self._future_cols].contiguous() if self._future_cols else None   # (R, C)
        # non_blocking: a blocking host-to-device copy waits for the GPU (a host sync per round).
        return x_rows, y_rows, torch.from_numpy(starts).to(self.device, non_blocking=True), ids, f_rows

    def _take(self, x_rows, y_rows, starts, ids, f_rows, k, m):
        """(x, y, session, row, future) of the round's windows k .. k + m in serving order.

        On a GPU the full batches of a round are taken `gather_batches` at a time and served as
        views: each gather is a few kernel launches whose fixed cost (~10 us each) outweighs the
        copy of one batch (docs/benchmarks.md, GPU check). On the CPU gather_batches is 1."""
        x, y = self._gather(x_rows, y_rows, starts[k:k + m], m)
        future = self._gather_future(f_rows, starts[k:k + m], m) if f_rows is not None else None
        if ids is None:
            return x, y, None, None, future
        return x, y, ids[0][k:k + m], ids[1][k:k + m], future

    def _gather_future(self, f_rows, starts, n):
        """(n, H, C) known-future values at the rows the targets describe (their first is
        first_target + target lead rows after each window's start)."""
        w = self.window
        first = w.first_target + w.covariate_rows       # covariate_rows is the target lead when there are covariates
        steps = torch.arange(first, first + w.horizon, device=starts.device, dtype=starts.dtype)
        return f_rows.index_select(0, (starts[:, None] + steps).view(-1)).view(n, w.horizon, -1)

    def _gather(self, x_rows, y_rows, starts, n):
        """x (n, L, F), y (n, H, K) for the n windows starting at `starts` (row indices into the round)."""
        w = self.window
        steps_x, steps_y, idx = self._index_buffers(starts.device, starts.dtype)
        # The epoch's last batch may hold one window more than a chunk (see __iter__).
        idx = idx[:n] if n <= len(idx) else torch.empty((n, w.lookback), device=idx.device, dtype=idx.dtype)
        torch.add(starts[:, None], steps_x, out=idx)                                  # (n, L) row indices
        x = x_rows.index_select(0, idx.view(-1)).view(n, w.lookback, -1)
        if w.horizon == 1:
            # w.first_target, a Python int: reading it off steps_y on a GPU is a host sync per batch.
            y = y_rows.index_select(0, starts + w.first_target).view(n, 1, -1)
        else:
            y = y_rows.index_select(0, (starts[:, None] + steps_y).view(-1)).view(n, w.horizon, -1)
        return x, y

    def _index_buffers(self, device, dtype):
        """Row offsets inside a window and a reused index buffer (int32 indices gather faster)."""
        key = (device, dtype)
        if getattr(self, "_buffers_key", None) != key:
            w = self.window
            steps_x = torch.arange(w.lookback, device=device, dtype=dtype)
            steps_y = torch.arange(w.horizon, device=device, dtype=dtype) + w.first_target
            idx = torch.empty((self.gather_batches * self.batch_size, w.lookback), device=device, dtype=dtype)
            self._buffers, self._buffers_key = (steps_x, steps_y, idx), key
        return self._buffers


def worker_death_message(exc):
    """One line for PyTorch's report of a dead DataLoader worker, or None for other errors.

    PyTorch notices a dead worker by itself (its SIGCHLD handler or watchdog raises a
    RuntimeError within seconds, wherever the main thread is), so a crash is no hang;
    this names the usual cause and what to try."""
    message = str(exc).strip()
    if not message.startswith("DataLoader worker") or "Traceback" in message:
        return None
    return (f"{message.splitlines()[0].rstrip('. ')}; a worker killed by signal 9 is usually the out-of-memory "
            "killer: lower training.num_workers, data.chunk_cache_size or training.batch_size, or use the "
            "low_memory profile (docs/memory.md); then `python main.py train --resume RUN_DIR` continues from "
            "the last checkpoint")


def _as_index(cols, width):
    """A slice when the columns are all of them in order (no copy), else a list."""
    return slice(None) if list(cols) == list(range(width)) else list(cols)


FD_MARGIN = 32          # open files beyond the estimate: logs, pipes, libraries opened later


def ensure_open_files(prepared, options):
    """With workers, every round in flight travels as shared-memory tensors each holding a file
    descriptor, and each worker keeps its HDF5 files open: under `ulimit -n 64` with 80 files a worker's
    queue thread died of EMFILE and the run hung. Raise the soft limit toward the hard one when the
    estimate needs it; refuse in one line when even the hard limit is too low."""
    import resource
    workers = options["num_workers"]
    if not workers:
        return
    try:
        now = len(os.listdir("/proc/self/fd"))
    except OSError:
        return                                  # (no /proc: nothing to measure by)
    files = len({s.path for s in prepared.catalog.sessions})
    open_per_worker = min(files, getattr(prepared.catalog.pool, "max_open", files))
    in_flight = workers * (options.get("prefetch_factor") or 2) * 8      # tensors of the rounds in flight
    need = now + max(open_per_worker, in_flight + 4 * workers) + FD_MARGIN
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    if hard == resource.RLIM_INFINITY or hard >= need:
        target = need if hard == resource.RLIM_INFINITY else min(hard, max(need, 4096))
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        log.info("loader: open-file limit raised from %d to %d (workers share rounds through file descriptors)",
                 soft, target)
        return
    raise InputError(f"training.num_workers={workers}: about {need} open files are needed ({files} HDF5 files, rounds "
                     f"in flight shared through file descriptors) but this process may open {hard} (ulimit -n); raise "
                     "the limit (ulimit -n 4096) or set training.num_workers=0")


def build_loader(prepared, split, training_cfg=None, *, seed=0, rank=0, world_size=1, device="cpu",
                 shuffle=None, return_ids=False):
    """A WindowLoader for `split`: shuffled for train, in order for val/test. `training_cfg`: a
    LoaderConfig (the default one when None) or a config's training section."""
    training_cfg = training_cfg or LoaderConfig()
    options, notes = loader_options(training_cfg, device)
    _note_once(notes)
    ensure_open_files(prepared, options)
    train = split == "train"
    return WindowLoader(prepared, split, batch_size=training_cfg.batch_size,
                        shuffle=train if shuffle is None else shuffle, seed=seed, rank=rank,
                        world_size=world_size, round_blocks=training_cfg.round_blocks,
                        drop_last=training_cfg.drop_last and train, device=device, options=options,
                        return_ids=return_ids)
