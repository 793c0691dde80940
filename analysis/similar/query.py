"""`similar query`: the nearest past windows of one window, of a CSV of (session, time) rows, or of
every window of a split, searched in batches, with what followed each neighbour.

Outputs (each written to a temporary file and renamed when complete):
  --out FILE.h5   per query: its session, end row / time, what followed it (NaN: not known yet), the
                  k neighbours (session, end row, end time, distance, what followed) and their mean,
                  median and share positive
  --out FILE.csv  the same, one row per (query, neighbour)
  --forecast P.h5 the neighbours' mean as a prediction file (data/predictions.py): `backtest
                  --predictions P.h5` and the rank-IC report take it as is
  --plot P.png    the first queries and their neighbours, z-normalized, with what followed
Queries are processed in (session, time) order: prediction files keep a session's windows together.
FAISS reads the index file in a thread (SimilarIndex) while the run opens the data, reads the first
batch of query windows, counts the windows each may use and makes the first read of each session's
outcome column; the search starts when the index is in memory (`ready_s` of the timings).
"""

import contextlib
import csv
import dataclasses
import itertools
import json
import time
import types
from pathlib import Path

import h5py
import numpy as np

from analysis.similar.config import QueryConfig  # noqa: F401  (run_query's argument; re-exported)
from analysis.similar.index import FILES, SimilarIndex, index_window, point_in_time_from
from analysis.similar.outcomes import Outcomes
from analysis.similar.search import Searcher, times_at
from atomic import atomic_path, check_not_input, check_output, check_outputs_distinct
from data.catalog import open_catalog, time_text
from data.predictions import NAT, PredictionWriter
from data.session import ChunkCache, HandlePool
from data.splits import SPLITS, SplitSpec, to_ns
from errors import InputError
import progress

RESULTS_FORMAT = "h5series-similar-results"
PLOT_QUERIES = 4


def _check(cfg):
    given = [name for name, on in (("--session/--time", cfg.session is not None or cfg.time is not None),
                                   ("--queries", cfg.queries), ("--split", cfg.split)) if on]
    if len(given) != 1:
        raise InputError("give the queries one way: --session NAME --time T (one window), --queries FILE.csv "
                         "(columns session,time) or --split test" + (f" (got {' and '.join(given)})" if given else ""))
    if given == ["--session/--time"] and (cfg.session is None or cfg.time is None):
        raise InputError("--session and --time go together: the window of session NAME that ends at time T")
    if cfg.split is not None and cfg.split not in SPLITS:
        raise InputError(f"--split {cfg.split!r}: choose {', '.join(SPLITS)}")
    if bool(cfg.price_column) == bool(cfg.return_column):
        raise InputError("give what followed a window: --price-column NAME (a price) or --return-column NAME "
                         "(log returns)")
    if cfg.k < 1:
        raise InputError(f"--k {cfg.k}: give the number of neighbours (1 or more)")
    if cfg.ahead < 1:
        raise InputError(f"--ahead {cfg.ahead}: give the rows after a window to measure (1 or more)")
    if cfg.queries is not None and not Path(cfg.queries).is_file():
        what = "is a folder" if Path(cfg.queries).is_dir() else "no such file"
        raise InputError(f"{cfg.queries}: {what}; --queries takes a CSV with columns session,time")
    if cfg.out is not None and Path(cfg.out).suffix.lower() not in (".h5", ".hdf5", ".csv"):
        raise InputError(f"--out {cfg.out}: name a .h5 or a .csv file")
    if cfg.forecast is not None and not cfg.past_only:
        raise InputError("--forecast with --all-times would forecast from windows after the query (a look-ahead "
                         "a backtest would reward); leave out --all-times, or study all-times neighbours with --out")
    if cfg.out is None and cfg.forecast is None and cfg.session is None:
        raise InputError("many queries need an output: --out FILE.h5|.csv and/or --forecast PRED.h5")
    outputs = {"--out": cfg.out, "--forecast": cfg.forecast, "--plot": cfg.plot}
    check_outputs_distinct(outputs)
    reads = [Path(cfg.index) / name for name in FILES] + ([cfg.queries] if cfg.queries else [])
    for path in outputs.values():
        if path is not None:
            check_output(path, cfg.overwrite, reads=reads)
    if cfg.plot is not None and Path(cfg.plot).suffix.lower() != ".png":
        raise InputError(f"--plot {cfg.plot}: the picture is a PNG; name a .png file")
    if cfg.forecast is not None and Path(cfg.forecast).suffix.lower() not in (".h5", ".hdf5"):
        raise InputError(f"--forecast {cfg.forecast}: the forecast is a prediction file (HDF5); name a .h5 file")


