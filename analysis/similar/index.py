"""`similar index`: a FAISS index of every window's vector, with the windows' ids, on disk.

An index folder holds
  index.faiss    the FAISS index (faiss.write_index / read_index: FAISS's own format, no pickle)
  windows.h5     per vector, in the index's order (vector i = FAISS id i): session (int32, index into
                 settings' sessions), end_row and end_time (int64 ns); session_offsets (S + 1): the
                 vectors of session s are [offsets[s], offsets[s + 1]), in time order; vectors (N, D)
                 float32 for exact distances (contiguous datasets, memory-mapped on query)
                 IVF-PQ also: by_time (N,) the window ids in time order (ties by id): FAISS id r is
                 window by_time[r]
  settings.json  what was indexed and how: data files (with size and mtime, checked on load),
                 columns, lookback, stride, vector kind, FAISS settings, counts, point-in-time scope

Point in time. A flat index is exact: a past-only query's neighbours depend only on windows that
ended before it. IVF-PQ learns its clusters and codes from a sample of windows, so it is trained only
on windows that ended before `train_until` (the user's --train-until, else the train split's end
when the index is of a split); its vectors are added in time order (FAISS id = rank in time) and a
past-only query searches only ids below the count of windows ended before it (FAISS's ID selector),
so later windows neither train the quantizer nor crowd the candidate lists. A query ending at or after
`point_in_time_from` is then point-in-time: garbling every row after it changes nothing it returns.
An IVF-PQ index trained on the whole history says so (point_in_time false) and so do its queries.
Flat (exact) up to similar.flat_max_vectors windows; above it IVF-PQ with FAISS's fast-scan codes
(4-bit, one sub-quantizer per dimension: 16 levels learned per dimension, scanned with SIMD),
trained on a sample of blocks and then filled block by block, so memory holds the codes, not the
vectors. Against 8-bit codes of 4 dimensions (same family, 8 bytes for 32 dimensions) on 4M minute
windows: 600 queries 0.14 s instead of 1.4 s at nprobe 128, recall@10 0.91 instead of 0.73.
"""

import concurrent.futures
import json
import math
import os
import time
from pathlib import Path

import faiss
import h5py
import numpy as np

from atomic import SpaceGuard, atomic_dir, check_output_dir
from data.catalog import time_text
from data.session import file_stamp
from data.windows import WindowSpec
from errors import InputError
from progress import bar as progress_bar

FORMAT_NAME = "h5series-similar-index"
FORMAT_VERSION = 2       # 2: IVF-PQ ids in time order, point-in-time scope in settings
FILES = ("index.faiss", "windows.h5", "settings.json")
PQ_BITS = 4            # fast-scan codes
# Read into memory. Memory-mapped (FAISS's IO_FLAG_MMAP_IFC) the 419 MB minute index opened no faster
# in the benchmark (0.51 s), searched slower (0.67 s against 0.51 s: page faults) and the query's
# peak PSS rose from 1.03 to 1.41 GB.
READ_FLAGS = faiss.IO_FLAG_READ_ONLY
ADD_VECTORS = 65_536    # vectors per FAISS add: IVF-PQ adds of 4,096 took 2.2x as long (3.9 vs 1.8 s for 609k)
TIME_ORDER_READ = 262_144   # windows read back from windows.h5 per step of adding them in time order (32 MB at 32 dims)


def index_window(lookback, stride):
    """The windows an index holds: horizon 1 at the last input row (target_offset 0), so a window spans
    exactly its lookback rows and every window up to a session's last row is indexed, the newest too."""
    return WindowSpec(lookback, 1, stride, target_offset=0)


