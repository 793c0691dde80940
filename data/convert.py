"""Convert CSV / Parquet / pandas-HDF5 tables into session HDF5 (docs/data_format.md).

Inputs are read in chunks (pandas read_csv chunksize, pyarrow iter_batches,
HDFStore.select chunksize), so a file larger than RAM converts in bounded memory;
the only exception is pandas' `fixed` HDF5 format, which cannot be read in parts.
Sessions are one per input file (or per HDF5 key), or one per value of a session
column. The output is written to a temporary file and renamed at the end, so a
failed conversion leaves nothing behind and never replaces an existing file.
"""

import csv
import logging
import os
import re
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from atomic import SpaceGuard, atomic_path, check_output
from data import layout
from data.catalog import HDF5_SUFFIXES, write_index
from data.layout import COMPRESSIONS, SessionWriter, small_metadata_cache
from errors import InputError, first_repeated

log = logging.getLogger("h5series")

CSV_SUFFIXES = (".csv", ".txt", ".csv.gz", ".csv.bz2", ".csv.zst", ".tsv")
PARQUET_SUFFIXES = (".parquet", ".pq")
HDF_SUFFIXES = (".h5", ".hdf5", ".hdf")
TIME_NAMES = ("timestamp", "datetime", "date", "time")
TARGET_TRANSFORMS = ("next_log_return", "next_return", "next_value")
CHUNK_ROWS = 200_000        # rows per chunk read from an input
FLUSH_BYTES = 32 * 2**20    # rows buffered as arrays (session-column mode) before writing out


def input_kind(path):
    name = str(path).lower()
    if name.endswith(CSV_SUFFIXES):
        return "csv"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(HDF_SUFFIXES):
        return "pandas-hdf"
    raise InputError(f"{path}: unknown input type; give a CSV ({', '.join(CSV_SUFFIXES)}), Parquet "
                     f"({', '.join(PARQUET_SUFFIXES)}) or pandas HDF5 ({', '.join(HDF_SUFFIXES)}) file")


def expand_inputs(inputs):
    files = []
    for entry in inputs:
        p = Path(entry)
        if p.is_dir():
            found = sorted(str(f) for f in p.iterdir() if f.is_file() and _known(f))
            if not found:
                raise InputError(f"{entry}: directory holds no CSV, Parquet or HDF5 file to convert")
            files.extend(found)
        elif not p.exists():
            raise InputError(f"{entry}: no such file or directory; check the path")
        else:
            files.append(str(p))
    seen = {}
    for f in files:
        key = os.path.realpath(f)
        if key in seen:
            how = "twice" if seen[key] == f else f"twice (as {seen[key]} and {f})"
            raise InputError(f"{f}: given {how}, as a file and within a folder or by two names; its rows "
                             "would be converted twice: give each input once")
        seen[key] = f
    return files


def _known(path):
    try:
        input_kind(path)
        return True
    except InputError:
        return False


