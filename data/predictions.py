"""The prediction file: written by `predict` a batch at a time, read back as a DataFrame.

One entry per predicted window, N in all (docs/data_format.md, "Prediction files"):
  session          (N,)        int32, index into the `session_names` attribute
  input_end_row    (N,)        int64, the window's last input row (the forecast is made after it)
  input_end_time   (N,)        int64 ns, that row's time (only when the sessions have timestamps)
  target_time      (N, H)      int64 ns, the time each horizon step's target describes; NaT
                               (int64 min, as pandas stores it) where that row is not in the data yet
  prediction       (N, H, K)   float32, original units (classify: the predicted class, H = K = 1; with
                               quantiles, the one nearest 0.5)
  quantiles        (N, H, K, Q) float32, original units, the levels in the `quantiles` attribute
  truth            (N, H, K)   float32, original units, NaN where not known yet
  class_probability (N, C)     float32, classify only
Attributes are numbers and JSON lists, never sentences: lookback, horizon, first_target_offset
(rows from a window's first input row to its first target row), target_lead_rows (rows from a
target's own row to the row whose time dates it), target_names, session_names, task.
"""

import json
from pathlib import Path

import h5py
import numpy as np

from errors import InputError

FORMAT_NAME = "h5series-predictions"
FORMAT_VERSION = 1
NAT = np.iinfo(np.int64).min         # pandas' NaT as int64
CHUNK_WINDOWS = 4096


class PredictionWriter:
    """Appends batches of predictions to an open, writable h5py.File."""

    def __init__(self, h5file, *, horizon, n_targets, stamped, n_classes=0, quantiles=()):
        self.h5file = h5file
        self.n = 0
        h, k = horizon, n_targets

        def make(name, shape, dtype):
            return h5file.create_dataset(name, (0,) + shape, maxshape=(None,) + shape, dtype=dtype,
                                         chunks=(CHUNK_WINDOWS,) + shape)
        self.datasets = {"session": make("session", (), np.int32),
                         "input_end_row": make("input_end_row", (), np.int64),
                         "prediction": make("prediction", (h, k), np.float32),
                         "truth": make("truth", (h, k), np.float32)}
        if stamped:
            self.datasets["input_end_time"] = make("input_end_time", (), np.int64)
            self.datasets["target_time"] = make("target_time", (h,), np.int64)
        if n_classes:
            self.datasets["class_probability"] = make("class_probability", (n_classes,), np.float32)
        self.quantiles = list(quantiles)
        if quantiles:
            self.datasets["quantiles"] = make("quantiles", (h, k, len(quantiles)), np.float32)

    def append(self, **columns):
        """One batch: every dataset of the file by name, each with the batch's m windows first."""
        if set(columns) != set(self.datasets):
            raise ValueError(f"expected columns {sorted(self.datasets)}, got {sorted(columns)}")
        m = len(columns["session"])
        for name, values in columns.items():
            ds = self.datasets[name]
            ds.resize(self.n + m, axis=0)
            ds[self.n:self.n + m] = values
        self.n += m

    def finish(self, *, session_names, target_names, window, target_lead, task, **extra):
        """The attributes that say what each column refers to (numbers, JSON lists)."""
        attrs = self.h5file.attrs
        attrs["h5series_format"] = FORMAT_NAME
        attrs["h5series_format_version"] = FORMAT_VERSION
        attrs["session_names"] = json.dumps(list(session_names))
        attrs["target_names"] = json.dumps(list(target_names))
        attrs["lookback"] = window.lookback
        attrs["horizon"] = window.horizon
        attrs["first_target_offset"] = window.first_target
        attrs["target_lead_rows"] = int(target_lead)
        attrs["task"] = task
        attrs["units"] = "original"
        attrs["quantiles"] = json.dumps(self.quantiles)
        for key, value in extra.items():
            attrs[key] = value