def windows_from_settings(settings, similar_cfg):
    """The windows an index was built from, for queries: every session of its data open in one pool with
    no chunk cache (queries jump between sessions: through the data's LRU of 64 open sessions, 600
    queries over 500 stocks reopened ~0.25 ms per dataset per read)."""
    spec = SplitSpec(**settings["split_spec"])
    if settings["vectors"] == "model":
        from analysis.similar.source import run_windows
        windows = run_windows(settings["run"], similar_cfg, data=settings["data"] if settings["other_data"] else None,
                              stride=settings["stride"], checkpoint=settings["checkpoint"])
        windows.split_spec = spec
        windows.catalog.read_through(_query_pool())
    else:
        windows = _RawWindows(settings, similar_cfg, spec)
    if [s.name for s in windows.catalog.sessions] != settings["sessions"]:
        raise InputError(f"{settings['data'][0]}: its sessions are not the ones indexed; build the index again")
    return windows


def _query_pool():
    """Every session open at once (no LRU eviction), no chunk cache: a few small reads per session."""
    return HandlePool(ChunkCache(nbytes=0), max_open=1 << 30)


class _RawWindows:
    """The raw windows of an index's data for queries, without torch until a window must be read: the
    catalog, window shape, columns and vector size come from the index's settings; reading windows (a
    query the index does not hold, `--split`) builds the block loader's WindowSet (similar_source,
    torch: ~2.7 s and ~180 MB to import) on first use, on these same sessions."""

    def __init__(self, settings, similar_cfg, spec):
        self.settings, self.similar_cfg, self.split_spec = settings, similar_cfg, spec
        self.catalog = open_catalog(settings["data"], pool=_query_pool())
        self.window = index_window(settings["lookback"], settings["stride"])
        self.columns = list(settings["columns"])
        self.vectors = types.SimpleNamespace(dim=int(settings["dim"]))
        self._loader_windows = None

    def _read(self):
        if self._loader_windows is None:
            from analysis.similar.source import raw_windows
            from config import DataConfig
            s = self.settings
            data_cfg = DataConfig(paths=s["data"], lookback=s["lookback"], stride=s["stride"], feature_columns=s["columns"])
            windows = raw_windows(data_cfg, dataclasses.replace(self.similar_cfg, segments=s["segments"]), s["columns"],
                                  catalog=self.catalog)       # (the query's sessions, read through its pool)
            windows.split_spec = self.split_spec
            self._loader_windows = windows
        return self._loader_windows

    @property
    def skipped(self):
        return self._loader_windows.skipped if self._loader_windows is not None else 0

    def ranges(self, split=None):
        return self._read().ranges(split)

    def plan(self, ranges, block_rows=None):
        return self._read().plan(ranges, block_rows)

    def batches(self, table):
        return self._read().batches(table)

    def end_times(self, session, end_row):
        return self._read().end_times(session, end_row)


