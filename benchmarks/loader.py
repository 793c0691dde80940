"""Loader throughput and memory: this framework's block loader against the usual ways.

    python benchmarks/loader.py [--quick] [--scale] [--codecs] [--device cuda] [--json PATH]

One data file, one window spec (default: 100 sessions x 200,000 rows x 16 float32
features, lookback 128, horizon 1, batch 256, 2 workers). Each row runs in its own
child process; the parent samples the PSS of the child's whole process tree (child +
DataLoader workers) and reports the peak. Windows/s is measured from the first
batch on (worker start-up excluded) for --seconds or one epoch, whichever is first.

Rows:
  1 per-index h5py Dataset (lazy open per worker, DataLoader(shuffle=True))
  2 per-index in-memory Dataset (all rows in one tensor)
  3 in-memory batched random gather in one process (the practical upper bound)
  4 numpy memmap per-index Dataset
  5 this framework's loader (block reads in workers, windows built by the consumer)
--scale adds row 5 on ~1 GB and ~8 GB files; --codecs adds row 5 on lzf, gzip and
Blosc-LZ4 copies of the data file.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from common import ROOT, machine, save_json, table

ROWS = {
    "h5py_per_index": "1. per-index h5py Dataset",
    "memory_per_index": "2. per-index in-memory Dataset",
    "memory_gather": "3. in-memory batched gather, 1 process",
    "memmap_per_index": "4. numpy memmap per-index Dataset",
    "framework": "5. h5series block loader",
}


# --- the data -----------------------------------------------------------------------------

def data_file(directory, sessions, rows, features, compression="none"):
    from data.demo import generate
    path = Path(directory) / f"bench_{sessions}x{rows}x{features}_{compression}.h5"
    if not path.exists():
        print(f"writing {path} ...", flush=True)
        generate(path, sessions=sessions, rows=rows, features=features, compression=compression, seed=1)
    return path


def load_all(path):
    """Every session's features and targets concatenated, with each session's first row."""
    from data.catalog import open_catalog
    catalog = open_catalog(path)
    starts = np.concatenate([[0], np.cumsum([s.n_rows for s in catalog.sessions])])
    feats = np.empty((starts[-1], catalog.sessions[0].n_features), np.float32)
    targs = np.empty((starts[-1], 1), np.float32)
    for s, a, b in zip(catalog.sessions, starts[:-1], starts[1:]):
        s.read_rows(0, s.n_rows, out=feats[a:b])
        s.read_targets(0, s.n_rows, out=targs[a:b])
    return feats, targs, starts


class _WindowIndex:
    """Global window i -> global first row, for the baselines (windows stay inside sessions)."""

    def __init__(self, starts, span):
        lengths = np.diff(starts)
        self.session_first = starts[:-1]
        self.ends = np.cumsum(np.maximum(0, lengths - span + 1))

    def __len__(self):
        return int(self.ends[-1])

    def first_rows(self, i):
        s = np.searchsorted(self.ends, i, side="right")
        before = np.where(s > 0, self.ends[np.maximum(s - 1, 0)], 0)
        return self.session_first[s] + (i - before)


# --- the rows (each runs in a child process) ---------------------------------------------------

def _per_index_loader(dataset, args):
    import torch
    return torch.utils.data.DataLoader(dataset, batch_size=args.batch, shuffle=True,
                                       num_workers=args.workers, persistent_workers=args.workers > 0)


def row_h5py_per_index(args):
    import h5py
    import torch

    from data.catalog import open_catalog
    catalog = open_catalog(args.data)
    names = [s.group for s in catalog.sessions]
    starts = np.concatenate([[0], np.cumsum([s.n_rows for s in catalog.sessions])])
    L, H = args.lookback, args.horizon

    class H5Windows(torch.utils.data.Dataset):
        def __init__(self):
            self.index = _WindowIndex(starts, L + H - 1)
            self.file = None

        def __len__(self):
            return len(self.index)

        def __getitem__(self, i):
            if self.file is None:                   # opened lazily, once per worker
                self.file = h5py.File(args.data, "r")
            s = int(np.searchsorted(self.index.ends, i, side="right"))
            r = int(i - (self.index.ends[s - 1] if s else 0))
            group = self.file[names[s]]
            x = group["features"][r:r + L]
            y = group["targets"][r + L - 1:r + L - 1 + H]
            return torch.from_numpy(x), torch.from_numpy(y)

    return iter(_per_index_loader(H5Windows(), args))


def row_memory_per_index(args):
    import torch
    feats, targs, starts = load_all(args.data)
    feats, targs = torch.from_numpy(feats), torch.from_numpy(targs)
    L, H = args.lookback, args.horizon

    class MemoryWindows(torch.utils.data.Dataset):
        def __init__(self):
            self.index = _WindowIndex(starts, L + H - 1)

        def __len__(self):
            return len(self.index)

        def __getitem__(self, i):
            r = int(self.index.first_rows(np.int64(i)))
            return feats[r:r + L], targs[r + L - 1:r + L - 1 + H]

    return iter(_per_index_loader(MemoryWindows(), args))


def row_memory_gather(args):
    import torch
    feats, targs, starts = load_all(args.data)
    feats, targs = torch.from_numpy(feats), torch.from_numpy(targs)
    index = _WindowIndex(starts, args.lookback + args.horizon - 1)
    rng = np.random.default_rng(0)
    steps_x = torch.arange(args.lookback)
    steps_y = torch.arange(args.horizon) + args.lookback - 1
    B = args.batch

    def batches():
        # The same gather the framework's consumer uses (index_select on flat row indices).
        for _ in range(len(index) // B):
            first = torch.from_numpy(index.first_rows(rng.integers(0, len(index), B)))
            x = feats.index_select(0, (first[:, None] + steps_x).reshape(-1)).view(B, args.lookback, -1)
            y = targs.index_select(0, (first[:, None] + steps_y).reshape(-1)).view(B, args.horizon, -1)
            yield x, y
    return batches()


def row_memmap_per_index(args):
    import torch
    feats_path = Path(args.data).with_suffix(".features.npy")
    targs_path = Path(args.data).with_suffix(".targets.npy")
    starts_path = Path(args.data).with_suffix(".starts.npy")
    if not feats_path.exists():
        feats, targs, starts = load_all(args.data)
        np.save(targs_path, targs)
        np.save(starts_path, starts)
        np.save(feats_path, feats)
        del feats, targs
    starts = np.load(starts_path)
    L, H = args.lookback, args.horizon

    class MemmapWindows(torch.utils.data.Dataset):
        def __init__(self):
            self.index = _WindowIndex(starts, L + H - 1)
            self.feats = self.targs = None

        def __len__(self):
            return len(self.index)

        def __getitem__(self, i):
            if self.feats is None:
                self.feats = np.load(feats_path, mmap_mode="r")
                self.targs = np.load(targs_path, mmap_mode="r")
            r = int(self.index.first_rows(np.int64(i)))
            return torch.from_numpy(np.array(self.feats[r:r + L])), torch.from_numpy(np.array(self.targs[r + L - 1:r + L - 1 + H]))

    return iter(_per_index_loader(MemmapWindows(), args))


def row_framework(args):
    from config import DataConfig, TrainingConfig
    from data.dataloader import build_loader
    from data.dataset import prepare_data
    from data.splits import SplitSpec
    data_cfg = DataConfig(paths=[str(args.data)], lookback=args.lookback, horizon=args.horizon,
                          split=SplitSpec(fractions=(1.0, 0.0, 0.0)), block_rows=args.block_rows,
                          chunk_cache_size=args.chunk_cache_mb * 2**20)
    prepared = prepare_data(data_cfg, progress=False)
    loader = build_loader(prepared, "train", TrainingConfig(batch_size=args.batch, num_workers=args.workers,
                                                            round_blocks=args.round_blocks), device=args.device)
    return ((b.x, b.y) for b in loader)


def run_row(args):
    """Child process: iterate the row's batches, print one JSON line."""
    batches = globals()[f"row_{args.run_row}"](args)
    import torch
    cuda = args.device.startswith("cuda")
    first = next(batches)                       # start-up (workers, loading) excluded from the rate
    assert first[0].shape[1:] == (args.lookback, args.features), first[0].shape
    assert first[0].device.type == torch.device(args.device).type, first[0].device
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    windows = batches_seen = 0
    for x, y in batches:
        windows += len(x)
        batches_seen += 1
        if time.perf_counter() - t0 > args.seconds:
            break
    if cuda:
        torch.cuda.synchronize()                # delivered = the gathers on the device are done
    elapsed = time.perf_counter() - t0
    print(json.dumps({"windows": windows, "seconds": elapsed, "batches": batches_seen}), flush=True)


