"""Small markets for the backtest tests: price panels and signals written in the formats users give."""

import json
import types

import h5py
import numpy as np
import pandas as pd

from data.catalog import write_index
from data.layout import write_session
from data.predictions import PredictionWriter


def random_prices(n_dates=120, n_assets=12, seed=0, start="2020-01-01", freq="B"):
    """(dates x assets) close prices, a random walk per asset."""
    rng = np.random.default_rng(seed)
    dates = pd.date_range(start, periods=n_dates, freq=freq)
    steps = rng.normal(0.0003, 0.015, (n_dates, n_assets))
    close = 50 * np.exp(np.cumsum(steps, axis=0))
    return pd.DataFrame(close, index=dates, columns=[f"A{i:02d}" for i in range(n_assets)])


def write_prices(path, prices, *, extra_columns=False):
    """One session per column; a NaN price is a missing bar (the row is not stored)."""
    with h5py.File(path, "w") as f:
        for name in prices.columns:
            col = prices[name].dropna()
            feats = col.to_numpy(np.float64)[:, None]
            names = ["close"]
            if extra_columns:
                feats = np.column_stack([feats, np.arange(len(col), dtype=np.float64)])
                names = ["close", "row"]
            write_session(f, name, feats, timestamps=col.index.to_numpy().astype("datetime64[ns]").astype(np.int64),
                          feature_names=names)
    write_index(path)
    return path


def write_predictions(path, signal, *, horizon=1, stamped=True, steps=None):
    """A prediction file (the `predict` format) whose step-1 prediction is `signal` (dates x sessions);
    step h > 1 holds `steps[h]` frames when given, else signal * h. NaN entries are still stored."""
    names = list(signal.columns)
    with h5py.File(path, "w") as f:
        writer = PredictionWriter(f, horizon=horizon, n_targets=1, stamped=stamped)
        for i, name in enumerate(names):
            col = signal[name]
            n = len(col)
            pred = np.stack([(steps[h][name] if steps and h in steps else col * h).to_numpy(np.float32)
                             for h in range(1, horizon + 1)], axis=1)[:, :, None]
            columns = {"session": np.full(n, i, np.int32), "input_end_row": np.arange(n, dtype=np.int64),
                       "prediction": pred, "truth": np.full((n, horizon, 1), np.nan, np.float32)}
            if stamped:
                stamps = col.index.to_numpy().astype("datetime64[ns]").astype(np.int64)
                columns["input_end_time"] = stamps
                columns["target_time"] = np.repeat(stamps[:, None], horizon, axis=1)
            writer.append(**columns)
        window = types.SimpleNamespace(lookback=5, horizon=horizon, first_target=5)
        writer.finish(session_names=names, target_names=["next_log_return"], window=window, target_lead=1,
                      task="forecast")
    return path


def read_periods(out):
    """periods.h5 of a backtest report as a DataFrame indexed by decision time."""
    with h5py.File(f"{out}/periods.h5", "r") as f:
        frame = pd.DataFrame({k: f[k][()] for k in f.keys()})
    frame["time"] = frame["time"].astype("datetime64[ns]")
    frame["end_time"] = frame["end_time"].astype("datetime64[ns]")
    return frame.set_index("time")


def report(out):
    with open(f"{out}/report.json") as f:
        return json.load(f)