def _resolve(windows, index, pairs, where, bad=None):
    """(session index, end row, end time, window id: -1 when not indexed, position in `pairs`) arrays of
    (session name, time text) pairs, sorted by session and row; each checked: a known session, a time
    inside its data, a full window before it. A pair that fails is one line (InputError), or, with a list
    `bad`, appended to it as (position, reason) and left out. The index's own window ends settle most
    times (_in_index); the rest are looked up in the data, a session's together (one coarse read, then
    each piece once)."""
    names = {s.name: i for i, s in enumerate(windows.catalog.sessions)}
    L = windows.window.lookback
    session, wanted = np.zeros(len(pairs), np.int32), np.zeros(len(pairs), np.int64)
    keep = np.ones(len(pairs), bool)

    def refuse(i, reason):
        if bad is None:
            raise InputError(f"{where}: {reason}")
        bad.append((i, reason))
        keep[i] = False

    for i, (name, text) in enumerate(pairs):
        if name not in names:
            some = ", ".join(list(names)[:3])
            refuse(i, f"session {name!r} is not in the index ({len(names)} sessions, e.g. {some}); check the name")
            continue
        try:
            wanted[i] = to_ns(text)
        except (InputError, ValueError):
            refuse(i, f"time {text!r} of session {name!r} is not a time; write e.g. 2017-06-01 or 2017-06-01T15:30")
            continue
        session[i] = names[name]
    position = np.flatnonzero(keep)
    session, wanted = session[keep], wanted[keep]
    row, row_time, ids = _in_index(index, session, wanted)
    for s_index in np.unique(session[row < 0]):
        s = windows.catalog.sessions[int(s_index)]
        mine = np.flatnonzero((session == s_index) & (row < 0))
        row[mine] = s.timestamp_rows(wanted[mine] + 1) - 1               # the last bar at or before each time
        found = mine[row[mine] >= 0]
        unique, back = np.unique(row[found], return_inverse=True)
        row_time[found] = s.read_points("timestamps", unique)[back]
        ids[mine] = index.window_ids(int(s_index), row[mine])
    fine = np.ones(len(session), bool)
    for i, p in enumerate(position):
        name, text = pairs[p]
        s = windows.catalog.sessions[session[i]]
        if row[i] == s.n_rows - 1 and row_time[i] < wanted[i]:
            refuse(p, f"time {text} is after session {name!r}'s last bar ({time_text(int(row_time[i]))}); "
                   "its newest window ends there")
            fine[i] = False
        elif row[i] < L - 1:
            first = int(s.read_timestamps(L - 1, L)[0]) if s.n_rows >= L else None
            refuse(p, f"time {text} is before the first full window of session {name!r} "
                   + (f"(its first {L}-row window ends at {time_text(first)})" if first is not None
                      else f"(it has {s.n_rows} rows, fewer than the lookback {L})"))
            fine[i] = False
    session, row, row_time, ids, position = (a[fine] for a in (session, row, row_time, ids, position))
    order = np.lexsort((row, session))
    return session[order], row[order], row_time[order], ids[order], position[order]


def _in_index(index, session, wanted):
    """(end row, end time, window id) of each query whose time the index alone settles, -1 elsewhere:
    the last indexed window of its session ending at or before the time, when its end row is surely the
    session's last bar at or before it: it ends exactly then, or the next indexed window ends one row
    later (no bar in between). Other times (between strided windows, past the last indexed window,
    before the first) are looked up in the data."""
    row, row_time, ids = (np.full(len(session), -1, np.int64) for _ in range(3))
    for s in np.unique(session):
        a, b = int(index.offsets[s]), int(index.offsets[s + 1])
        if a == b:
            continue
        times, rows = index.end_time[a:b], index.end_row[a:b]
        mine = np.flatnonzero(session == s)
        j = np.searchsorted(times, wanted[mine], side="right") - 1            # last window ending at or before
        jj = np.clip(j, 0, b - a - 1)
        nxt = np.minimum(jj + 1, b - a - 1)
        sure = (j >= 0) & ((times[jj] == wanted[mine]) | ((jj + 1 < b - a) & (rows[nxt] == rows[jj] + 1)))
        row[mine[sure]], row_time[mine[sure]], ids[mine[sure]] = rows[jj[sure]], times[jj[sure]], a + jj[sure]
    return row, row_time, ids


def _read_csv(path):
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:        # (a spreadsheet's byte-order mark)
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"session", "time"} <= set(reader.fieldnames):
                raise InputError(f"{path}: needs a header with columns session,time (got {reader.fieldnames}); "
                                 "one query per row")
            pairs = [(row["session"], row["time"]) for row in reader]
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: is not UTF-8 text (byte {exc.start}); save the CSV as UTF-8") from None
    if not pairs:
        raise InputError(f"{path}: holds no query rows; one (session, time) per row")
    return pairs