# --- the parent ------------------------------------------------------------------------------

def measure(name, data, args, label=None, workers=None):
    from trainers.memory import PeakSampler
    cmd = [sys.executable, __file__, "--run-row", name, "--data", str(data)]
    for key in ("lookback", "horizon", "batch", "workers", "seconds", "features", "block_rows",
                "round_blocks", "chunk_cache_mb", "device"):
        value = workers if key == "workers" and workers is not None else getattr(args, key)
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    with PeakSampler(proc.pid, interval=0.25) as sampler:
        out, _ = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"row {name} failed (exit {proc.returncode})")
    result = json.loads(out.strip().splitlines()[-1])
    row = {"name": label or ROWS[name], "windows_per_s": result["windows"] / result["seconds"],
           "peak_pss_mb": sampler.peak_mb, "windows": result["windows"], "seconds": result["seconds"],
           # With a consumer that does nothing else, the time it waits on each batch.
           "wait_ms_per_batch": 1000 * result["seconds"] / max(1, result.get("batches", 0)),
           "batch": args.batch, "workers": args.workers if workers is None else workers,
           "device": args.device, "file": Path(data).name, "file_gb": Path(data).stat().st_size / 1e9}
    print(f"  {row['name']}: {row['windows_per_s']:,.0f} windows/s, peak PSS {row['peak_pss_mb']:,.0f} MB",
          flush=True)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--rows", type=int, default=200_000, help="rows per session")
    parser.add_argument("--features", type=int, default=16)
    parser.add_argument("--lookback", type=int, default=128)
    parser.add_argument("--horizon", type=int, default=1)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--block-rows", type=int, default=8192)
    parser.add_argument("--round-blocks", type=int, default=8)
    parser.add_argument("--chunk-cache-mb", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0, help="time per row")
    parser.add_argument("--device", default="cpu",
                        help="where row 5 delivers batches (cpu, cuda); with cuda only row 5 runs, "
                             "at --workers and at 0 workers")
    parser.add_argument("--only", nargs="*", default=list(ROWS), help="rows to run")
    parser.add_argument("--quick", action="store_true", help="small data, short runs (< 1 min)")
    parser.add_argument("--scale", action="store_true", help="row 5 on ~1 GB and ~8 GB files")
    parser.add_argument("--codecs", action="store_true", help="row 5 on lzf, gzip, blosc-lz4 files")
    parser.add_argument("--dir", default=str(ROOT / "bench_data" / "loader"))
    parser.add_argument("--json", default=None)
    parser.add_argument("--run-row", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_row:
        return run_row(args)
    if args.quick:
        args.sessions, args.rows, args.seconds = 10, 20_000, 3.0
    if args.device != "cpu":
        import torch
        if not args.device.startswith("cuda") or not torch.cuda.is_available():
            raise SystemExit(f"--device {args.device}: no such device here; use cpu, or cuda on a machine with a GPU")
        args.only = ["framework"]               # the baselines deliver to the CPU
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    data = data_file(args.dir, args.sessions, args.rows, args.features)
    rows = [measure(name, data, args) for name in ROWS if name in args.only]
    if "framework" in args.only and args.workers != 0:
        # h5py holds the GIL, so reading can't overlap in threads; on 2 cores reading in
        # the training process itself (no workers) was faster: measure both.
        rows.append(measure("framework", data, args, label="5. h5series block loader, 0 workers", workers=0))
    if args.codecs:
        for codec in ("lzf", "gzip", "blosc-lz4"):
            path = data_file(args.dir, args.sessions, args.rows, args.features, codec)
            rows.append(measure("framework", path, args, label=f"5. h5series block loader, {codec}"))
            rows.append(measure("framework", path, args, label=f"5. h5series block loader, {codec}, 0 workers",
                                workers=0))
    if args.scale:
        for gb in (1, 8):
            # 16 float32 features + target + timestamp: 76 bytes a row.
            per_session = int(gb * 1e9 / 76 / args.sessions)
            path = data_file(args.dir, args.sessions, per_session, args.features)
            rows.append(measure("framework", path, args, label=f"5. h5series block loader, {gb} GB file"))
            rows.append(measure("framework", path, args, label=f"5. h5series block loader, {gb} GB file, 0 workers",
                                workers=0))
    print(table(rows, ["name", "device", "batch", "workers", "windows_per_s", "wait_ms_per_batch", "peak_pss_mb",
                       "file", "file_gb"]))
    by_name = {r["name"]: r["windows_per_s"] for r in rows}
    if all(ROWS[k] in by_name for k in ROWS):
        fw = by_name[ROWS["framework"]]
        print(f"framework / in-memory gather: {fw / by_name[ROWS['memory_gather']]:.2f}x; "
              f"/ h5py per-index: {fw / by_name[ROWS['h5py_per_index']]:.0f}x; "
              f"/ in-memory per-index: {fw / by_name[ROWS['memory_per_index']]:.1f}x")
    config = {k: v for k, v in vars(args).items() if k not in ("run_row", "data")}
    save_json(args.json, {"rows": rows, "config": config, "machine": machine()})


if __name__ == "__main__":
    main()
