"""SessionData: a lazy handle on one session, and the per-process pool of open files.

Nothing here opens a file until the first read, and nothing h5py crosses a
process boundary: a SessionData pickles as paths and metadata, and the pool of
open handles notices a fork (new pid) and starts empty in the child, because an
HDF5 handle shared across fork gives wrong data (DESIGN.md, HDF5 facts).
"""

import collections
import dataclasses
import errno
import os
from typing import Optional

import h5py
import numpy as np

from data import layout
from errors import InputError

MIB = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class ChunkCache:
    """Chunk cache settings applied to every dataset a pool opens."""

    nbytes: int = 1 * MIB   # rdcc_nbytes per open dataset; size it to the chunks one block read spans
    nslots: int = 0          # rdcc_nslots; 0 = a prime ~100x the writer's chunks that fit (HDF5 docs' advice)
    w0: float = 0.75         # rdcc_w0; 1.0 evicts fully read chunks first (sequential reads)


SMALL_READ_BYTES = 64 << 10   # reads into a buffer up to this size slice and copy instead of read_direct


def _next_prime(n):
    n = max(2, int(n))
    while any(n % d == 0 for d in range(2, int(n ** 0.5) + 1)):
        n += 1
    return n


class _OpenSession:
    """The open h5py objects of one session (features, targets, timestamps), each opened on first use:
    opening an HDF5 object costs ~0.1 ms, and a reader of prices never needs the targets."""

    def __init__(self, h5file, group_name):
        self.file = h5file
        self.prefix = "" if group_name in ("", "/") else group_name.rstrip("/") + "/"
        self._open = {}
        self.checked = set()   # datasets whose rows were compared with the catalog's, once per open

    def _get(self, name):
        if name not in self._open:       # by path: no Group object is made (~0.1 ms an object)
            # (not h5py.Dataset(h5d.open(...)): opens ~0.07 ms faster, then reads ~6x slower, 100 vs 16 us)
            opened = layout.open_member(self.file, self.prefix + name, self.file.filename)
            if opened is None and self.prefix and self.prefix[:-1] not in self.file:
                # (checked only then: ~0.1 ms a session, and queries open 500 of them)
                raise KeyError(f"no group {self.prefix[:-1]!r}")
            self._open[name] = opened
        return self._open[name]

    @property
    def features(self):
        return self._get(layout.FEATURES)

    @property
    def targets(self):
        return self._get(layout.TARGETS)

    @property
    def timestamps(self):
        return self._get(layout.TIMESTAMPS)


class HandlePool:
    """Per-process LRU of open sessions, at most `max_open` at once.

    The chunk cache lives per open dataset per process, so bounding open sessions
    bounds cache memory: max_open x (features + targets) x cache.nbytes per process.
    Picklable: the copy in another process starts with no open handles.
    """

    def __init__(self, cache=ChunkCache(), max_open=64):
        if max_open < 1:
            raise ValueError("max_open must be at least 1")
        self.cache = cache
        self.max_open = max_open
        self._reset()

    def _reset(self):
        self._pid = os.getpid()
        self._sessions = collections.OrderedDict()   # (path, group) -> _OpenSession
        self._files = {}                             # path -> [h5py.File, n open sessions]

    def __getstate__(self):
        return {"cache": self.cache, "max_open": self.max_open}

    def __setstate__(self, state):
        self.cache = state["cache"]
        self.max_open = state["max_open"]
        self._reset()

    @property
    def n_open(self):
        return len(self._sessions) if self._pid == os.getpid() else 0

    def get(self, path, group_name):
        """The open datasets of a session, opening (and evicting the LRU) as needed."""
        if self._pid != os.getpid():
            # Inherited through fork: never touch the parent's handles here.
            self._reset()
        key = (path, group_name)
        opened = self._sessions.get(key)
        if opened is not None:
            self._sessions.move_to_end(key)
            return opened
        while len(self._sessions) >= self.max_open:
            self._evict()
        entry = self._files.get(path)
        if entry is None:
            entry = [open_file(path, self.cache), 0]
            self._files[path] = entry
        opened = _OpenSession(entry[0], group_name)
        entry[1] += 1
        self._sessions[key] = opened
        return opened

    def _evict(self):
        (path, _), _ = self._sessions.popitem(last=False)
        entry = self._files[path]
        entry[1] -= 1
        if entry[1] == 0:
            entry[0].close()
            del self._files[path]

    def close(self):
        """Close every handle this process opened (call before forking workers)."""
        if self._pid == os.getpid():
            self._sessions.clear()
            for h5file, _ in self._files.values():
                h5file.close()
        self._reset()