def _query_batches(windows, index, cfg, bad=None):
    """(session, end row, end time, vectors) of the queries, in batches. A query window the index holds
    takes its stored vector (the same vectorizer on the same rows); others are read and vectorized.
    Bad rows of a query file (without --strict) are appended to `bad` as (row position, reason)."""
    bad = [] if bad is None else bad
    L = windows.window.lookback
    if cfg.split is not None:
        pending = []
        for session, end_row, vectors in windows.batches(windows.plan(windows.ranges(cfg.split))):
            pending.append((session, end_row, windows.end_times(session, end_row), vectors))
            if sum(len(p[0]) for p in pending) >= cfg.batch:
                yield tuple(np.concatenate(c) for c in zip(*pending))
                pending = []
        if pending:
            yield tuple(np.concatenate(c) for c in zip(*pending))
        return
    pairs = [(cfg.session, cfg.time)] if cfg.queries is None else _read_csv(cfg.queries)
    # A query file's bad rows are listed and left out (all of them refused with --strict).
    lenient = cfg.queries is not None and not cfg.strict
    session, end_row, end_time, ids, position = _resolve(windows, index, pairs, cfg.queries or "--time",
                                                         bad if lenient else None)
    if lenient and not len(session):
        (p, reason), more = bad[0], len(bad) - 1
        raise InputError(f"{cfg.queries}: no query row can be answered; row {p + 1}: {reason}"
                         + (f" (and {more} more)" if more else ""))
    for a in range(0, len(session), cfg.batch):
        part = slice(a, a + cfg.batch)
        vectors = np.empty((len(session[part]), windows.vectors.dim), np.float32)
        stored = ids[part] >= 0
        vectors[stored] = index.vectors.take(ids[part][stored])
        read = np.flatnonzero(~stored)
        if len(read):
            table = np.stack([session[part][read], end_row[part][read] - (L - 1), np.ones(len(read), np.int64)], 1)
            got = {}
            for s, e, v in windows.batches(table):
                got.update(zip(zip(s.tolist(), e.tolist()), v))
            ok = np.ones(len(vectors), bool)            # the batch's queries whose window is finite
            for j in read:
                key = (int(session[part][j]), int(end_row[part][j]))
                if key in got:
                    vectors[j] = got[key]
                    continue
                name = windows.catalog.sessions[key[0]].name
                if not lenient:
                    raise InputError(f"{cfg.queries or '--time'}: a query window holds NaN/Inf (session {name!r}, "
                                     f"ending at row {key[1]}); choose other times")
                bad.append((int(position[part][j]), f"the window of session {name!r} ending at row {key[1]} holds NaN/Inf"))
                ok[j] = False
            if not ok.all():
                yield session[part][ok], end_row[part][ok], end_time[part][ok], vectors[ok]
                continue
        yield session[part], end_row[part], end_time[part], vectors