def _check_header(path, sep):
    """A column named twice in a CSV header is an error (pandas would rename the second one 'a.1')."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        header = next(csv.reader(f, delimiter=sep), [])
    repeated = first_repeated(header)
    if repeated is not None:
        raise InputError(f"{path}: the header names column {repeated!r} twice; give each column its own name")


def _chunks(path, kind, hdf_key):
    """Yield (session name or None, DataFrame chunk) from one input file."""
    stem = re.sub(r"\.(csv|txt|tsv|parquet|pq|h5|hdf5|hdf)(\.\w+)?$", "", Path(path).name, flags=re.I)
    if kind == "csv":
        sep = "\t" if str(path).lower().endswith(".tsv") else ","
        try:
            _check_header(path, sep)
            for chunk in pd.read_csv(path, chunksize=CHUNK_ROWS, sep=sep):
                yield stem, chunk
        except pd.errors.EmptyDataError:
            raise InputError(f"{path}: the CSV is empty; give a file with a header row and data") from None
        except (pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]}); check the "
                             "delimiter and quoting") from None
    elif kind == "parquet":
        import pyarrow.parquet as pq
        try:
            # pre_buffer off: on, pyarrow read ahead whole row groups (peak +100 MB on a 5M-row file).
            parquet = pq.ParquetFile(path, pre_buffer=False)
        except Exception as exc:  # pyarrow raises several types for a bad file
            raise InputError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None
        for batch in parquet.iter_batches(batch_size=CHUNK_ROWS):
            yield stem, batch.to_pandas()
    else:
        try:
            store = pd.HDFStore(path, mode="r")
        except Exception as exc:  # PyTables raises HDF5ExtError and others
            raise InputError(f"{path}: not a pandas HDF5 file ({str(exc).splitlines()[0]}); session "
                             "HDF5 files need no conversion") from None
        with store:
            keys = [hdf_key] if hdf_key else store.keys()
            if not keys:
                raise InputError(f"{path}: holds no pandas table (written by DataFrame.to_hdf)")
            for key in keys:
                if key.lstrip("/") not in [k.lstrip("/") for k in store.keys()]:
                    raise InputError(f"{path}: no pandas key {key!r}; available: {', '.join(store.keys())}")
                name = stem if len(keys) == 1 else key.strip("/").replace("/", "_")
                storer = store.get_storer(key)
                if storer.is_table:
                    for chunk in store.select(key, chunksize=CHUNK_ROWS):
                        yield name, _with_index(chunk)
                else:
                    log.warning("%s:%s is in pandas' fixed format, which is read whole; write it with "
                                "format='table' to convert in bounded memory", path, key)
                    yield name, _with_index(store.get(key))


def _with_index(frame):
    """Keep a named or datetime index as a column (pandas HDF5 stores the time there)."""
    if frame.index.name is not None or isinstance(frame.index, pd.DatetimeIndex):
        frame = frame.reset_index()
    return frame


class _Sink:
    """Collects one session's rows, derives a look-ahead target if asked, and appends."""

    def __init__(self, h5file, name, plan, compression):
        self.plan = plan
        self.writer = SessionWriter(h5file, name, plan["features"], plan["target_names"],
                                    with_timestamps=plan["time"] is not None, compression=compression)
        self.pending = None   # last row, held back until the next row gives its target
        self.missing_at_end = 0   # derived targets written so far that are missing at the end (future rows)
        self.rows_in = 0
        self.last_stamp = None

    def add(self, feats, targs, stamps, source, path):
        if stamps is not None and len(stamps):
            self._check_order(stamps, path)
        self.rows_in += len(feats)
        if self.plan["transform"]:
            if self.pending is not None:
                feats = np.vstack([self.pending[0], feats])
                source = np.concatenate([self.pending[1], source])
                stamps = None if stamps is None else np.concatenate([self.pending[2], stamps])
            if len(feats) == 0:
                return
            self.pending = (feats[-1:], source[-1:], None if stamps is None else stamps[-1:])
            targs = _transform(source, self.plan["transform"])[:, None]   # (n - 1, 1)
            infinite = np.flatnonzero(np.isinf(targs[:, 0]))
            if len(infinite):
                # close = 0 makes log(next / 0) = inf (issue 10, case 9): a wrong number, not a missing one.
                i = int(infinite[0])
                raise InputError(
                    f"{path}: session {self.writer.name!r} row {self.writer.rows + i}: "
                    f"{self.plan['target_from']} is {source[i]:g} then {source[i + 1]:g}, so its "
                    f"{self.plan['transform']} is infinite; fix those values (a price of 0 makes no return) "
                    "or drop the rows")
            feats, stamps = feats[:-1], None if stamps is None else stamps[:-1]
            finite = np.flatnonzero(np.isfinite(targs[:, 0]))
            self.missing_at_end = len(targs) - 1 - int(finite[-1]) if len(finite) else self.missing_at_end + len(targs)
        self.writer.append(feats, targs, stamps)

    def close(self):
        """Write the held-back last row with a missing target (its future is not in the data yet:
        `predict --latest` forecasts from it), mark how many rows have targets, let go. Rows at the
        end whose target is missing (future rows: the known-future columns filled, the price not yet)
        wait for their future too; a missing target before them stays an error for nan_policy."""
        if self.plan["transform"]:
            if self.pending is not None:
                feats, _, stamps = self.pending
                self.writer.append(feats, np.full((1, 1), np.nan, np.float32), stamps)
            labelled = max(0, self.writer.rows - 1 - self.missing_at_end)
            self.writer.set_attrs(**{layout.ATTR_LABELLED_ROWS: labelled, layout.ATTR_TARGET_LEAD: 1})
        self.writer.close()
        return self.writer.rows


    def _check_order(self, stamps, path):
        """Splits by time and windows assume rows in time order; refuse otherwise."""
        before = stamps[:-1] if self.last_stamp is None else np.concatenate([[self.last_stamp], stamps[:-1]])
        after = stamps if self.last_stamp is not None else stamps[1:]
        back = np.flatnonzero(after < before)
        if len(back):
            row = self.rows_in + int(back[0]) + (0 if self.last_stamp is not None else 1)
            raise InputError(
                f"{path}: session {self.writer.name!r} row {row} goes back in time "
                f"({np.datetime64(int(after[back[0]]), 'ns')} after {np.datetime64(int(before[back[0]]), 'ns')}); "
                "sort the rows by time (and session) first")
        self.last_stamp = stamps[-1]