def file_stamp(path):
    """(size, mtime_ns, inode): what changes when a file is truncated, appended to or replaced."""
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns, st.st_ino


def scratch_copy(session, pool):
    """The same session read through another pool: one-off passes (statistics, scans) use a
    small pool of their own so they leave no large caches behind in the training process."""
    return dataclasses.replace(session, pool=pool)


def open_file(path, cache=None):
    """Open an HDF5 file read-only, turning the usual failures into one-line InputErrors.

    `cache` sets the chunk cache every dataset opened from this file gets (its own,
    per dataset): HDF5's file-level default, so no per-dataset property list is needed.
    """
    path = str(path)
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file; check the path (data.paths or the command line)")
    if not h5py.is_hdf5(path):
        raise InputError(
            f"{path}: not an HDF5 file; convert it first with `python main.py convert {path} --out DATA.h5`")
    options = {}
    if cache is not None:
        nslots = cache.nslots or _next_prime(100 * max(1, cache.nbytes // layout.CHUNK_TARGET_BYTES))
        options = {"rdcc_nbytes": cache.nbytes, "rdcc_nslots": nslots, "rdcc_w0": cache.w0}
    try:
        return h5py.File(path, "r", **options)
    except OSError as exc:
        raise open_error(path, exc) from None


def open_error(path, exc, writing=False):
    """The InputError for an HDF5 file h5py could not open, with the remedy for its cause: a lock held by
    another process, too many open files, permissions (_known_open_error), else a damaged file (a locked
    file was said to be truncated)."""
    return _known_open_error(path, exc, writing) or InputError(
        f"{path}: cannot be opened as HDF5 ({_first_line(exc)}); the file may be truncated or still being "
        "written; re-create or re-copy it")


def _known_open_error(path, exc, writing=False):
    """The InputError of an open that failed for a cause outside the file (a lock, the open-file limit,
    permissions), or None."""
    text = str(exc)
    number = getattr(exc, "errno", None)
    if number in (errno.EAGAIN, errno.EWOULDBLOCK) or "unable to lock file" in text or "errno = 11" in text:
        return InputError(f"{path}: in use by another process that is writing it (HDF5 file lock); wait for it to "
                          "finish" + ("" if writing else ", or read a copy") + " and run again")
    if number in (errno.EMFILE, errno.ENFILE) or "Too many open files" in text or "errno = 24" in text:
        return InputError(f"{path}: too many open files (this process may open {_open_files_limit()}); raise the "
                          "limit (ulimit -n 4096) or lower data.max_open_sessions / training.num_workers")
    if number == errno.EACCES or "Permission denied" in text:
        return InputError(f"{path}: permission denied; check the file's permissions")
    return None


def _open_files_limit():
    import resource
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _first_line(exc):
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


@dataclasses.dataclass
class SessionData:
    """One session: where it is, its shape and names, and lazy row reads.

    Built by the catalog from metadata only. Reading goes through `pool`, which
    opens the file in the reading process on first use.
    """

    path: str
    group: str                    # HDF5 path of the session group ("/" for a root session)
    name: str                     # unique session id within a dataset
    n_rows: int
    feature_names: list
    target_names: list            # empty when the session has no `targets`
    feature_dtype: str
    target_dtype: Optional[str]
    has_timestamps: bool
    labelled_rows: Optional[int] = None
    """Rows [0, labelled_rows) have targets; later ones wait for their future (None = every row)."""
    target_lead: int = 0
    """The target of row t describes row t + target_lead (1 for a next-row return)."""
    pool: HandlePool = dataclasses.field(default_factory=HandlePool, repr=False, compare=False)
    file_stamp: Optional[tuple] = dataclasses.field(default=None, repr=False, compare=False)
    """(size, mtime_ns, inode) of the file when it was catalogued; None = not checked."""

    @property
    def n_features(self):
        return len(self.feature_names)

    def window_rows(self, labelled):
        """Rows windows may use: all of them, or, when targets come from the `targets` dataset
        (`labelled`), those that have one (a missing target is never trained or scored on)."""
        if labelled and self.labelled_rows is not None:
            return self.labelled_rows
        return self.n_rows

    def check_unchanged(self):
        """Stop with one line when the file was truncated, replaced or rewritten since it was catalogued:
        HDF5 would otherwise read zeros past a truncated end and training would go on (issue 10, case 6).
        One os.stat per block read (~1 us against a read of thousands of rows)."""
        if self.file_stamp is None:
            return
        try:
            now = file_stamp(self.path)
        except OSError as exc:
            raise InputError(f"{self.path}: session {self.name!r} cannot be read any more ({exc.strerror}); "
                             "the file was removed or moved while in use") from None
        if now != self.file_stamp:
            what = f"size {self.file_stamp[0]:,} -> {now[0]:,} bytes" if now[0] != self.file_stamp[0] else \
                "replaced or rewritten (modification time or inode changed)"
            raise InputError(f"{self.path}: changed while in use ({what}); do not write to data files while a "
                             "run reads them; restore the file and resume the run (`train --resume RUN_DIR`)")


    def _dataset(self, kind):
        """The open `kind` dataset of the session ("features", "targets" or "timestamps"; None when it
        has none), its rows compared with the catalog's once per open. Only the dataset read is opened
        and checked: opening one costs ~0.2 ms, and a similar-window query reads one or two of the
        three datasets of 500 sessions."""
        try:
            opened = self.pool.get(self.path, self.group)
            dataset = getattr(opened, kind)
        except (OSError, KeyError, AttributeError) as exc:
            known = _known_open_error(self.path, exc) if isinstance(exc, OSError) else None
            if known is not None:
                raise known from None                 # locked, too many open files, permissions
            raise InputError(
                f"{self.path}: session {self.name!r} cannot be read ({_first_line(exc)}); "
                "the file may be truncated or changed since it was catalogued") from None
        if kind not in opened.checked:
            rows = None if dataset is None else dataset.shape[0]
            if (dataset is not None or kind == layout.FEATURES) and rows != self.n_rows:
                raise InputError(
                    f"{self.path}: session {self.name!r} has {rows} rows but its index says {self.n_rows}"
                    f"{'' if kind == layout.FEATURES else f' ({kind})'}; the file changed after it was indexed; "
                    f"run `python main.py index {self.path}`")
            opened.checked.add(kind)
        return dataset

    def _read(self, dataset, start, stop, out, what, dtype=None):
        """Rows [start, stop) of `dataset`: into `out` with read_direct (the training
        path's preallocated buffers), else by slicing, which costs ~30 us a call against read_direct's
        ~200 us of selection building (measured on 500 small reads: analysis/ reads many short ranges);
        small reads into `out` are sliced and copied for the same reason (one-window query blocks)."""
        if not 0 <= start <= stop <= self.n_rows:
            raise IndexError(f"{self.name}: rows [{start}, {stop}) outside [0, {self.n_rows})")
        n = stop - start
        # Floats are read as float32 (HDF5 converts on read); integer labels as int64.
        dtype = dtype or (np.float32 if dataset.dtype.kind == "f" or what == "features" else np.int64)
        if out is not None and len(out) < n:
            raise ValueError(f"out has {len(out)} rows, need {n}")
        if n == 0:
            return np.empty((0,) + dataset.shape[1:], dtype) if out is None else out[:0]
        self.check_unchanged()
        try:
            if out is None:
                return np.asarray(dataset[start:stop], dtype=dtype)
            if out[:n].nbytes <= SMALL_READ_BYTES:
                with np.errstate(over="ignore"):                   # as HDF5's conversion: inf past float32
                    out[:n] = dataset[start:stop]
                return out[:n]
            # One h5py call per range: h5py's per-call cost is tens of microseconds.
            dataset.read_direct(out, source_sel=np.s_[start:stop], dest_sel=np.s_[0:n])
        except OSError as exc:
            raise InputError(
                f"{self.path}: session {self.name!r} {what} rows [{start}, {stop}) cannot be read "
                f"({_first_line(exc)}); the file is damaged or truncated; re-create it") from None
        return out[:n]

    def read_rows(self, start, stop, out=None):
        """Features of rows [start, stop) as (n, F), float32 unless `out` says otherwise."""
        return self._read(self._dataset(layout.FEATURES), start, stop, out, "features")

    def read_targets(self, start, stop, out=None):
        """Targets of rows [start, stop) as (n, K): float32, or int64 for class labels."""
        dataset = self._dataset(layout.TARGETS)
        if dataset is None:
            raise InputError(f"{self.path}: session {self.name!r} has no `targets` dataset; "
                             "choose target columns from the features instead")
        return self._read(dataset, start, stop, out, "targets")

    def _column(self, name):
        """(dataset, column index, dataset kind) of a named feature or target column."""
        if name in self.feature_names:
            return self._dataset(layout.FEATURES), self.feature_names.index(name), layout.FEATURES
        if name in self.target_names:
            return self._dataset(layout.TARGETS), self.target_names.index(name), layout.TARGETS
        raise InputError(f"{self.path}: session {self.name!r} has no column {name!r}; it has features "
                         f"{self.feature_names}" + (f" and targets {self.target_names}" if self.target_names else ""))

    def read_column(self, name, start, stop):
        """One named column (a feature or a target) of rows [start, stop) as (n,) float64, read alone
        (analysis/ reads prices and signals this way)."""
        dataset, col, what = self._column(name)
        # Whole rows, then the column: rows are contiguous in a chunk, one column is strided, and HDF5
        # reads a strided selection of a chunk it does not cache element by element (~10x slower).
        return self._read(dataset, start, stop, None, what, dtype=np.float64)[:, col]

    def read_points(self, name, rows):
        """One column (a feature or a target, float64, or "timestamps", int64) at the given rows
        (increasing, inside the session), in one HDF5 point selection: rows far apart cost ~8 us each
        against ~30 us for a slice read apiece (the neighbours of similar-window queries)."""
        rows = np.asarray(rows, np.int64)
        if name == layout.TIMESTAMPS:
            dataset, col, what, dtype = self._dataset(layout.TIMESTAMPS), None, layout.TIMESTAMPS, np.int64
        else:
            (dataset, col, what), dtype = self._column(name), np.float64
        if dataset is None:
            raise InputError(f"{self.path}: session {self.name!r} has no `{what}` dataset")
        if len(rows) and not (0 <= rows[0] and rows[-1] < self.n_rows and (np.diff(rows) > 0).all()):
            raise IndexError(f"{self.name}: point rows must increase inside [0, {self.n_rows})")
        out = np.empty(len(rows), dtype)
        if not len(rows):
            return out
        self.check_unchanged()
        coords = np.empty((len(rows), 1 if col is None else 2), np.uint64)     # (dataset.ndim: ~30 us)
        coords[:, 0] = rows
        if col is not None:
            coords[:, 1] = col
        try:
            space = dataset.id.get_space()
            space.select_elements(coords)
            dataset.id.read(h5py.h5s.create_simple((len(rows),)), space, out)
        except OSError as exc:
            raise InputError(f"{self.path}: session {self.name!r} {what} cannot be read ({_first_line(exc)}); the "
                             "file is damaged or truncated; re-create it") from None
        return out

    def read_timestamps(self, start, stop):
        """Timestamps of rows [start, stop) as (n,) int64."""
        dataset = self._dataset(layout.TIMESTAMPS)
        if dataset is None:
            raise InputError(f"{self.path}: session {self.name!r} has no `timestamps` dataset; "
                             "split by fractions or row borders instead")
        return self._read(dataset, start, stop, None, "timestamps")

    def time_order_problem(self, rows_per_read=1 << 20):
        """None when the timestamps strictly increase, else (row, previous time, time at row): the first
        row whose time is not after the previous row's (backwards or duplicated). Reads them in pieces."""
        previous = None
        for start in range(0, self.n_rows, rows_per_read):
            stamps = self.read_timestamps(start, min(self.n_rows, start + rows_per_read))
            if previous is not None:
                stamps = np.concatenate([[previous], stamps])
            bad = np.flatnonzero(np.diff(stamps) <= 0)
            if len(bad):
                i = int(bad[0])
                return start + i + (0 if previous is not None else 1), int(stamps[i]), int(stamps[i + 1])
            previous = stamps[-1] if len(stamps) else previous
        return None

    def timestamp_row(self, value, step=4096):
        """First row whose timestamp is >= value (see timestamp_rows)."""
        return int(self.timestamp_rows([value], step)[0])

    def timestamp_rows(self, values, step=4096):
        """First row whose timestamp is >= each value (n,), no full load: every `step`-th timestamp (one
        strided read) finds each value's piece, then each piece is read once and searched (a binary
        search of point reads took ~20 h5py calls: 1 ms a session, 0.5 s for 500)."""
        values = np.asarray(values, np.int64)
        dataset = self._dataset(layout.TIMESTAMPS)
        if dataset is None:
            raise InputError(f"{self.path}: session {self.name!r} has no `timestamps` dataset; "
                             "split by fractions or row borders instead")
        out = np.zeros(len(values), np.int64)
        if self.n_rows == 0 or not len(values):
            return out
        if self.n_rows <= step:                                      # one read of them all
            return np.searchsorted(self.read_timestamps(0, self.n_rows), values, side="left").astype(np.int64)
        coarse = dataset[::step]                                     # times of rows 0, step, 2 step, ...
        piece = np.searchsorted(coarse, values, side="left")         # rows before piece * step are < value
        for p in np.unique(piece[piece > 0]):
            start = (int(p) - 1) * step
            stamps = self.read_timestamps(start, min(self.n_rows, start + step))
            where = piece == p
            out[where] = start + np.searchsorted(stamps, values[where], side="left")
        return out