def run_query(cfg, similar_cfg):
    """Run the queries `cfg` describes; returns a summary dict."""
    _check(cfg)
    t_start = time.perf_counter()
    index = SimilarIndex(cfg.index)
    try:
        s = index.settings
        _check_against_index(cfg, index)
        windows, outcomes, searcher = _open_search(cfg, index, similar_cfg)
        opened_s = time.perf_counter() - t_start
        # While FAISS reads its file (in its thread): the first batch of queries (resolved: their errors come
        # before any output is opened), the windows each may use, and the first reads of what followed.
        bad = []
        batches = _query_batches(windows, index, cfg, bad)
        first = next(batches, None)
        if first is None:
            raise InputError(f"split {cfg.split!r} of the index's data has no window to query")
        vectors_s = time.perf_counter() - t_start - opened_s
        first_past = searcher.past_counts(first[2]) if cfg.past_only else None
        outcomes.open_while(lambda: not index.loaded)
        index.index                                        # (its read's errors, too, before any output)
        ready_s = time.perf_counter() - t_start
        with contextlib.ExitStack() as stack:
            sinks = _open_sinks(stack, cfg, index, windows)
            timings = {"open_s": opened_s, "index_read_s": index.read_seconds, "ready_s": ready_s,
                       "vectors_s": vectors_s, "search_s": 0.0}
            n_queries, found, short, shown = 0, 0, 0, []
            pit_from = point_in_time_from(s) if cfg.past_only else None
            not_pit = 0                         # queries ending before the index's point-in-time scope
            bar = progress.bar(desc="similar query", unit="query", enabled=cfg.progress)
            t0 = time.perf_counter()
            for i, (q_session, q_row, q_time, q_vectors) in enumerate(itertools.chain([first], batches)):
                timings["vectors_s"] += time.perf_counter() - t0
                t1 = time.perf_counter()
                got = searcher.search(q_vectors, q_session, q_row, q_time, past=first_past if i == 0 else None)
                t2 = time.perf_counter()
                # when what followed a query was known: the forecast file's target time (only it needs it)
                truth_at = times_at(index, outcomes, q_session, q_row + cfg.ahead) if cfg.forecast else \
                    np.full(len(q_row), NAT, np.int64)
                searcher.seconds["outcomes_s"] += time.perf_counter() - t2
                timings["search_s"] += time.perf_counter() - t1
                not_pit += len(q_time) if pit_from is None else int((q_time < pit_from).sum())
                batch = _Batch(q_session, q_row, q_time, got.query_returns, truth_at, got, index)
                for sink in sinks:
                    sink.append(batch)
                if len(shown) < PLOT_QUERIES:
                    shown.extend(batch.rows(PLOT_QUERIES - len(shown)))
                n_queries += len(q_session)
                found += int(got.found.sum())
                short += int((got.found < cfg.k).sum())
                bar.update(len(q_session))
                t0 = time.perf_counter()
            bar.close()
            for sink in sinks:
                sink.finish(point_in_time=not_pit == 0)
            if cfg.plot:
                from analysis.similar.plot import draw
                with atomic_path(cfg.plot, replace=cfg.overwrite) as tmp:
                    draw(shown, windows, cfg, tmp)
        timings.update(searcher.seconds)
        timings["total_s"] = time.perf_counter() - t_start
        summary = {"queries": n_queries, "k": cfg.k, "neighbours_found": found,
                   "queries_short_of_k": short,
                   "kind": s["kind"], "windows": index.n, "past_only": cfg.past_only, "random": cfg.random,
                   "ahead": cfg.ahead, "point_in_time": not_pit == 0, "queries_not_point_in_time": not_pit,
                   "point_in_time_note": _pit_note(s, cfg, not_pit, n_queries),
                   "bad_queries": len(bad),
                   "bad_examples": [f"row {p + 1}: {reason}" for p, reason in sorted(bad)[:5]],
                   "timings": {k: round(v, 4) for k, v in timings.items()},
                   "outputs": [p for p in (cfg.out, cfg.forecast, cfg.plot) if p], "first": shown[:1]}
        return summary
    finally:
        index.close()


def _check_against_index(cfg, index):
    """The query's settings against the index's, before any data is read: outputs never on the data it
    was built from, its columns and lookback, k within its size, nprobe within its clusters."""
    s = index.settings
    for path in (cfg.out, cfg.forecast, cfg.plot):
        if path is not None:
            check_not_input(path, s["data"])             # the data the index was built from
    if cfg.columns and list(cfg.columns) != list(s["columns"]):
        raise InputError(f"--columns {list(cfg.columns)}: index {cfg.index} was built on {s['columns']}; query "
                         "with its columns or build another index")
    if cfg.lookback is not None and cfg.lookback != s["lookback"]:
        raise InputError(f"--lookback {cfg.lookback}: index {cfg.index} holds {s['lookback']}-row windows; query "
                         "with that lookback or build another index")
    if cfg.k > index.n:
        raise InputError(f"--k {cfg.k}: the index holds {index.n} windows; ask for fewer neighbours")
    if cfg.nprobe and s["kind"] != "ivfpq":
        raise InputError(f"--nprobe {cfg.nprobe}: index {cfg.index} is exact ({s['kind']}), it searches every "
                         "window; leave out --nprobe")
    if cfg.nprobe and not 1 <= cfg.nprobe <= s["nlist"]:
        raise InputError(f"--nprobe {cfg.nprobe}: index {cfg.index} has {s['nlist']} clusters; give 1 .. "
                         f"{s['nlist']} (0: the index's {s['nprobe']})")


def _open_search(cfg, index, similar_cfg):
    """(windows, outcomes, searcher): the index's data opened, what followed a window, and the search."""
    windows = windows_from_settings(index.settings, similar_cfg)
    longest = max(session.n_rows for session in windows.catalog.sessions)
    if cfg.ahead >= longest:
        raise InputError(f"--ahead {cfg.ahead}: no session has a row that far after a window (the longest has "
                         f"{longest:,} rows); give fewer rows ahead")
    kind = "price" if cfg.price_column else "log_return"
    outcomes = Outcomes(windows.catalog, cfg.price_column or cfg.return_column, kind, cfg.ahead)
    searcher = Searcher(index, outcomes, cfg.k, past_only=cfg.past_only, random=cfg.random, nprobe=cfg.nprobe,
                        seed=cfg.seed)
    return windows, outcomes, searcher