def _transform(values, transform):
    """Target of row t from rows t and t+1 of a column (n rows in -> n - 1 targets)."""
    now, nxt = values[:-1].astype(np.float64), values[1:].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        if transform == "next_log_return":
            out = np.log(nxt / now)
        elif transform == "next_return":
            out = nxt / now - 1.0
        else:
            out = nxt
    return out.astype(np.float32)


def _plan_columns(frame, path, features, targets, time_column, session_column, target_from, transform):
    """Decide the feature/target/time columns from the first chunk; errors name the file."""
    columns = [str(c) for c in frame.columns]
    frame.columns = columns

    def need(name, role):
        if name not in columns:
            raise InputError(f"{path}: {role} column {name!r} is missing; available: {', '.join(columns)}")

    if time_column is None:
        time_column = next((c for c in columns if c.lower() in TIME_NAMES), None)
    elif time_column:
        need(time_column, "time")
    time_column = time_column or None
    if session_column:
        need(session_column, "session")
    for t in targets:
        need(t, "target")
    if target_from:
        need(target_from, "--target-from")
    for flag, names in (("--features", features), ("--targets", targets)):
        repeated = first_repeated(names)
        if repeated is not None:
            raise InputError(f"{flag} names {repeated!r} twice; name each column once")
    both = next((c for c in targets if c in features), None)
    if both is not None:
        # A `targets` value is the label of its own row: the same column among the features is the answer
        # in the input. Forecasting a feature's later values needs no stored target.
        raise InputError(f"--targets {both!r} is also in --features: row t's target would be one of row t's "
                         f"inputs; leave it out of --targets (data.target_columns=[{both}] forecasts a feature's "
                         f"next values) or derive one with --target-from {both} --target-transform next_value")
    reserved = {time_column, session_column} | set(targets)
    if features:
        for f in features:
            need(f, "feature")
    else:
        # A column with any number in it is a feature: one stray text cell in a numeric column is an
        # error naming it (_numbers), not a reason to drop the column quietly (issue 10, case 8).
        features = [c for c in columns if c not in reserved and _has_numbers(frame[c])]
        skipped = [c for c in columns if c not in reserved and c not in features]
        if skipped:
            log.info("%s: non-numeric columns left out of the features: %s", path, ", ".join(skipped))
        if not features:
            raise InputError(f"{path}: no numeric column to use as features; columns: {', '.join(columns)}")
    _numbers(frame, list(features) + list(targets) + ([target_from] if target_from else []), path)
    if transform and transform not in TARGET_TRANSFORMS:
        raise InputError(f"--target-transform {transform!r} is unknown; choose {', '.join(TARGET_TRANSFORMS)}")
    if transform and not target_from:
        raise InputError("--target-transform needs --target-from COLUMN (the column it is computed from)")
    if transform and targets:
        raise InputError("give either --targets or --target-from/--target-transform, not both")
    target_names = list(targets) or ([f"{transform}_{target_from}"] if transform else [])
    return {"features": list(features), "targets": list(targets), "target_names": target_names or None,
            "time": time_column, "session": session_column, "target_from": target_from,
            "transform": transform}


