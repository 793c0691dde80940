"""Does block shuffling train as well as full random shuffling?

    python benchmarks/shuffle.py [--sessions 32 --rows 20000] [--seeds 0 1 2] [--json PATH]

Trains the same model on the same demo data twice per seed, through the framework's
own pipeline: (a) block shuffling, the default (rounds of `round_blocks` blocks, windows
drawn at random within a round), and (b) full shuffling (one round holding every block of
the split: a uniform permutation of all windows). Reports the best validation loss of
each, their relative difference, and how many distinct sessions an average batch holds.
"""

import argparse
import time
from pathlib import Path

import numpy as np

from common import ROOT, machine, save_json, table
from config import load_config
from data.dataloader import build_loader
from data.dataset import prepare_data
from data.demo import generate
from trainers import run as run_module


def sessions_per_batch(prepared, training_cfg, seed):
    loader = build_loader(prepared, "train", training_cfg, seed=seed, return_ids=True)
    counts = [len(np.unique(batch.session.numpy())) for batch in loader]
    return float(np.mean(counts))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=32)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per epoch")
    parser.add_argument("--round-blocks", type=int, default=8)
    parser.add_argument("--dir", default=str(ROOT / "bench_data" / "shuffle"))
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    data = Path(args.dir) / f"demo_{args.sessions}x{args.rows}.h5"
    if not data.exists():
        data.parent.mkdir(parents=True, exist_ok=True)
        generate(data, sessions=args.sessions, rows=args.rows, features=8, seed=5)
    rows = []
    for seed in args.seeds:
        for mode in ("block", "full"):
            overrides = [f"data.paths=[{data}]", "data.lookback=32", "data.block_rows=2048", f"seed={seed}",
                         "model.name=gru", "model.gru.hidden_size=32", "model.gru.num_layers=1",
                         f"training.epochs={args.epochs}", f"training.max_steps_per_epoch={args.steps}",
                         "training.early_stopping_patience=0", "training.num_workers=0",
                         f"output.runs_dir={Path(args.dir) / 'runs'}", "output.tensorboard=false"]
            config = load_config("quick_demo", overrides=overrides)
            prepared = prepare_data(config.data, seed=seed, progress=False)
            n_blocks = len(prepared.blocks["train"])
            config.training.round_blocks = args.round_blocks if mode == "block" else n_blocks
            t0 = time.perf_counter()
            result = run_module.train(config)
            best = float(run_module.evaluate(result["run_dir"], "val")["loss"])
            rows.append({"seed": seed, "shuffle": mode, "round_blocks": config.training.round_blocks,
                         "best_val_loss": best, "test_mse": result["test"]["mse"],
                         "sessions_per_batch": sessions_per_batch(prepared, config.training, seed),
                         "seconds": time.perf_counter() - t0})
            print(rows[-1], flush=True)
    block = np.mean([r["best_val_loss"] for r in rows if r["shuffle"] == "block"])
    full = np.mean([r["best_val_loss"] for r in rows if r["shuffle"] == "full"])
    summary = {"mean_best_val_loss_block": block, "mean_best_val_loss_full": full,
               "relative_difference": (block - full) / full}
    print(table(rows, ["seed", "shuffle", "round_blocks", "best_val_loss", "test_mse", "sessions_per_batch", "seconds"]))
    print(f"block vs full: mean best val loss {block:.5f} vs {full:.5f} ({summary['relative_difference']:+.2%})")
    save_json(args.json, {"rows": rows, "summary": summary, "config": vars(args), "machine": machine()})


if __name__ == "__main__":
    main()