def _pit_note(settings, cfg, not_pit, n_queries):
    """A line saying which queries are not point-in-time and why, or None when all are."""
    if not not_pit:
        return None
    if not cfg.past_only:
        return "all-times neighbours (--all-times): windows after each query are used; not point-in-time"
    if settings.get("train_until") is None:
        return (f"not point-in-time: IVF-PQ index {cfg.index} was trained on windows from the whole history, so "
                "later data shaped every query's search; build it with --train-until TIME (or for a split) and query "
                "after that time")
    return (f"{not_pit:,} of {n_queries:,} queries end before {settings['train_until']}, the time IVF-PQ index "
            f"{cfg.index} was trained until: their searches saw later data (not point-in-time)")


class _Batch:
    """One batch of queries and their neighbours, with the per-query statistics."""

    def __init__(self, q_session, q_row, q_time, truth, truth_at, got, index):
        self.q_session, self.q_row, self.q_time, self.truth, self.truth_at = q_session, q_row, q_time, truth, truth_at
        self.got = got
        ids = np.where(got.ids >= 0, got.ids, 0).ravel()
        self.n_session, self.n_row = got.session, got.end_row
        self.n_time = np.where(got.ids < 0, NAT, index.end_time[ids].reshape(got.ids.shape))
        r = got.returns
        known = np.isfinite(r)
        count = known.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            self.mean = np.where(count > 0, np.nansum(r, 1) / np.maximum(count, 1), np.nan)
            self.median = np.full(len(r), np.nan)
            has = count > 0
            if has.any():
                self.median[has] = np.nanmedian(r[has], 1)
            self.positive = np.where(count > 0, (r > 0).sum(1) / np.maximum(count, 1), np.nan)
        self.index_sessions = index.sessions

    def __len__(self):
        return len(self.q_session)

    def rows(self, n):
        """The first n queries as dicts (the plot and the printed summary)."""
        names = self.index_sessions
        out = []
        for i in range(min(n, len(self))):
            k = self.got.ids.shape[1]
            out.append({"session": names[self.q_session[i]], "end_row": int(self.q_row[i]),
                        "end_time": time_text(int(self.q_time[i])), "followed": _num(self.truth[i]),
                        "found": int(self.got.found[i]), "mean": _num(self.mean[i]), "median": _num(self.median[i]),
                        "share_positive": _num(self.positive[i]),
                        "neighbours": [{"session": names[self.n_session[i, j]], "end_row": int(self.n_row[i, j]),
                                        "end_time": time_text(int(self.n_time[i, j])),
                                        "distance": _num(self.got.distance[i, j]),
                                        "followed": _num(self.got.returns[i, j])}
                                       for j in range(k) if self.got.ids[i, j] >= 0]})
        return out


def _num(x):
    x = float(x)
    return None if not np.isfinite(x) else x


def _open_sinks(stack, cfg, index, windows):
    sinks = []
    if cfg.out is not None:
        tmp = stack.enter_context(atomic_path(cfg.out, replace=cfg.overwrite))
        sinks.append(_CsvSink(tmp, index) if Path(cfg.out).suffix.lower() == ".csv" else
                     _H5Sink(tmp, cfg, index))
    if cfg.forecast is not None:
        sinks.append(_ForecastSink(stack.enter_context(atomic_path(cfg.forecast, replace=cfg.overwrite)), cfg, index, windows))
    for sink in sinks:
        stack.callback(sink.close)
    return sinks


