"""The host memory plan against the measured peak PSS of real runs (issue 10, case 19).

    python benchmarks/host_plan.py [--profiles ...] [--models ...] [--features 40] [--steps 60]
                                   [--workers-runs] [--json OUT]

For each profile and model, trains `main.py train` for one short epoch (--steps optimizer
steps, then validation and test) on a generated file (--features columns, default 40: the
case that made the old estimate refuse GRU and DLinear on low_memory), in a child process,
and samples the peak PSS of its process tree (training process + DataLoader workers). The
plan is the total the run printed before training ("memory plan ... total"). Target: the
plan is never below the peak and at most 25% above it. With --workers-runs, each profile is
also run with training.num_workers=2 (persistent workers, and validation's workers beside
them). Writes a table (docs/memory.md) and JSON.
"""

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT, machine, save_json, table

PROFILES = ("low_memory", "default", "high_performance", "quick_demo")
MODELS = ("dlinear", "gru", "lstm", "tcn", "patchtst")
TARGET_OVER = 0.25


def data_file(directory, sessions, rows, features):
    path = Path(directory) / f"plan_{sessions}x{rows}x{features}.h5"
    if not path.exists():
        subprocess.run([sys.executable, "main.py", "make-demo", "--out", str(path), "--sessions", str(sessions),
                        "--rows", str(rows), "--features", str(features)], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
    return path


def measure(profile, model, data, args, workers=None):
    from trainers.memory import PeakSampler
    with tempfile.TemporaryDirectory() as runs:
        cmd = [sys.executable, "main.py", "train", "--profile", profile, f"data.paths=[{data}]",
               f"model.name={model}", "training.epochs=1", f"training.max_steps_per_epoch={args.steps}",
               f"output.runs_dir={runs}", "output.tensorboard=false", "training.early_stopping_patience=0"]
        if workers is not None:
            cmd.append(f"training.num_workers={workers}")
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        with PeakSampler(proc.pid, interval=0.05) as sampler:
            out, _ = proc.communicate()
    refused = re.search(r"memory plan needs ([\d,]+) MB but memory_budget_mb is", out)
    if proc.returncode == 2 and refused:
        # The plan stopped the run before it started: nothing to measure, and what it names is the fix.
        print(f"  {profile}/{model}: refused, plan {refused.group(1)} MB over the budget", flush=True)
        return {"profile": profile, "model": model, "workers": "auto" if workers is None else workers,
                "planned_mb": float(refused.group(1).replace(",", "")), "peak_pss_mb": None,
                "plan_over_peak": None, "met": "refused (over budget)", "plan_lines": {}}
    if proc.returncode != 0:
        raise SystemExit(f"{profile}/{model} failed (exit {proc.returncode}):\n{out[-2000:]}")
    totals = re.findall(r"^\s+total\s+([\d,.]+) MB", out, flags=re.M)
    if not totals:
        raise SystemExit(f"{profile}/{model}: no memory plan in the output:\n{out[-2000:]}")
    planned = float(totals[0].replace(",", ""))
    lines = {m.group(1).strip(): float(m.group(2).replace(",", ""))
             for m in re.finditer(r"^  (\S.*?)\s{2,}([\d,.]+) MB", out.split(" total")[0], flags=re.M)}
    row = {"profile": profile, "model": model, "workers": "auto" if workers is None else workers,
           "planned_mb": planned, "peak_pss_mb": sampler.peak_mb, "plan_over_peak": planned / sampler.peak_mb - 1,
           "plan_lines": lines}
    row["met"] = "yes" if 0 <= row["plan_over_peak"] <= TARGET_OVER else "no"
    print(f"  {profile}/{model} workers {row['workers']}: planned {planned:,.0f} MB, peak {sampler.peak_mb:,.0f} MB "
          f"({row['plan_over_peak']:+.1%})", flush=True)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", nargs="+", default=list(PROFILES), choices=PROFILES)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--features", type=int, default=40)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--workers-runs", action="store_true", help="also each profile with 2 workers")
    parser.add_argument("--dir", default=str(ROOT / "bench_data" / "host_plan"))
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    data = data_file(args.dir, args.sessions, args.rows, args.features)
    rows = [measure(p, m, data, args) for p in args.profiles for m in args.models]
    if args.workers_runs:
        rows += [measure(p, args.models[0], data, args, workers=2) for p in args.profiles]
    print(table(rows, ["profile", "model", "workers", "planned_mb", "peak_pss_mb", "plan_over_peak", "met"]))
    measured = [r["plan_over_peak"] for r in rows if r["plan_over_peak"] is not None]
    worst = min(measured), max(measured)
    print(f"plan over peak: {worst[0]:+.1%} .. {worst[1]:+.1%} (target 0 .. +{TARGET_OVER:.0%})")
    save_json(args.json, {"rows": rows, "target_over": TARGET_OVER, "config": vars(args), "machine": machine()})


if __name__ == "__main__":
    main()
