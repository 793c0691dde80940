"""505 S&P 500 stocks, daily: can a model rank tomorrow's returns? Reported honestly.

    python benchmarks/stocks.py --dir ../shared/datasets/stocks/individual_stocks_5yr --json OUT

Each of the 505 files becomes a session whose features are derived from OHLCV: log
return, high-low range, open-close body, log volume change, and 5-day return (all
from data up to and including the day); the target is the next day's log return
(a label on its own row). Splits by date with the embargo gap (lookback + horizon - 1
rows) between parts: train 2013-02 .. 2016-06, validate 2016-07 .. 2017-03, test 2017-04
.. 2018-02-07; val/test windows take their inputs from before their border (the past),
so the first test prediction falls right after the gap.
Features and targets are standardized per session from its train period (data.normalize=per_session);
predictions are mapped back to returns before ranking.

On the test period it reports the daily cross-sectional rank IC (Spearman between
predicted and realized returns across stocks, averaged over days, with its t-stat),
direction accuracy, and the same for two baselines: zero (always predicts no move)
and the previous day's return.
"""

import argparse
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from common import ROOT, machine, save_json, table
from atomic import atomic_path
from config import load_config
from data.catalog import write_index
from data.layout import ATTR_TARGET_LEAD, INDEX, write_session
from data.predictions import read_predictions
from trainers import run as run_module
from trainers.predict import predict

FEATURES = ["log_return", "range", "body", "log_volume_change", "return_5d"]
SPLIT = {"val_start": "2016-07-01", "test_start": "2017-04-01"}


def session_frame(path):
    """Features of one stock, all known at the close of their day; target = next day's log return."""
    df = pd.read_csv(path, parse_dates=["date"]).sort_values("date")
    df = df.dropna(subset=["open", "high", "low", "close", "volume"])      # 9 files have empty cells
    close = df["close"].to_numpy(np.float64)
    log_close = np.log(close)
    out = pd.DataFrame({"date": df["date"].to_numpy()})
    out["log_return"] = np.concatenate([[np.nan], np.diff(log_close)])
    out["range"] = np.log(df["high"].to_numpy() / df["low"].to_numpy())
    out["body"] = np.log(close / df["open"].to_numpy())
    volume = np.log1p(df["volume"].to_numpy(np.float64))
    out["log_volume_change"] = np.concatenate([[np.nan], np.diff(volume)])
    out["return_5d"] = pd.Series(log_close).diff(5).to_numpy()
    out["target"] = np.concatenate([np.diff(log_close), [np.nan]])        # next day's log return
    # Rows without a full feature history or a next day are dropped; inf (zero prices) too.
    out = out.replace([np.inf, -np.inf], np.nan).dropna().reset_index(drop=True)
    return out


def build_sessions(source_dir, out_path):
    files = sorted(Path(source_dir).glob("*_data.csv"))
    if len(files) != 505:
        raise SystemExit(f"{source_dir}: expected 505 files, found {len(files)}")
    with atomic_path(out_path) as tmp:
        with h5py.File(tmp, "w") as f:
            for path in files:
                frame = session_frame(path)
                if len(frame) == 0:
                    continue
                stamps = frame["date"].to_numpy("datetime64[ns]").astype(np.int64)
                writer = write_session(f, path.stem.replace("_data", ""), frame[FEATURES].to_numpy(np.float32),
                                       frame[["target"]].to_numpy(np.float32), stamps,
                                       feature_names=FEATURES, target_names=["next_log_return"])
                writer.set_attrs(**{ATTR_TARGET_LEAD: 1})      # row t's target is day t + 1's return
        write_index(tmp)
    return len(files)


def sessions_current(path):
    """The session file exists and was written by this version (files from before the target's lead was
    recorded date every prediction a day early: rebuilt)."""
    if not path.exists():
        return False
    with h5py.File(path, "r") as f:
        return INDEX in f and int(f[INDEX].attrs.get(ATTR_TARGET_LEAD, 0)) == 1


