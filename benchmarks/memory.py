"""Memory-capped training on datasets larger than RAM.

    python benchmarks/memory.py --dataset-gb 1 30 --profile low_memory [--steps 2000]
                                [--cache warm cold] [--limit-mb MB | --no-limit] --json OUT

For each dataset size, generates (or reuses) bench_data/memory/data_<N>gb.h5 with
`make-demo` (16 float32 features, 1M-row sessions), then trains the profile's model for
`--steps` optimizer steps in a child process (prepare_data -> Trainer.train_epoch: the
real loader, sampling and normalization over the whole file) and reports:
- peak PSS of the child's process tree (training process + DataLoader workers);
- windows/s of those steps, with the page cache warm (file read once beforehand; only
  where it fits in RAM) and cold (caches dropped first, so reads come from the disk);
- when the machine allows it, the run happens inside a cgroup (v1 or v2) whose hard
  memory limit is the profile's `memory_budget_mb`: the kernel kills the run if it goes
  over. The cgroup's own peak counts page cache too (the kernel reclaims that first).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, machine, save_json, table

BYTES_PER_ROW = 16 * 4 + 4 + 8          # features + target + timestamp
ROWS_PER_SESSION = 1_000_000


# --- the data ---------------------------------------------------------------------------------

def dataset(directory, gb):
    path = Path(directory) / f"data_{gb:g}gb.h5"
    if not path.exists():
        sessions = max(1, round(gb * 1e9 / (BYTES_PER_ROW * ROWS_PER_SESSION)))
        print(f"writing {path} ({sessions} sessions x {ROWS_PER_SESSION:,} rows x 16 features) ...", flush=True)
        subprocess.run([sys.executable, "main.py", "make-demo", "--out", str(path), "--sessions", str(sessions),
                        "--rows", str(ROWS_PER_SESSION), "--features", "16"], cwd=ROOT, check=True)
    return path


def drop_page_cache():
    """Empty the page cache (needs root); False where not allowed."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def warm_page_cache(path):
    with open(path, "rb") as f:
        while f.read(64 << 20):
            pass


# --- the hard limit ------------------------------------------------------------------------------

class MemoryLimit:
    """A cgroup with a hard memory limit for one child process (v2 first, else v1)."""

    def __init__(self, limit_mb):
        self.limit = int(limit_mb * 2**20)
        self.dir, self.version, self.reason = None, None, ""
        name = f"h5series-bench-{os.getpid()}"
        v2, v1 = Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/memory")
        try:
            if (v2 / "cgroup.controllers").exists():
                self.dir, self.version = v2 / name, 2
                self.dir.mkdir()
                (self.dir / "memory.max").write_text(str(self.limit))
                (self.dir / "memory.swap.max").write_text("0")
            elif v1.is_dir():
                self.dir, self.version = v1 / name, 1
                self.dir.mkdir()
                (self.dir / "memory.limit_in_bytes").write_text(str(self.limit))
                if (self.dir / "memory.memsw.limit_in_bytes").exists():
                    (self.dir / "memory.memsw.limit_in_bytes").write_text(str(self.limit))
            else:
                self.reason = "no cgroup memory controller mounted"
        except OSError as exc:
            self.reason = f"cannot create a cgroup here ({exc.strerror})"
            self.close()
            self.dir = None

    @property
    def active(self):
        return self.dir is not None

    def enter(self):
        """Runs in the child between fork and exec: move it into the cgroup."""
        (self.dir / "cgroup.procs").write_text(str(os.getpid()))

    def stats(self):
        """Peak usage (page cache included), times the limit was hit, and OOM kills."""
        if self.version == 1:
            oom = dict(line.split() for line in (self.dir / "memory.oom_control").read_text().splitlines())
            return {"cgroup_peak_mb": int((self.dir / "memory.max_usage_in_bytes").read_text()) / 2**20,
                    "limit_hits": int((self.dir / "memory.failcnt").read_text()),
                    "oom_kills": int(oom.get("oom_kill", 0))}
        events = dict(line.split() for line in (self.dir / "memory.events").read_text().splitlines())
        peak = self.dir / "memory.peak"
        return {"cgroup_peak_mb": int(peak.read_text()) / 2**20 if peak.exists() else float("nan"),
                "limit_hits": int(events.get("max", 0)), "oom_kills": int(events.get("oom_kill", 0))}

    def close(self):
        if self.dir is not None and self.dir.exists():
            try:
                self.dir.rmdir()
            except OSError:
                pass


# --- the child: a few hundred real training steps ----------------------------------------------------