def _has_numbers(series):
    if pd.api.types.is_numeric_dtype(series):
        return True
    if pd.api.types.is_bool_dtype(series) or not (pd.api.types.is_object_dtype(series)
                                                   or pd.api.types.is_string_dtype(series)):
        return False
    return bool(pd.to_numeric(series, errors="coerce").notna().any())


def _numbers(frame, columns, path, dtype=np.float32):
    """frame[columns] as a (n, len(columns)) array; a cell that is not a number (NaN and empty cells
    are missing values, allowed) is an error naming the file, row, column and value."""
    out = np.empty((len(frame), len(columns)), dtype)
    for j, c in enumerate(columns):
        series = frame[c]
        if not pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
            numbers = pd.to_numeric(series, errors="coerce")
            bad = numbers.isna() & series.notna()
            if bad.any():
                i = int(np.flatnonzero(bad.to_numpy())[0])
                label = frame.index[i]
                row = f"row {label + 1}" if isinstance(label, (int, np.integer)) else f"row {label!r}"
                raise InputError(f"{path}: {row} (1 = first data row), column {c!r}: {series.iloc[i]!r} is not a "
                                 "number; fix or empty that cell, or leave the column out with --features")
            series = numbers
        out[:, j] = series.to_numpy(dtype, na_value=np.nan)
    return out


# Plausible epoch times (1973 .. 2100) in each unit: ranges a factor 1000 apart, so one column's values
# fall in at most one of them.
EPOCH_UNITS = (("s", 1e8, 4.2e9), ("ms", 1e11, 4.2e12), ("us", 1e14, 4.2e15), ("ns", 1e17, 4.2e18))


def _epoch_unit(values):
    """The unit whose plausible range holds every value of a numeric time column, or None."""
    finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
    if not len(finite):
        return None
    low, high = float(np.min(finite)), float(np.max(finite))
    return next((unit for unit, a, b in EPOCH_UNITS if a <= low and high <= b), None)


def _parse_time(series, path):
    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        # Numbers since 1970: seconds, ms, us or ns told apart by size (epoch seconds were stored as ns:
        # 1.5e9 s became 1.5 s after 1970, and float seconds lost their fraction).
        values = series.to_numpy()
        unit = _epoch_unit(values)
        if unit is None and pd.api.types.is_integer_dtype(series):
            return values.astype(np.int64)          # small integers: a counter, kept as it is (ns)
        if unit is None:
            raise InputError(f"{path}: time column {series.name!r} holds numbers ({values.min():.6g} .. "
                             f"{values.max():.6g}) that are no epoch time in s, ms, us or ns (1973-2100); store "
                             "ISO dates or epoch numbers, or pass --time-column '' for none")
        if values.dtype.kind == "f" and np.isnan(values).any():
            row = int(np.flatnonzero(np.isnan(values))[0])
            raise InputError(f"{path}: time column {series.name!r} is empty in row {row} of a chunk; "
                             "fill it or drop that row")
        if unit == "ns":
            return values.astype(np.int64)
        return pd.to_datetime(values, unit=unit).to_numpy(dtype="datetime64[ns]").astype(np.int64)
    try:
        try:
            stamps = pd.to_datetime(series)
        except ValueError as exc:
            if "Mixed timezones" not in str(exc):
                raise
            # Offsets that change within the file (summer time: +01:00 then +02:00): all taken in UTC,
            # as a single offset is (a naive time among them stays an error: its clock is unknown).
            stamps = pd.to_datetime(series, utc=True)
    except (ValueError, TypeError) as exc:
        raise InputError(f"{path}: time column {series.name!r} has values that are not dates "
                         f"({str(exc).splitlines()[0]}); fix them or pass --time-column ''") from None
    if stamps.isna().any():
        row = int(np.flatnonzero(stamps.isna().to_numpy())[0])
        raise InputError(f"{path}: time column {series.name!r} is empty in row {row} of a chunk; "
                         "fill it or drop that row")
    return stamps.to_numpy(dtype="datetime64[ns]").astype(np.int64)