def rank_ic(frame, column):
    """Mean daily Spearman IC across stocks and its t-stat."""
    daily = frame.groupby("timestamp").apply(
        lambda g: g[column].rank().corr(g["target"].rank()) if g[column].nunique() > 1 else np.nan,
        include_groups=False).dropna()
    if len(daily) < 2:
        return float("nan"), float("nan"), 0
    return float(daily.mean()), float(daily.mean() / daily.std(ddof=1) * np.sqrt(len(daily))), len(daily)


def evaluate_predictions(pred_path, h5_path):
    # One row per window (H = K = 1); grouped by the day each forecast is made.
    # (the file's `target` column names the predicted target: dropped, "target" here is the realized value)
    frame = read_predictions(pred_path).drop(columns=["target"]).rename(columns={"input_end_time": "timestamp", "prediction": "model",
                                                         "truth": "target"})
    # Previous-day-return baseline: the log return of the window's last day (a feature, known then).
    with h5py.File(h5_path, "r") as f:
        prev = np.empty(len(frame), np.float64)
        for s, group in frame.groupby("session", observed=True):
            feats = f[s]["features"][:, FEATURES.index("log_return")]
            prev[group.index] = feats[group["input_end_row"].to_numpy()]
    frame["previous_return"] = prev
    frame["zero"] = 0.0
    rows = []
    for column in ("model", "previous_return", "zero"):
        ic, t, days = rank_ic(frame, column)
        hits = np.sign(frame[column]) == np.sign(frame["target"])
        rows.append({"predictor": column, "rank_ic": ic, "ic_t_stat": t, "days": days,
                     "direction_acc": float(hits.mean()), "windows": len(frame)})
    return rows, frame


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default=str(ROOT.parent / "shared" / "datasets" / "stocks" / "individual_stocks_5yr"))
    parser.add_argument("--model", default="gru")
    parser.add_argument("--lookback", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default=str(ROOT / "bench_data" / "stocks"))
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    h5_path = work / "sp500_daily.h5"
    t0 = time.perf_counter()
    if not sessions_current(h5_path):
        build_sessions(args.dir, h5_path)
    overrides = [f"data.paths=[{h5_path}]", f"data.lookback={args.lookback}", "data.horizon=1",
                 "data.split.method=timestamps", f"data.split.val_start={SPLIT['val_start']}",
                 f"data.split.test_start={SPLIT['test_start']}", "data.split.inputs_before_border=true",
                 "data.normalize=per_session",
                 "data.block_rows=512", f"model.name={args.model}",
                 f"model.{args.model}.hidden_size=32", f"model.{args.model}.num_layers=1",
                 f"model.{args.model}.dropout=0.1", f"seed={args.seed}",
                 f"training.epochs={args.epochs}", "training.batch_size=256", "training.learning_rate=0.001",
                 "training.early_stopping_patience=3", "training.num_workers=0", "training.amp=off",
                 f"output.runs_dir={work / 'runs'}", "output.tensorboard=false"]
    config = load_config("default", overrides=overrides)
    result = run_module.train(config)
    pred_path = Path(result["run_dir"]) / "test_predictions.h5"
    predict(result["run_dir"], pred_path, "test")
    rows, frame = evaluate_predictions(pred_path, h5_path)
    print(table(rows, ["predictor", "rank_ic", "ic_t_stat", "days", "direction_acc", "windows"]))
    print(f"test period {pd.Timestamp(frame['timestamp'].min()).date()} .. "
          f"{pd.Timestamp(frame['timestamp'].max()).date()}, {frame['session'].nunique()} stocks, "
          f"{time.perf_counter() - t0:.0f} s")
    save_json(args.json, {"rows": rows, "test": result["test"], "config": vars(args), "machine": machine(),
                          "test_first_day": str(pd.Timestamp(frame["timestamp"].min()).date()),
                          "test_last_day": str(pd.Timestamp(frame["timestamp"].max()).date()),
                          "stocks": int(frame["session"].nunique())})


if __name__ == "__main__":
    main()