def child(args):
    import tempfile

    import psutil

    from config import load_config
    from data.dataset import prepare_data
    from trainers.trainer import Trainer
    config = load_config(args.profile, overrides=[
        f"data.paths=[{args.data}]", "training.epochs=1", f"training.max_steps_per_epoch={args.steps}",
        "output.tensorboard=false", "training.log_every_steps=1000000", *args.set])
    t0 = time.perf_counter()
    prepared = prepare_data(config.data, seed=config.seed, progress=False)
    prepare_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(config, prepared, Path(run_dir), monitor=False)
        read_before = psutil.Process().io_counters().read_bytes     # bytes fetched from storage
        t1 = time.perf_counter()            # steps only: building the trainer imports ~3 s of modules
        trainer.train_epoch()
        t2 = time.perf_counter()
        disk_mb = (psutil.Process().io_counters().read_bytes - read_before) / 2**20
    tc = config.training
    windows = trainer.step * tc.batch_size * tc.gradient_accumulation_steps
    print(json.dumps({"prepare_s": prepare_s, "train_s": t2 - t1, "disk_read_mb": disk_mb, "steps": trainer.step, "windows": windows,
                      "train_windows_in_file": prepared.n_windows("train"), "model": config.model.name,
                      "batch_size": tc.batch_size, "budget_mb": config.memory_budget_mb}))


# --- the parent ---------------------------------------------------------------------------------------

def measure(data, gb, cache, args, limit_mb):
    from trainers.memory import PeakSampler
    dropped = None
    if cache == "cold":
        dropped = drop_page_cache()
    else:
        warm_page_cache(data)
    limit = MemoryLimit(limit_mb) if limit_mb else None
    cmd = [sys.executable, __file__, "--child", "--data", str(data), "--profile", args.profile,
           "--steps", str(args.steps), "--set", *args.set]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            preexec_fn=limit.enter if limit and limit.active else None)
    with PeakSampler(proc.pid, interval=0.1) as sampler:
        out, _ = proc.communicate()
    row = {"dataset_gb": round(data.stat().st_size / 1e9, 2), "cache": cache,
           "limit_mb": limit_mb if limit and limit.active else None, "exit": proc.returncode,
           "peak_pss_mb": round(sampler.peak_mb, 1)}
    if limit is not None:
        if limit.active:
            row.update({k: round(v, 1) if isinstance(v, float) else v for k, v in limit.stats().items()})
        else:
            row["limit_note"] = limit.reason
        limit.close()
    if cache == "cold" and not dropped:
        row["cache_note"] = "could not drop the page cache (needs root): cold figure is not cold"
    if proc.returncode == 0:
        result = json.loads(out.strip().splitlines()[-1])
        row.update({"windows_per_s": round(result["windows"] / result["train_s"]), "steps": result["steps"],
                    "train_s": round(result["train_s"], 1), "prepare_s": round(result["prepare_s"], 1),
                    "disk_read_mb": round(result["disk_read_mb"]),
                    "model": result["model"], "batch_size": result["batch_size"]})
    print(json.dumps(row), flush=True)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset-gb", type=float, nargs="+", default=[1.0, 30.0])
    parser.add_argument("--profile", default="low_memory")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--cache", nargs="+", default=["warm", "cold"], choices=("warm", "cold"))
    parser.add_argument("--limit-mb", type=float, default=None, help="hard limit (default: the profile's budget)")
    parser.add_argument("--no-limit", action="store_true", help="run without a cgroup limit")
    parser.add_argument("--set", nargs="*", default=[], metavar="key=value",
                        help="config overrides for the training run, e.g. training.num_threads=1")
    parser.add_argument("--dir", default=str(ROOT / "bench_data" / "memory"))
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    from config import load_config
    budget = load_config(args.profile).memory_budget_mb
    limit_mb = None if args.no_limit else (args.limit_mb or budget)
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    ram_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    rows = []
    for gb in args.dataset_gb:
        data = dataset(args.dir, gb)
        for cache in args.cache:
            if cache == "warm" and data.stat().st_size > 0.5 * ram_gb * 1e9:
                continue                              # cannot be held in the page cache: every run is cold
            rows.append(measure(data, gb, cache, args, limit_mb))
    print(table(rows, ["dataset_gb", "cache", "limit_mb", "exit", "peak_pss_mb", "cgroup_peak_mb", "limit_hits",
                       "oom_kills", "windows_per_s", "disk_read_mb", "prepare_s", "train_s"]))
    pss = [r["peak_pss_mb"] for r in rows if r["exit"] == 0]
    if len(pss) >= 2:
        print(f"peak PSS spread across datasets: {100 * (max(pss) / min(pss) - 1):.1f}%")
    save_json(args.json, {"profile": args.profile, "budget_mb": budget, "rows": rows, "config": vars(args),
                          "machine": machine()})
    if any(r["exit"] != 0 for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    sys.exit(main())