def convert(inputs, out, *, features=(), targets=(), time_column=None, session_column=None,
            target_from=None, target_transform=None, compression="none", overwrite=False, hdf_key=None):
    """Convert input tables to one session HDF5 file. Returns a summary dict."""
    if compression not in COMPRESSIONS:
        raise InputError(f"--compression {compression!r} is unknown; choose {', '.join(COMPRESSIONS)}")
    files = expand_inputs(inputs)
    out = check_output(out, overwrite, reads=files, suffixes=HDF5_SUFFIXES)
    summary = {"out": str(out), "sessions": {}, "inputs": len(files)}
    plan = None
    with atomic_path(out, replace=overwrite) as tmp:
        # No chunk cache for the output: every open writer (one per session) kept up to 1 MiB a dataset of
        # it, so memory grew with the number of sessions (issue 10, case 25); appends cover whole chunks
        # but at their edges, where HDF5 reads the one partial chunk back.
        with h5py.File(tmp, "w", rdcc_nbytes=0, libver=layout.LIBVER) as h5file:
            small_metadata_cache(h5file)
            sinks = {}
            names = SessionNames(session_column)
            guard = SpaceGuard(out, "converted file")
            for path in files:
                kind = input_kind(path)
                buffers, buffered = {}, 0
                for name, frame in _chunks(path, kind, hdf_key):
                    if plan is None:
                        plan = _plan_columns(frame, path, list(features), list(targets), time_column,
                                             session_column, target_from, target_transform)
                    else:
                        frame.columns = [str(c) for c in frame.columns]
                        missing = [c for c in _used(plan) if c not in frame.columns]
                        if missing:
                            raise InputError(f"{path}: column {missing[0]!r} is missing; every input "
                                             f"needs the columns {', '.join(_used(plan))}")
                    if plan["session"]:
                        # Numbers, not DataFrame parts: a part kept its text columns (~60 bytes a
                        # row for a ticker), and the buffer's memory is what bounds convert's.
                        arrays = _arrays(frame, plan, path)
                        for key, rows in _rows_by_session(frame[plan["session"]], path):
                            buffers.setdefault(names(key, path), []).append(
                                tuple(None if a is None else a[rows] for a in arrays))
                        buffered += sum(a.nbytes for a in arrays if a is not None)
                        if buffered >= FLUSH_BYTES:
                            _flush(buffers, sinks, h5file, plan, compression, path, guard)
                            buffers, buffered = {}, 0
                    else:
                        name = names(name, path)
                        if name in sinks and sinks[name][1] != path:
                            raise InputError(f"{path}: session name {name!r} is also made from "
                                             f"{sinks[name][1]}; rename one of the files")
                        _append(sinks, h5file, name, _arrays(frame, plan, path), plan,
                                compression, path, guard)
                _flush(buffers, sinks, h5file, plan, compression, path, guard)
                if not plan["session"]:
                    # One session per file: done with this file, done with its sessions. Closing them
                    # keeps memory flat in the number of files (issue 10, case 25).
                    for name, (sink, source) in list(sinks.items()):
                        if source == path and sink is not None:
                            summary["sessions"][name] = sink.close()
                            sinks[name] = (None, source)
            for name, (sink, _) in sinks.items():
                if sink is not None:
                    summary["sessions"][name] = sink.close()
            if not sinks:
                raise InputError(f"{', '.join(files)}: no rows to convert")
            h5file.attrs["h5series_converted_from"] = [str(f) for f in files][:1000]
        write_index(tmp)
    summary["rows"] = sum(summary["sessions"].values())
    summary["features"] = plan["features"]
    summary["targets"] = plan["target_names"] or []
    return summary