class _H5Sink:
    def __init__(self, path, cfg, index):
        self.file = h5py.File(path, "w")
        k = cfg.k
        self.n = 0
        spec = {"query_session": ((), np.int32), "query_end_row": ((), np.int64), "query_end_time": ((), np.int64),
                "query_followed": ((), np.float64), "found": ((), np.int32), "mean": ((), np.float64),
                "median": ((), np.float64), "share_positive": ((), np.float64),
                "neighbour_session": ((k,), np.int32), "neighbour_end_row": ((k,), np.int64),
                "neighbour_end_time": ((k,), np.int64), "distance": ((k,), np.float64),
                "neighbour_followed": ((k,), np.float64)}
        self.ds = {name: self.file.create_dataset(name, (0,) + shape, dtype, maxshape=(None,) + shape,
                                                  chunks=(4096,) + shape) for name, (shape, dtype) in spec.items()}
        a = self.file.attrs
        a["h5series_format"] = RESULTS_FORMAT
        a["session_names"] = json.dumps(index.sessions)
        for key, value in (("index", str(index.path)), ("k", cfg.k), ("ahead", cfg.ahead),
                           ("followed_column", cfg.price_column or cfg.return_column),
                           ("followed_kind", "price" if cfg.price_column else "log_return"),
                           ("past_only", cfg.past_only), ("random", cfg.random), ("lookback", index.lookback)):
            a[key] = value

    def append(self, b):
        g = b.got
        cols = {"query_session": b.q_session, "query_end_row": b.q_row, "query_end_time": b.q_time,
                "query_followed": b.truth, "found": g.found, "mean": b.mean, "median": b.median,
                "share_positive": b.positive, "neighbour_session": b.n_session, "neighbour_end_row": b.n_row,
                "neighbour_end_time": b.n_time, "distance": g.distance, "neighbour_followed": g.returns}
        m = len(b)
        for name, values in cols.items():
            ds = self.ds[name]
            ds.resize(self.n + m, axis=0)
            ds[self.n:] = values
        self.n += m

    def finish(self, point_in_time):
        self.file.attrs["queries"] = self.n
        self.file.attrs["point_in_time"] = point_in_time

    def close(self):
        self.file.close()


class _CsvSink:
    HEADER = ["query_session", "query_end_time", "query_followed", "found", "mean", "median", "share_positive",
              "rank", "neighbour_session", "neighbour_end_time", "distance", "neighbour_followed"]

    def __init__(self, path, index):
        self.f = open(path, "w", newline="")
        self.writer = csv.writer(self.f)
        self.writer.writerow(self.HEADER)
        self.names = index.sessions

    def append(self, b):
        g, names = b.got, self.names
        for i in range(len(b)):
            head = [names[b.q_session[i]], time_text(int(b.q_time[i])), _text(b.truth[i]), int(g.found[i]),
                    _text(b.mean[i]), _text(b.median[i]), _text(b.positive[i])]
            for j in range(g.ids.shape[1]):
                if g.ids[i, j] < 0:
                    continue
                self.writer.writerow(head + [j + 1, names[b.n_session[i, j]], time_text(int(b.n_time[i, j])),
                                             f"{g.distance[i, j]:.6g}", _text(g.returns[i, j])])
            if g.found[i] == 0:
                self.writer.writerow(head + ["", "", "", "", ""])

    def finish(self, point_in_time):
        pass

    def close(self):
        self.f.close()


def _text(x):
    return "" if not np.isfinite(x) else f"{float(x):.8g}"


class _ForecastSink:
    """The neighbours' mean of what followed as a prediction for the query's window: a prediction file
    with one step (target `<column>_return_<ahead>`), truth = what followed the query."""

    def __init__(self, path, cfg, index, windows):
        self.file = h5py.File(path, "w")
        self.writer = PredictionWriter(self.file, horizon=1, n_targets=1, stamped=True)
        self.cfg, self.index = cfg, index
        L = index.lookback
        # first_target_offset: rows from a window's first input row to the row its outcome is dated at
        self.window = types.SimpleNamespace(lookback=L, horizon=1, first_target=L - 1 + cfg.ahead)

    def append(self, b):
        self.writer.append(session=b.q_session, input_end_row=b.q_row, input_end_time=b.q_time,
                           target_time=b.truth_at[:, None], prediction=b.mean.astype(np.float32)[:, None, None],
                           truth=b.truth.astype(np.float32)[:, None, None])

    def finish(self, point_in_time):
        cfg = self.cfg
        column = cfg.price_column or cfg.return_column
        self.writer.finish(session_names=self.index.sessions, target_names=[f"{column}_return_{cfg.ahead}"],
                           window=self.window, target_lead=0, task="forecast", scope="similar",
                           index=str(self.index.path), k=cfg.k, past_only=cfg.past_only,
                           point_in_time=point_in_time,
                           method="random" if cfg.random else "nearest")

    def close(self):
        self.file.close()
