"""`evaluate` of a saved run: the whole command's wall time with the Evaluator alone (trainers/forecaster.py,
what `python main.py evaluate` does now) against the old way, a whole Trainer built to score (AdamW, a training
loader, with training.num_workers=-1 the forward/backward memory probe). Each is a fresh process (imports
included, as a user runs it), alternated, `--repeats` times each, on the same run; the metrics must agree.

    python benchmarks/evaluate.py [--run RUN_DIR] [--repeats 3] [--json docs/results/evaluate.json]

Without --run a quick_demo run (README command 1's profile) is trained first into a temporary folder.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, machine, save_json, table

# The old path, as trainers/run.evaluate did it before issue 25 (a Trainer built only to score).
WITH_TRAINER = """
import json, sys
from trainers.rundir import restore
from trainers.trainer import Trainer
run = sys.argv[1]
config, state, prepared, which = restore(run)
trainer = Trainer(config, prepared, run, monitor=False)
trainer.model.load_state_dict(state["model"])
print(json.dumps(trainer.evaluate("test")))
"""


def _timed(command):
    t0 = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - t0
    if done.returncode:
        sys.exit(f"{' '.join(command[:4])} failed:\n{done.stderr[-2000:]}")
    return seconds, json.loads(done.stdout[done.stdout.index("{"):])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="a trained run (default: train quick_demo into a temporary folder)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run
        if run is None:
            run = str(Path(tmp) / "run")
            print("training a quick_demo run ...", flush=True)
            subprocess.run([sys.executable, "main.py", "train", "--profile", "quick_demo", "--run-dir", run,
                            "output.tensorboard=false"], cwd=ROOT, check=True, capture_output=True, timeout=1200)
        commands = {"Evaluator alone (main.py evaluate)": [sys.executable, "main.py", "evaluate", "--run", run, "--json"],
                    "whole Trainer (before)": [sys.executable, "-c", WITH_TRAINER, run]}
        seconds = {name: [] for name in commands}
        metrics = {}
        for _ in range(args.repeats):
            for name, command in commands.items():
                s, result = _timed(command)
                seconds[name].append(round(s, 3))
                metrics[name] = {k: v for k, v in result.items() if isinstance(v, float)}
    first, second = metrics.values()
    same = all(abs(first[k] - second[k]) <= 1e-6 * max(1.0, abs(second[k])) for k in second)
    rows = [{"path": name, "runs": len(s), "min s": min(s), "median s": sorted(s)[len(s) // 2], "max s": max(s)}
            for name, s in seconds.items()]
    print(table(rows, ["path", "runs", "min s", "median s", "max s"]))
    print(f"metrics equal on both paths (to 1e-6): {same}")
    save_json(args.json, {"machine": machine(), "seconds": seconds, "metrics_equal": same,
                          "metrics": metrics, "repeats": args.repeats})
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
