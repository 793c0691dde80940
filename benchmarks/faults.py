"""Crash and resume: SIGKILL a training run at random moments, resume it, compare.

    python benchmarks/faults.py [--trials 20] [--seed 0] [--json docs/results/faults.json] [--quick]
                                [--checkpoint-every-steps N]

First one uninterrupted run gives the reference test metrics. Then each trial starts the
same run (`python main.py train ... --run-dir R`), kills it with SIGKILL, and checks:
- every checkpoint left behind loads with `torch.load(..., weights_only=True)`;
- `python main.py train --resume R` finishes the run (a run killed before its first
  checkpoint starts again, as `--resume` does by itself; one killed before it wrote its
  config.yaml is simply started again with the same command);
- the final test metrics equal the reference exactly (CPU training is deterministic);
- no temporary checkpoint file is left behind.
Every `--write-every`-th trial kills the run *during a checkpoint write*: the script
watches the checkpoint directory and kills the moment a temp file appears (the write is
under way: torch.save, fsync or rename); the others kill at a uniformly random time
within the reference run's duration.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from common import ROOT, machine, save_json, table

QUICK = ["training.epochs=2", "training.max_steps_per_epoch=15"]
FULL = ["training.epochs=4", "training.max_steps_per_epoch=40"]


def train_args(data, run_dir, quick, every_steps=0):
    # A GRU of 64 units: checkpoints of ~0.5 MB, so writes take long enough to be hit.
    return ["train", "--profile", "quick_demo", f"data.paths=[{data}]", "data.lookback=32", "data.block_rows=2048",
            "model.name=gru", "model.gru.hidden_size=64", "model.gru.num_layers=2", "model.gru.dropout=0.1",
            "training.batch_size=64", "training.num_workers=0", "training.log_every_steps=10",
            f"output.runs_dir={run_dir.parent}", *(QUICK if quick else FULL),
            f"training.checkpoint_every_steps={every_steps}", "--run-dir", str(run_dir)]


# One thread per run: this tiny model gains nothing from two, and with any other load on the
# machine two OpenMP threads spin-wait for each other (measured here: 46 s instead of 1.5 s
# for an epoch while another training run was busy).
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def start(args):
    # Output goes to files, not pipes: nobody reads a pipe while the run is waiting to be killed.
    log = open(Path(args[args.index("--run-dir") + 1]).with_suffix(".log"), "w")
    return subprocess.Popen([sys.executable, "main.py", *args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            text=True, env=ENV)


def finish(args):
    proc = subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=1800, env=ENV)
    if proc.returncode != 0:
        raise SystemExit(f"`main.py {' '.join(args)}` failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc


def temp_files(run_dir):
    directory = run_dir / "checkpoints"
    return sorted(p.name for p in directory.glob(".*.tmp-*")) if directory.exists() else []


def kill_at_random(proc, seconds):
    time.sleep(seconds)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def kill_during_write(proc, run_dir, nth_write, limit):
    """SIGKILL as soon as the nth checkpoint temp file shows up (polling every ~0.2 ms)."""
    writes, before, deadline = 0, set(), time.time() + limit
    while proc.poll() is None and time.time() < deadline:
        now = set(temp_files(run_dir))
        writes += len(now - before)                       # temp files that appeared since the last look
        before = now
        if writes >= nth_write:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.0002)
    proc.wait()
    return writes >= nth_write


def check_checkpoints(run_dir):
    """{name: (epoch, step)} of the checkpoints left; each must load with weights_only=True."""
    found = {}
    for path in sorted((run_dir / "checkpoints").glob("*.pt")) if (run_dir / "checkpoints").exists() else []:
        state = torch.load(path, map_location="cpu", weights_only=True)
        found[path.stem] = (int(state["epoch"]), int(state["step"]))
    return found


def trial(index, mode, rng, data, base, quick, reference, duration, every_steps=0):
    run_dir = base / f"trial{index:02d}"
    args = train_args(data, run_dir, quick, every_steps)
    t0 = time.perf_counter()
    proc = start(args)
    if mode == "write":
        epochs = 2 if quick else 4
        # Which write to hit: each epoch writes `last` (and `best` when validation improved),
        # so there are at least `epochs` writes.
        nth = int(rng.integers(1, epochs + 1))
        hit = kill_during_write(proc, run_dir, nth, duration * 3)
        moment = f"write #{nth}" if hit else "ran to the end"
    else:
        moment_s = float(rng.uniform(0.2, duration))
        kill_at_random(proc, moment_s)
        moment = f"{moment_s:.1f} s"
    killed_at = time.perf_counter() - t0
    left_temp = temp_files(run_dir)
    checkpoints = check_checkpoints(run_dir)
    if (run_dir / "config.yaml").exists():
        resumed = finish(["train", "--resume", str(run_dir)])
        how = "resume"
    else:
        resumed = finish(args)
        how = "start again"
    got = json.loads((run_dir / "metrics_test.json").read_text())
    return {"trial": index, "mode": mode, "killed": moment, "killed_at_s": round(killed_at, 2),
            "temp_file_at_kill": bool(left_temp), "checkpoints_at_kill": checkpoints, "then": how,
            "resumed_from": next((line for line in resumed.stdout.splitlines() if line.startswith("resuming")), ""),
            "metrics_equal": got == reference, "temp_files_after": temp_files(run_dir),
            "seconds": round(time.perf_counter() - t0, 1)}


def full_disk(base, data, quick, checkpoint_bytes, every_steps=0):
    """A real full disk: a tmpfs with room for the first epoch's two checkpoints but not for
    the temp file of the next one. Expects exit code 2, one line naming the file and the
    fix, and the previous checkpoints intact. Needs root (mount); says so otherwise."""
    mount = base / "full_disk"
    mount.mkdir(exist_ok=True)
    size = 2 * checkpoint_bytes + checkpoint_bytes // 2 + (64 << 10)       # + config, normalizer
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        return {"full_disk": "not run", "reason": mounted.stderr.strip() or "mount failed"}
    try:
        run_dir = mount / "run"
        args = train_args(data, run_dir, quick, every_steps)
        args.insert(args.index("--run-dir"), "output.tensorboard=false")     # only checkpoints fill the disk
        proc = subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, capture_output=True, text=True, env=ENV)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        return {"full_disk": "run", "tmpfs_bytes": size, "exit": proc.returncode, "error_lines": errors,
                "traceback": "Traceback" in proc.stderr, "checkpoints_left": check_checkpoints(run_dir),
                "temp_files_left": temp_files(run_dir)}
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def run(trials, seed, quick, base, write_every=3, every_steps=0):
    base.mkdir(parents=True, exist_ok=True)
    data = base / "demo.h5"
    if not data.exists():
        finish(["make-demo", "--out", str(data), "--sessions", "6", "--rows", "6000", "--features", "6"])
    reference_dir = base / "reference"
    t0 = time.perf_counter()
    finish(train_args(data, reference_dir, quick, every_steps))
    duration = time.perf_counter() - t0
    reference = json.loads((reference_dir / "metrics_test.json").read_text())
    disk = full_disk(base, data, quick, (reference_dir / "checkpoints" / "last.pt").stat().st_size, every_steps)
    print(json.dumps(disk), flush=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(trials):
        mode = "write" if i % write_every == write_every - 1 else "random"
        rows.append(trial(i, mode, rng, data, base, quick, reference, duration, every_steps))
        print(json.dumps(rows[-1]), flush=True)
    return {"reference_seconds": round(duration, 1), "reference": reference, "full_disk": disk, "trials": rows}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a shorter run per trial (CI)")
    parser.add_argument("--write-every", type=int, default=3, help="every n-th trial kills during a write")
    parser.add_argument("--dir", default=str(ROOT / "bench_data" / "faults"))
    parser.add_argument("--json", default=None)
    parser.add_argument("--checkpoint-every-steps", type=int, default=0,
                        help="periodic mid-epoch checkpoints (training.checkpoint_every_steps): random kills then "
                             "land between them and resumes start inside an epoch")
    args = parser.parse_args()
    base = Path(args.dir)
    for old in base.glob("trial*"):                       # results of an earlier invocation
        subprocess.run(["rm", "-rf", str(old)], check=True)
    result = run(args.trials, args.seed, args.quick, base, args.write_every, args.checkpoint_every_steps)
    rows = result["trials"]
    print(table(rows, ["trial", "mode", "killed", "temp_file_at_kill", "then", "resumed_from", "metrics_equal",
                       "seconds"]))
    ok = all(r["metrics_equal"] and not r["temp_files_after"] for r in rows)
    print(f"{sum(r['metrics_equal'] for r in rows)}/{len(rows)} trials finished with the reference metrics; "
          f"{sum(r['temp_file_at_kill'] for r in rows)} killed with a checkpoint write under way")
    save_json(args.json, {**result, "config": vars(args), "machine": machine()})
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