def _used(plan):
    cols = list(plan["features"]) + list(plan["targets"])
    for key in ("time", "session", "target_from"):
        if plan[key]:
            cols.append(plan[key])
    return list(dict.fromkeys(cols))


RESERVED_NAMES = {layout.INDEX, layout.FEATURES, layout.TARGETS, layout.TIMESTAMPS}


def session_group_name(value):
    """The HDF5 group name of a session value, one-to-one and safe: '%' and '/' percent-encoded (a '/'
    made nested groups, and BRK/B and BRK_B became one session), '.' and '..' encoded (a '.' wrote the
    rows at the file's root, hiding every other session); surrounding spaces dropped."""
    name = str(value).strip().replace("%", "%25").replace("/", "%2F")
    if name in (".", ".."):
        name = name.replace(".", "%2E")
    return name


class SessionNames:
    """Session values -> group names, refusing what cannot be a session and two values on one name."""

    def __init__(self, session_column):
        self.source = f"session column {session_column!r}" if session_column else "file name"
        self.seen = {}

    def __call__(self, value, path):
        name = session_group_name(value)
        if not name:
            raise InputError(f"{path}: {self.source} has an empty session name {value!r}; give every session a name")
        if name in RESERVED_NAMES:
            raise InputError(f"{path}: {self.source} names a session {value!r}, a name the session format reserves "
                             f"({', '.join(sorted(RESERVED_NAMES))}); rename that session")
        first = self.seen.setdefault(name, value)
        if first != value and str(first) != str(value):
            raise InputError(f"{path}: {self.source} values {first!r} and {value!r} are one session name {name!r} "
                             "(spaces around a name are dropped); make them differ")
        return name


def _rows_by_session(column, path):
    """(session value, row positions) of a chunk, sessions in order of first appearance."""
    codes, values = pd.factorize(column, sort=False)
    if (codes < 0).any():
        row = int(np.flatnonzero(codes < 0)[0])
        label = column.index[row]
        where = f"row {label + 1} (1 = first data row)" if isinstance(label, (int, np.integer)) else f"row {label!r}"
        raise InputError(f"{path}: session column {column.name!r} is empty in {where}; fill it or drop "
                         "the row (a row without a session cannot be placed)")
    order = np.argsort(codes, kind="stable")
    ends = np.cumsum(np.bincount(codes, minlength=len(values)))
    return [(value, order[start:end]) for value, start, end in zip(values, np.concatenate([[0], ends[:-1]]), ends)]


def _arrays(frame, plan, path):
    """(features, targets, timestamps, target source) of a chunk as arrays; None where unused."""
    feats = _numbers(frame, plan["features"], path)
    targs = _numbers(frame, plan["targets"], path) if plan["targets"] else None
    stamps = _parse_time(frame[plan["time"]], path) if plan["time"] else None
    source = _numbers(frame, [plan["target_from"]], path, np.float64)[:, 0] if plan["transform"] else None
    return feats, targs, stamps, source


def _flush(buffers, sinks, h5file, plan, compression, path, guard):
    for name, parts in buffers.items():
        arrays = tuple(None if part[0] is None else np.concatenate(part) for part in zip(*parts))
        _append(sinks, h5file, name, arrays, plan, compression, path, guard)
        sinks[name][0].writer.release()     # open handles would grow with the number of sessions


def _append(sinks, h5file, name, arrays, plan, compression, path, guard):
    guard.check()                       # the folder's free space, before each session's rows are written
    if name not in sinks:
        sinks[name] = (_Sink(h5file, name, plan, compression), path)
    sinks[name][0].add(*arrays, path)