def _open(path):
    if not Path(path).is_file():
        what = "is a folder" if Path(path).is_dir() else "no such file"
        raise InputError(f"{path}: {what}; give a prediction file written by `python main.py predict`")
    try:
        f = h5py.File(path, "r")
    except (OSError, FileNotFoundError) as exc:
        raise InputError(f"{path}: cannot be opened as a prediction file ({str(exc).splitlines()[0]}); give a "
                         "file written by `python main.py predict`") from None
    if f.attrs.get("h5series_format") != FORMAT_NAME:
        f.close()
        raise InputError(f"{path}: not a prediction file of this version (no h5series_format="
                         f"{FORMAT_NAME!r}); write it again with `python main.py predict`")
    return f


def read_attrs(path):
    """The prediction file's attributes as plain Python values (JSON lists decoded)."""
    with _open(path) as f:
        out = {}
        for key, value in f.attrs.items():
            if key in ("session_names", "target_names", "quantiles"):
                value = json.loads(value)
            elif isinstance(value, np.generic):
                value = value.item()
            out[key] = value
        return out


def read_predictions(path, sessions=None, windows=None):
    """A prediction file as a long DataFrame, one row per (window, horizon step, target):

        session, input_end_row, input_end_time, horizon_step (1 = the first step), target_time,
        target, prediction, truth   (times as datetime64[ns], NaT where not known yet)
        and with quantile forecasts one column per level, named q0.1, q0.5, ...

    `sessions`: names to keep (others are not read into the frame); `windows`: a slice of
    window numbers, to read a file larger than memory in parts."""
    import pandas as pd          # here, not at the top: backtest reads prediction files without pandas (~70 MB)
    with _open(path) as f:
        names = json.loads(f.attrs["session_names"])
        targets = json.loads(f.attrs["target_names"])
        levels = json.loads(f.attrs.get("quantiles", "[]"))
        sel = windows if windows is not None else slice(None)
        session = f["session"][sel]
        keep = np.ones(len(session), bool)
        if sessions is not None:
            unknown = [s for s in sessions if s not in names]
            if unknown:
                raise InputError(f"{path}: no session {unknown[0]!r} in the predictions (e.g. "
                                 f"{', '.join(names[:3])})")
            keep = np.isin(session, [names.index(s) for s in sessions])
        cols = {name: f[name][sel][keep] for name in f if name != "class_probability"}
    n, h, k = cols["prediction"].shape
    repeat = h * k
    frame = {
        "session": pd.Categorical.from_codes(np.repeat(cols["session"], repeat), categories=names),
        "input_end_row": np.repeat(cols["input_end_row"], repeat),
    }
    if "input_end_time" in cols:
        frame["input_end_time"] = np.repeat(cols["input_end_time"], repeat).view("datetime64[ns]")
    frame["horizon_step"] = np.tile(np.repeat(np.arange(1, h + 1), k), n)
    if "target_time" in cols:
        frame["target_time"] = np.repeat(cols["target_time"].reshape(-1), k).view("datetime64[ns]")
    frame["target"] = pd.Categorical.from_codes(np.tile(np.arange(k), n * h), categories=targets)
    frame["prediction"] = cols["prediction"].reshape(-1)
    frame["truth"] = cols["truth"].reshape(-1)
    for j, level in enumerate(levels):
        frame[f"q{level:g}"] = cols["quantiles"][..., j].reshape(-1)
    return pd.DataFrame(frame)


def write_predictions_csv(path, csv_path, windows_per_piece=100_000):
    """The prediction file at `path` as a CSV of read_predictions' long table (one row per window,
    step and target; times as ISO text), written a piece of windows at a time."""
    with _open(path) as f:
        n = len(f["session"])
    with open(csv_path, "w", newline="") as out:
        for a in range(0, max(n, 1), windows_per_piece):
            frame = read_predictions(path, windows=slice(a, a + windows_per_piece))
            frame.to_csv(out, index=False, header=a == 0)      # (dates as 2017-11-06, times as 2017-11-06 09:30:00)
