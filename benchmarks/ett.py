"""ETTh1 long-horizon forecasting through the framework's own pipeline.

    python benchmarks/ett.py --csv ../shared/datasets/ett/ETTh1.csv [--model dlinear|patchtst|repeat_last]
                             [--horizon 96 [192 ...]] [--seeds 0 ...] [--loss mse|mae|quantile ...]
                             [--quantiles 0.1 0.5 0.9] --json OUT

--loss runs each loss in turn (quantile with --quantiles): the point forecast's MSE / MAE (the
level nearest 0.5 for quantiles) and, for quantiles, the coverage of the outer band.

The standard protocol (Zeng et al. 2023; Nie et al. 2023): all 7 columns as features
and targets ("M"), lookback 336, borders train [0, 8640), val [8640-336, 11520), test
[11520-336, 14400); StandardScaler statistics of the train rows; MSE and MAE on the
normalized values over all channels and all test windows; the checkpoint with the
lowest validation loss is the one evaluated. Steps: convert (CSV -> session HDF5) ->
splits with explicit row borders -> block loader -> trainer -> evaluate.
"""

import argparse
import time
from pathlib import Path

from common import ROOT, machine, save_json, table
from config import load_config
from data.convert import convert
from data.dataset import prepare_data
from trainers import run as run_module
from trainers.trainer import Trainer

PUBLISHED = {  # (L=336) test MSE / MAE: DLinear (Zeng et al., 2023), PatchTST/64 (Nie et al., 2023)
    ("dlinear", 96): (0.375, 0.399), ("dlinear", 192): (0.405, 0.416),
    ("dlinear", 336): (0.439, 0.443), ("dlinear", 720): (0.472, 0.490),
    ("patchtst", 96): (0.370, 0.400), ("repeat_last", 96): (1.295, 0.713),
}
BORDERS = "{train: [0, 8640], val: [8304, 11520], test: [11184, 14400]}"
MODEL_ARGS = {
    "dlinear": ["model.dlinear.kernel_size=25", "model.dlinear.individual=false", "training.learning_rate=0.005",
                "training.batch_size=32", "training.scheduler=halving", "training.early_stopping_patience=3"],
    "patchtst": ["model.patchtst.d_model=16", "model.patchtst.n_heads=4", "model.patchtst.num_layers=3",
                 "model.patchtst.patch_len=16",
                 "model.patchtst.patch_stride=8", "model.patchtst.dropout=0.3", "model.patchtst.revin=true",
                 "model.patchtst.d_ff=128", "model.patchtst.norm=batch",
                 "training.learning_rate=0.0001", "training.batch_size=128", "training.scheduler=hold_decay",
                 "training.early_stopping_patience=10"],
    "repeat_last": [],
}


def ett_config(h5_path, model, horizon, seed, epochs, runs_dir, loss="mse", quantiles=()):
    overrides = [
        f"data.paths=[{h5_path}]", "data.lookback=336", f"data.horizon={horizon}", "data.split.method=rows",
        f"data.split.rows={BORDERS}", "data.normalize=global", "data.normalize_exact=true", "data.block_rows=4096",
        f"model.name={model}", f"seed={seed}", f"training.epochs={epochs}",
        "training.warmup_steps=0", "training.weight_decay=0", "training.grad_clip=0", "training.amp=off",
        "training.num_workers=0", "training.log_every_steps=100",
        "output.metrics_in_normalized_units=true", f"output.runs_dir={runs_dir}", "output.tensorboard=false",
        *MODEL_ARGS[model], f"training.loss={loss}"]
    if loss == "quantile":
        overrides.append(f"model.quantiles=[{','.join(map(str, quantiles))}]")
    return load_config("default", overrides=overrides)


def run_one(h5_path, model, horizon, seed, epochs, runs_dir, loss="mse", quantiles=()):
    config = ett_config(h5_path, model, horizon, seed, epochs, runs_dir, loss, quantiles)
    t0 = time.perf_counter()
    if model == "repeat_last":
        prepared = prepare_data(config.data, seed=seed, progress=False)
        trainer = Trainer(config, prepared, Path(runs_dir), monitor=False)
        test = trainer.evaluate("test")
        windows = prepared.n_windows("test")
    else:
        result = run_module.train(config)
        test = result["test"]
        windows = prepare_data(config.data, seed=seed, progress=False).n_windows("test")
    published = PUBLISHED.get((model, horizon), (None, None))
    band = next((k for k in test if k.startswith("quantile_coverage_")), None)
    return {"model": model, "horizon": horizon, "seed": seed, "loss": loss, "test_windows": windows,
            "mse": test["norm_mse"], "mae": test["norm_mae"], "band": band[len("quantile_coverage_"):] if band else "",
            "coverage": test[band] if band else None, "published_mse": published[0],
            "published_mae": published[1], "seconds": time.perf_counter() - t0}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv", default=str(ROOT.parent / "shared" / "datasets" / "ett" / "ETTh1.csv"))
    parser.add_argument("--model", default="dlinear", choices=sorted(MODEL_ARGS))
    parser.add_argument("--horizon", type=int, nargs="*", default=[96])
    parser.add_argument("--seeds", type=int, nargs="*", default=[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--loss", nargs="*", default=["mse"], choices=("mse", "mae", "huber", "quantile"))
    parser.add_argument("--quantiles", type=float, nargs="*", default=[0.1, 0.5, 0.9])
    parser.add_argument("--dir", default=str(ROOT / "bench_data" / "ett"))
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    directory = Path(args.dir)
    directory.mkdir(parents=True, exist_ok=True)
    h5_path = directory / (Path(args.csv).stem + ".h5")
    if not h5_path.exists():
        convert([args.csv], h5_path)
    rows = []
    for horizon in args.horizon:
        for loss in args.loss:
            for seed in args.seeds:
                rows.append(run_one(h5_path, args.model, horizon, seed, args.epochs, directory / "runs", loss,
                                    args.quantiles))
                print(rows[-1], flush=True)
    print(table(rows, ["model", "horizon", "loss", "seed", "test_windows", "mse", "mae", "band", "coverage",
                       "published_mse", "published_mae", "seconds"]))
    save_json(args.json, {"rows": rows, "config": vars(args), "machine": machine()})


if __name__ == "__main__":
    main()