def auto_nlist(n):
    """The power of 2 nearest sqrt(n), within [16, 4096], and at most n / 39 (FAISS's k-means wants
    39 points per cluster)."""
    nlist = 2 ** int(round(math.log2(max(1.0, math.sqrt(n)))))
    return int(max(1, min(4096, max(16, nlist), n // 39)))


def auto_pq_m(dim):
    """One 4-bit sub-quantizer per dimension, at most 64 (then 2 or more dimensions each): on 4M
    minute windows (32 dimensions), 16 of 2 dimensions reached recall@10 0.79 where 32 reached 0.93
    (nprobe 128), 8 of 4 dimensions 0.31."""
    return int(max(1, min(64, dim)))


def auto_nprobe(nlist):
    """Clusters searched per query: 1/32 of them, at least 32 (recall falls with the share probed:
    IVF clusters split noise-like windows poorly)."""
    return int(min(nlist, max(32, nlist // 32)))


def _padded(dim, m):
    return m * math.ceil(dim / m)


class _Writer:
    """windows.h5 written as vectors arrive: contiguous datasets sized for the planned windows (rows of
    skipped windows stay at the end, unused; `n` says how many are real)."""

    def __init__(self, path, planned, dim, n_sessions):
        self.file = h5py.File(path, "w")
        self.guard = SpaceGuard(path, "index")
        shape = (max(planned, 1),)
        self.session = self.file.create_dataset("session", shape, np.int32, fillvalue=-1)
        self.end_row = self.file.create_dataset("end_row", shape, np.int64)
        self.end_time = self.file.create_dataset("end_time", shape, np.int64)
        self.vectors = self.file.create_dataset("vectors", shape + (dim,), np.float32)
        self.counts = np.zeros(n_sessions, np.int64)
        self.n = 0
        self.last = (-1, -1)

    def add(self, session, end_row, end_time, vectors):
        self.guard.check()
        m = len(session)
        if m == 0:
            return
        # The loader serves windows in plan order; the query side relies on it (time order per session).
        order = np.lexsort((end_row, session))
        if not (np.all(order == np.arange(m)) and (int(session[0]), int(end_row[0])) > self.last):
            raise RuntimeError("similar index: windows did not arrive in (session, row) order")
        a, b = self.n, self.n + m
        self.session[a:b], self.end_row[a:b], self.end_time[a:b], self.vectors[a:b] = session, end_row, end_time, vectors
        np.add.at(self.counts, session, 1)
        self.n, self.last = b, (int(session[-1]), int(end_row[-1]))

    def close(self):
        offsets = np.concatenate([[0], np.cumsum(self.counts)])
        self.file.create_dataset("session_offsets", data=offsets)
        self.file.attrs["windows"] = self.n
        self.file.attrs["h5series_format"] = "h5series-similar-windows"      # (a data folder's search skips it)
        self.file.close()


def training_ranges(windows, train_until=None):
    """(row ranges whose windows may train IVF-PQ, the time every one of them ended before, or None when
    they span the whole history): windows ending before `train_until` (ns) when given, else the train
    split's when the index is of a split, else every window (not point-in-time)."""
    if train_until is not None:
        ranges = []
        for i, start, stop in windows.ranges():
            cut = min(stop, windows.catalog.sessions[i].timestamp_row(train_until))    # rows before the time
            if windows.window.n_windows(cut - start) > 0:
                ranges.append((i, start, cut))
        if not ranges:
            raise InputError(f"--train-until {time_text(train_until)}: no indexed window ends before it; give a later "
                             "time (the IVF-PQ quantizer is trained on the windows before it)")
        return ranges, int(train_until)
    if windows.split == "all":
        return windows.ranges(), None
    ranges = windows.ranges("train")
    last = max(int(windows.catalog.sessions[i].read_timestamps(stop - 1, stop)[0]) for i, _, stop in ranges)
    return ranges, last + 1


def point_in_time_from(settings):
    """The end time from which a past-only query of this index is point-in-time (ns; the minimum int64 for
    every query of an exact index), or None when none is (IVF-PQ trained on the whole history)."""
    if settings["kind"] == "flat":
        return int(np.iinfo(np.int64).min)
    return settings.get("point_in_time_from")


def build_index(windows, similar_cfg, out, *, overwrite=False, progress=True, seed=0, train_until=None):
    """Index every window of `windows` (analysis.similar.source.WindowSet) into the folder `out`; IVF-PQ
    is trained on windows ending before `train_until` (ns; see training_ranges). Returns the settings
    dict (also written to out/settings.json)."""
    reads = list(windows.catalog.paths) + ([windows.run] if windows.run else [])
    check_output_dir(out, overwrite, "index", reads=reads, owns=FILES)
    t0 = time.perf_counter()
    table = windows.plan(windows.ranges())
    planned = int(table[:, 2].sum())
    kind = "flat" if planned <= similar_cfg.flat_max_vectors else "ivfpq"
    dim = windows.vectors.dim
    settings = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "kind": kind, "metric": "l2",
                "data": [str(p) for p in windows.catalog.paths],
                "data_stamps": {str(p): list(file_stamp(p)[:2]) for p in windows.catalog.paths},
                "sessions": [s.name for s in windows.catalog.sessions], **windows.describe()}
    if kind == "flat":
        index, padded = faiss.IndexFlatL2(dim), dim
        settings.update(point_in_time=True, point_in_time_from=None, train_until=None)    # exact: no training
    else:
        m = similar_cfg.pq_m or auto_pq_m(dim)
        padded = _padded(dim, m)
        nlist = similar_cfg.nlist or auto_nlist(planned)
        index = faiss.IndexIVFPQFastScan(faiss.IndexFlatL2(padded), padded, nlist, m, PQ_BITS)
        settings.update(nlist=nlist, pq_m=m, pq_bits=PQ_BITS, fast_scan=True,
                        nprobe=similar_cfg.nprobe or auto_nprobe(nlist), rerank=similar_cfg.rerank,
                        faiss_ids="time_order")
        train_ranges, trained_before = training_ranges(windows, train_until)
        settings.update(point_in_time=trained_before is not None, point_in_time_from=trained_before,
                        train_until=None if trained_before is None else time_text(trained_before))
    settings["padded_dim"] = padded
    # windows.h5 (vectors and ids), and index.faiss: every vector (flat) or a 4-bit code and an id each (IVF-PQ)
    need = planned * (dim * 4 + 20) + planned * (dim * 4 if kind == "flat" else padded // 2 + 8)
    with atomic_dir(out, replace=overwrite, owns=FILES, what="index", need=need) as work:
        if kind == "ivfpq":
            t1 = time.perf_counter()
            n_train = similar_cfg.train_vectors or max(32_768, 40 * index.nlist)
            sample = [v for _, _, v in windows.batches(windows.sample_plan(n_train, seed, train_ranges))]
            sample = _pad(np.concatenate(sample)[:n_train], padded) if sample else np.zeros((0, padded), np.float32)
            if len(sample) < index.nlist:
                before = "" if trained_before is None else f" ending before {time_text(trained_before)}"
                raise InputError(f"similar.nlist {index.nlist}: more clusters than the {len(sample)} sampled windows"
                                 f"{before}; lower similar.nlist (0 = automatic)"
                                 + (" or give a later --train-until" if before else ""))
            index.train(sample)
            settings.update(trained_on=len(sample), train_seconds=round(time.perf_counter() - t1, 3))
            del sample
        writer = _Writer(work / "windows.h5", planned, dim, len(windows.catalog.sessions))
        try:
            bar = progress_bar(total=planned, desc=f"similar index ({kind})", unit="window", unit_scale=True,
                               enabled=progress)
            pending = []
            for session, end_row, vectors in windows.batches(table):
                writer.add(session, end_row, windows.end_times(session, end_row), vectors)
                if kind == "flat":            # (IVF-PQ: added in time order once every window is written)
                    pending.append(vectors)
                if sum(map(len, pending)) >= ADD_VECTORS:
                    index.add(_pad(np.concatenate(pending), padded))
                    pending = []
                bar.update(len(session))
            if pending:
                index.add(_pad(np.concatenate(pending), padded))
            bar.close()
        finally:
            writer.close()
        if writer.n == 0:
            raise InputError(f"no window to index: every one of the {planned} windows has NaN/Inf in its rows; "
                             "clean the data")
        if kind == "ivfpq":
            _add_in_time_order(index, work / "windows.h5", writer.n, padded)
        faiss.write_index(index, str(work / "index.faiss"))
        settings.update(windows=writer.n, skipped_nonfinite=windows.skipped, build_seconds=round(time.perf_counter() - t0, 3),
                        built_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
        settings["file_sizes"] = {name: os.path.getsize(work / name) for name in ("index.faiss", "windows.h5")}
        with open(work / "settings.json", "w") as f:
            json.dump(settings, f, indent=2)
    return settings


def _add_in_time_order(index, path, n, padded):
    """Add the written windows to the IVF index in time order (ties by window id), so FAISS id r is the
    r-th window to end: a past-only query searches ids [0, windows ended before it). Also writes the
    order (by_time) to windows.h5."""
    with h5py.File(path, "r+") as f:
        by_time = np.argsort(f["end_time"][:n], kind="stable")         # (N,) stable: ties by window id
        f.create_dataset("by_time", data=by_time)
        vectors = f["vectors"]
        for a in range(0, n, TIME_ORDER_READ):
            ids = by_time[a:a + TIME_ORDER_READ]
            order = np.argsort(ids)
            sorted_ids = ids[order]
            # A session's windows in one stretch of time are consecutive ids: one slice read per run.
            breaks = np.flatnonzero(np.diff(sorted_ids) != 1) + 1
            parts = [vectors[int(run[0]):int(run[-1]) + 1] for run in np.split(sorted_ids, breaks)]
            chunk = np.empty((len(ids), vectors.shape[1]), np.float32)
            chunk[order] = np.concatenate(parts)
            index.add(_pad(chunk, padded))


def _pad(vectors, padded):
    vectors = np.ascontiguousarray(vectors, np.float32)
    if vectors.shape[1] == padded:
        return vectors
    return np.ascontiguousarray(np.pad(vectors, ((0, 0), (0, padded - vectors.shape[1]))))


class RowReader:
    """Rows of a contiguous dataset read with one pread each: the stored vectors of a few thousand
    candidates. A memory map of the 2.2 GB vectors of the minute index mapped ~1.9 GB into the process
    for 600 queries (the kernel maps neighbouring cached pages on each fault); preads map nothing."""

    def __init__(self, dataset, n):
        self.offset = dataset.id.get_offset()
        self.shape, self.dtype = (n,) + dataset.shape[1:], dataset.dtype
        self.size = int(np.prod(dataset.shape[1:], dtype=np.int64)) * dataset.dtype.itemsize
        self.fd = os.open(dataset.file.filename, os.O_RDONLY)

    def take(self, ids):
        """(len(ids), ...) rows at ids (any order, repeats allowed)."""
        ids = np.asarray(ids, np.int64)
        unique, where = np.unique(ids, return_inverse=True)
        size, offset, fd = self.size, self.offset, self.fd
        buf = b"".join([os.pread(fd, size, offset + int(i) * size) for i in unique])
        return np.frombuffer(buf, self.dtype).reshape((len(unique),) + self.shape[1:])[where]

    def __getitem__(self, i):
        return self.take([i])[0]

    def close(self):
        os.close(self.fd)


def _mapped(dataset, n):
    """The first n rows of a contiguous dataset as a read-only memory map (pages read on first touch)."""
    offset = dataset.id.get_offset()
    if offset is None or dataset.chunks is not None:
        return dataset[:n]
    shape = (n,) + dataset.shape[1:]
    # As a plain ndarray over the map: np.memmap's own indexing costs ~50 us a call (a query slices each
    # session's end times ~3 times: 0.07 s for 500 sessions).
    return np.asarray(np.memmap(dataset.file.filename, dtype=dataset.dtype, mode="r", offset=offset, shape=shape))


class SimilarIndex:
    """An index folder opened for queries, checked first: every file there and sized as written, the
    data files unchanged since, FAISS's reader and the window ids agreeing."""

    def __init__(self, path, check_data=True):
        self.path = Path(path)
        where = f"{self.path}"
        if not self.path.is_dir():
            raise InputError(f"{where}: no such index folder; build one with `python main.py similar index ... --out {where}`")
        missing = [name for name in FILES if not (self.path / name).is_file()]
        if missing:
            raise InputError(f"{where}: not a complete similar-window index ({', '.join(missing)} missing); "
                             "build it again with `python main.py similar index`")
        try:
            self.settings = json.loads((self.path / "settings.json").read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise InputError(f"{where}/settings.json: damaged ({exc}); build the index again") from None
        s = self.settings
        if not isinstance(s, dict) or s.get("format") != FORMAT_NAME or s.get("format_version") != FORMAT_VERSION:
            raise InputError(f"{where}: settings.json is not a similar-window index of this version; build it again")
        for name, size in s["file_sizes"].items():
            now = os.path.getsize(self.path / name)
            if now != size:
                raise InputError(f"{where}/{name}: {now:,} bytes but {size:,} were written; the file is damaged or "
                                 "truncated: build the index again")
        self.n = int(s["windows"])
        try:
            self.file = h5py.File(self.path / "windows.h5", "r")
            f = self.file
            self.session = _mapped(f["session"], self.n)
            self.end_row = _mapped(f["end_row"], self.n)
            self.end_time = _mapped(f["end_time"], self.n)
            self.vectors = RowReader(f["vectors"], self.n)
            self.offsets = f["session_offsets"][:]
            # FAISS id -> window id (IVF-PQ adds in time order)
            self.by_time = _mapped(f["by_time"], self.n) if s.get("faiss_ids") == "time_order" else None
        except (OSError, KeyError) as exc:
            raise InputError(f"{where}/windows.h5: damaged ({str(exc).splitlines()[0]}); build the index again") from None
        if len(self.offsets) != len(s["sessions"]) + 1 or self.offsets[-1] != self.n:
            raise InputError(f"{where}/windows.h5: its window ids do not match settings.json; build the index again")
        if check_data:
            self._check_data()
        # FAISS reads its file in a thread (it lets go of the GIL): the minute index's 419 MB take ~0.45 s,
        # in which a query opens its data and what it reads first (`loaded`; `index` waits for it).
        reading = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="faiss-read")
        self._faiss = reading.submit(self._read_faiss)
        reading.shutdown(wait=False)     # its thread ends with the read (no idle thread left when workers fork)

    def _read_faiss(self):
        where, s = self.path, self.settings
        started = time.perf_counter()
        try:
            index = faiss.read_index(str(where / "index.faiss"), READ_FLAGS)
        except RuntimeError as exc:
            raise InputError(f"{where}/index.faiss: FAISS cannot read it ({str(exc).splitlines()[0][:120]}); "
                             "build the index again") from None
        if index.ntotal != self.n or index.d != s["padded_dim"]:
            raise InputError(f"{where}: index.faiss holds {index.ntotal} vectors of {index.d} dimensions, "
                             f"settings say {self.n} of {s['padded_dim']}; build the index again")
        if hasattr(index, "nprobe"):
            index.nprobe = int(s.get("nprobe", 32))
        self.read_seconds = time.perf_counter() - started
        return index

    @property
    def loaded(self):
        """Whether the FAISS index has been read (or failed to be)."""
        return self._faiss.done()

    @property
    def index(self):
        """The FAISS index, waiting for its read to finish (its errors are raised here)."""
        return self._faiss.result()

    def _check_data(self):
        for path, (size, mtime) in self.settings["data_stamps"].items():
            try:
                now = file_stamp(path)[:2]
            except OSError:
                raise InputError(f"{path}: the data file of index {self.path} is gone; restore it or build the index "
                                 "again") from None
            if list(now) != [size, mtime]:
                raise InputError(f"{path}: changed since index {self.path} was built ({size:,} -> {now[0]:,} bytes or "
                                 "rewritten); windows and their rows would no longer match: build the index again")

    def window_ids(self, s, end_rows):
        """Ids of session s's indexed windows ending at end_rows (-1 where none is indexed)."""
        a, b = int(self.offsets[s]), int(self.offsets[s + 1])
        if a == b:
            return np.full(len(end_rows), -1, np.int64)
        ends = self.end_row[a:b]
        j = np.minimum(np.searchsorted(ends, end_rows), b - a - 1)
        return np.where(ends[j] == end_rows, a + j, -1)

    @property
    def lookback(self):
        return int(self.settings["lookback"])

    @property
    def sessions(self):
        return self.settings["sessions"]

    def close(self):
        concurrent.futures.wait([self._faiss])
        self.vectors.close()
        self.file.close()
