"""Peak memory of `predict --data` against the size of the file it scores (issue 11).

    python benchmarks/predict_memory.py [--dataset-gb 1 8] [--stride 256] [--json OUT]

Writes (or reuses) bench_data/memory/data_<N>gb.h5 (make-demo: 16 float32 features, 1M-row
sessions, as benchmarks/memory.py), trains a small DLinear run on a separate small demo file of
the same columns, then runs `python main.py predict --run RUN --data FILE --out PRED.h5` on each
file in a child process, sampling the peak PSS of that process. Predictions stream: the peak must
not grow with the file (target: the largest within 10% of the smallest). `--stride` sets the rows
between scored windows (the run's data.stride), so every row is read but the output stays small.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, machine, save_json, table
from memory import dataset, warm_page_cache

TARGET_GROWTH = 0.10


def train_run(directory, stride):
    run = Path(directory) / f"predict_run_stride{stride}"
    if (run / "checkpoints" / "best.pt").exists():
        return run
    small = Path(directory) / "predict_train_small.h5"
    subprocess.run([sys.executable, "main.py", "make-demo", "--overwrite", "--out", str(small), "--sessions", "4", "--rows",
                    "50000", "--features", "16"], cwd=ROOT, check=True)
    subprocess.run([sys.executable, "main.py", "train", "--profile", "default", f"data.paths=[{small}]",
                    "data.lookback=64", f"data.stride={stride}", "model.name=dlinear", "training.epochs=1",
                    "training.max_steps_per_epoch=20", "output.tensorboard=false", "--run-dir", str(run),
                    "--overwrite"], cwd=ROOT, check=True)
    return run


def measure(run, data, out):
    from trainers.memory import PeakSampler
    warm_page_cache(data)
    cmd = [sys.executable, "main.py", "predict", "--run", str(run), "--data", str(data), "--out", str(out),
           "--overwrite"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with PeakSampler(proc.pid, interval=0.05) as sampler:
        stdout, stderr = proc.communicate()
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"predict failed on {data}: {stderr[-2000:]}")
    windows = int(stdout.split("wrote ")[1].split(" predictions")[0].replace(",", ""))
    row = {"dataset_gb": round(data.stat().st_size / 1e9, 2), "windows": windows,
           "peak_pss_mb": round(sampler.peak_mb, 1), "seconds": round(seconds, 1),
           "read_mb_per_s": round(data.stat().st_size / 2**20 / seconds), "output_mb": round(out.stat().st_size / 2**20, 1)}
    print(json.dumps(row), flush=True)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset-gb", type=float, nargs="+", default=[1.0, 8.0])
    parser.add_argument("--stride", type=int, default=256)
    parser.add_argument("--dir", default=str(ROOT / "bench_data" / "memory"))
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    run = train_run(args.dir, args.stride)
    rows = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for gb in args.dataset_gb:
            rows.append(measure(run, dataset(args.dir, gb), Path(tmp) / f"pred_{gb:g}gb.h5"))
    print(table(rows, ["dataset_gb", "windows", "peak_pss_mb", "seconds", "read_mb_per_s", "output_mb"]))
    pss = [r["peak_pss_mb"] for r in rows]
    growth = max(pss) / min(pss) - 1
    print(f"peak PSS, largest vs smallest file: {100 * growth:+.1f}% (target within {100 * TARGET_GROWTH:.0f}%)")
    save_json(args.json, {"rows": rows, "growth": growth, "target_growth": TARGET_GROWTH, "config": vars(args),
                          "machine": machine()})


if __name__ == "__main__":
    sys.exit(main())
