"""What a backtest reads: prices from session files, a signal from a prediction file or from the
signal files analysis/backtest/signals.py writes; each checked here, before any work, with one-line errors."""

import json

import numpy as np

from analysis.backtest.panel import ColumnSource, PriceFromLogReturns
from data.catalog import open_catalog
from data.session import ChunkCache, HandlePool
from data.predictions import _open as open_prediction_file
from errors import InputError

PRICE_KINDS = ("price", "log_return")
# The walk reads every session in each time block, so all stay open (an LRU smaller than the
# sessions would reopen each one every block); with no chunk cache, 500 open sessions cost a few
# MB, and HDF5 reads a block's rows of an uncompressed chunk directly.
CACHE = ChunkCache(nbytes=0)


def backtest_pool():
    return HandlePool(CACHE, max_open=1 << 30)


def open_prices(paths, column, kind="price"):
    """(session names in catalog order, {name: source}) of the price column of every session."""
    if kind not in PRICE_KINDS:
        raise ValueError(f"price kind {kind!r}")
    catalog = open_catalog(paths, pool=backtest_pool())
    first = catalog.sessions[0]
    columns = list(catalog.feature_names) + list(catalog.target_names)
    if column not in columns:
        flag = "--price-column" if kind == "price" else "--return-column"
        raise InputError(f"{first.path}: {flag} {column!r} is not a column of the price file; it has {columns}")
    unstamped = [s.name for s in catalog.sessions if not s.has_timestamps]
    if unstamped:
        raise InputError(f"{first.path}: session {unstamped[0]!r} has no timestamps; a backtest aligns sessions by "
                         "time: convert the data with its time column (--time-column)")
    make = ColumnSource if kind == "price" else PriceFromLogReturns
    return [s.name for s in catalog.sessions], {s.name: make(s, column) for s in catalog.sessions}


class PredictionSource:
    """One session's windows in a prediction file: (input_end_time, prediction[:, step - 1, target])."""

    def __init__(self, file, name, start, stop, step, target, datasets):
        self.file, self.name = file, name
        self.times, self.predictions = datasets          # shared by all sessions: an open costs ~0.1 ms
        self.start, self.n_rows = start, stop - start
        self.step, self.target = step, target
        self.where = f"{file.filename}: session {name!r}"

    def read(self, start, stop):
        a, b = self.start + start, self.start + stop
        times = self.times[a:b]
        values = self.predictions[a:b, self.step - 1, self.target]
        return times, values.astype(np.float64)


class Predictions:
    """A prediction file opened for a backtest: its sessions' runs of windows, checked."""

    def __init__(self, path, step=1, target=None, piece=1 << 20):
        self.path = str(path)
        self.file = open_prediction_file(path)
        try:
            self._check(step, target)
            self.runs, self.nan, self.total, self.span = self._scan(piece)
        except BaseException:
            self.close()                         # a refused file is not left open
            raise

    def _check(self, step, target):
        path, attrs = self.path, self.file.attrs
        if "input_end_time" not in self.file:
            raise InputError(f"{path}: the predictions have no times (input_end_time); a backtest aligns them "
                             "with prices by time: predict from data with timestamps")
        self.horizon = int(attrs["horizon"])
        if not 1 <= step <= self.horizon:
            raise InputError(f"--step {step}: the predictions forecast steps 1 .. {self.horizon}; choose one of them")
        targets = json.loads(attrs["target_names"])
        if attrs.get("task") == "classify":
            raise InputError(f"{path}: holds class predictions; a backtest ranks numbers: train a regression run")
        if attrs.get("scope") == "similar" and not bool(attrs.get("past_only", True)):
            raise InputError(f"{path}: an analog forecast from all-times neighbours (windows after each query: a "
                             "look-ahead); write it again past-only (`similar query` without --all-times)")
        if target is None and len(targets) > 1:
            raise InputError(f"{path}: predicts {targets}; choose the signal with --target NAME")
        if target is not None and target not in targets:
            raise InputError(f"--target {target!r} is not predicted in {path}; it predicts {targets}")
        self.step, self.target = step, targets.index(target) if target is not None else 0
        self.target_name = targets[self.target]
        self.session_names = json.loads(attrs["session_names"])
        self.scope = str(attrs.get("scope", ""))     # test, val, train, new (predict --data), latest, similar
        # An analog forecast from an IVF-PQ index whose training saw windows after some queries.
        self.point_in_time = bool(attrs.get("point_in_time", True))

    def _scan(self, piece):
        """One pass over the windows, a piece at a time: each session's run of windows ({name: (start, stop)};
        predict writes a session's windows together, in time order), the NaN count of the chosen step and
        target, the number of windows, and the (first, last) input_end_time: where the walk starts and ends."""
        ids, times, preds = self.file["session"], self.file["input_end_time"], self.file["prediction"]
        runs, order, nan, first, last = {}, [], 0, None, None
        for a in range(0, len(ids), piece):
            chunk = ids[a:a + piece]
            stamps = times[a:a + piece]
            nan += int(np.isnan(preds[a:a + piece, self.step - 1, self.target]).sum())
            first = stamps.min() if first is None else min(first, stamps.min())
            last = stamps.max() if last is None else max(last, stamps.max())
            change = np.flatnonzero(np.diff(chunk)) + 1
            starts = np.concatenate([[0], change]) + a
            stops = np.concatenate([change, [len(chunk)]]) + a
            for s, e, sid in zip(starts, stops, chunk[starts - a]):
                if order and order[-1] == sid:
                    runs[sid] = (runs[sid][0], int(e))
                    continue
                if sid in runs:
                    raise InputError(f"{self.path}: the windows of session {self.session_names[sid]!r} are not "
                                     "stored together; write the file with `python main.py predict`")
                runs[sid] = (int(s), int(e))
                order.append(sid)
        span = None if first is None else (int(first), int(last))
        return {self.session_names[sid]: run for sid, run in runs.items()}, nan, len(ids), span

    def sources(self):
        datasets = self.file["input_end_time"], self.file["prediction"]
        return {name: PredictionSource(self.file, name, a, b, self.step, self.target, datasets)
                for name, (a, b) in self.runs.items()}

    def check_sessions(self, price_names, price_path):
        missing = [n for n in self.runs if n not in set(price_names)]
        if missing:
            raise InputError(f"{self.path}: {len(missing)} predicted session(s) are not in the price file "
                             f"{price_path}: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}; give "
                             "the price file of the same data (session names must match)")

    def close(self):
        try:
            self.file.close()
        except (AttributeError, ValueError):
            pass

