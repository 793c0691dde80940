"""The one place that knows the session HDF5 layout (see docs/data_format.md).

A session is an HDF5 group holding
  features    [T, F] float32/float64 (numeric), chunked along time
  targets     [T, K] float, or integer class labels (optional)
  timestamps  [T]    int64, e.g. ns since the epoch (optional)
with attributes naming the columns and the format version. A file holds one
session (at the root) or many (one group each, at any depth).
"""

import hdf5plugin  # noqa: F401  registers the Blosc filter for reading and writing
import h5py
import numpy as np

FORMAT_NAME = "h5series-session"
FORMAT_VERSION = 1

FEATURES = "features"
TARGETS = "targets"
TIMESTAMPS = "timestamps"

INDEX = "_h5series_index"   # root dataset: one row per session (group, rows, timestamps)

ATTR_FORMAT = "h5series_format"
ATTR_VERSION = "h5series_format_version"
ATTR_FEATURE_NAMES = "feature_names"
ATTR_TARGET_NAMES = "target_names"
# Rows [0, labelled_rows) have targets; later rows wait for their future (the last row's
# next-day return): kept for `predict --latest`, never trained or scored on. Absent = every row.
ATTR_LABELLED_ROWS = "labelled_rows"
# The target of row t describes row t + target_lead_rows (1 for convert's next_* targets): the
# row whose time a prediction of it is dated with. Absent = 0.
ATTR_TARGET_LEAD = "target_lead_rows"

COMPRESSIONS = ("none", "lzf", "gzip", "blosc-lz4")
# File format bounds for files this project writes: 1.8's object headers store attributes over 64 KB
# densely (column names of a 4,000-column CSV; the default, 'earliest', refused them: "object header
# message is too large"); 1.10 at most, so HDF5 1.10 and later read them.
LIBVER = ("v108", "v110")
CHUNK_TARGET_BYTES = 512 * 1024  # aim of the writer: 256 KiB - 1 MiB per chunk
MIN_CHUNK_ROWS = 64


def open_member(container, name, where):
    """container[name], or None when it has no such member. h5py's .get() also returns None for a member
    that exists but cannot be opened (a damaged object header), which made a session disappear silently:
    that is one line naming `where` (the file) and the member."""
    from errors import InputError
    try:
        return container[name]
    except (KeyError, OSError) as exc:
        try:
            exists = name in container
        except (KeyError, OSError):
            exists = True                      # the path to it is damaged too
        if not exists:
            return None
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        member = "/" + "/".join(part for part in f"{container.name}/{name}".split("/") if part)
        raise InputError(f"{where}: {member} cannot be opened ({reason.strip(chr(39))}); "
                         "the file is damaged: restore it from a copy or write it again (convert)") from None


def chunk_rows_for(n_columns, itemsize, target_bytes=CHUNK_TARGET_BYTES):
    """Rows per chunk so that one chunk of [rows, n_columns] is about target_bytes."""
    row_bytes = max(1, n_columns * itemsize)
    return max(MIN_CHUNK_ROWS, target_bytes // row_bytes)


WRITE_METADATA_CACHE_BYTES = 2 * 2**20


def small_metadata_cache(h5file, max_bytes=WRITE_METADATA_CACHE_BYTES):
    """Cap HDF5's metadata cache of an open file. By default it grows to 32 MiB with the number of
    groups and datasets touched, so a writer's memory grew with the number of sessions (issue 10,
    case 25: 21 MB for 1,000 sessions, 32 MB for 3,000; 12 MB capped, 13% slower to create)."""
    config = h5file.id.get_mdc_config()
    config.set_initial_size = True
    config.initial_size = config.min_size = max_bytes // 2
    config.max_size = max_bytes
    h5file.id.set_mdc_config(config)
    return h5file


def compression_options(name):
    """h5py create_dataset keyword arguments for a compression name."""
    if name == "none":
        return {}
    if name == "lzf":
        return {"compression": "lzf", "shuffle": True}
    if name == "gzip":
        return {"compression": "gzip", "compression_opts": 4, "shuffle": True}
    if name == "blosc-lz4":
        # Byte shuffle + LZ4 decompresses at several GB/s (DESIGN.md, HDF5 facts).
        return dict(hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.SHUFFLE))
    raise ValueError(f"unknown compression {name!r}; choose one of {', '.join(COMPRESSIONS)}")


def compression_name(dataset):
    """Human name of a dataset's compression filter, for `inspect`."""
    if dataset.compression and dataset.compression != "unknown":
        return str(dataset.compression)
    plist = dataset.id.get_create_plist()
    for i in range(plist.get_nfilters()):
        code = plist.get_filter(i)[0]
        if code == hdf5plugin.BLOSC_ID:
            return "blosc-lz4" if plist.get_filter(i)[2][6:7] == (1,) else "blosc"
        if code not in (h5py.h5z.FILTER_SHUFFLE, h5py.h5z.FILTER_FLETCHER32):
            return f"filter-{code}"
    return "none"


def _as_str_list(value):
    if value is None:
        return None
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.atleast_1d(value)]


def encode_names(names):
    """Column names as a fixed-length UTF-8 byte array (fast to read back, unlike vlen strings)."""
    encoded = [str(n).encode() for n in names]
    return np.array(encoded, dtype=f"S{max([len(e) for e in encoded] + [1])}")


def decode_names(value):
    names = _as_str_list(value) or []
    return [] if names == [""] else names


def read_names(group, attr, n_columns, prefix):
    """Column names stored on a session group, or generated ones (f0, f1, ...)."""
    names = _as_str_list(group.attrs.get(attr))
    if names is None or len(names) != n_columns:
        return [f"{prefix}{i}" for i in range(n_columns)]
    return names


class SessionWriter:
    """Append rows to one session group in an open, writable h5py.File.

    Datasets are created resizable along time with writer-chosen chunks, so a
    converter can stream a session larger than RAM in pieces.
    """

    def __init__(self, h5file, name, feature_names, target_names=None, *,
                 feature_dtype=np.float32, target_dtype=np.float32, with_timestamps=False,
                 compression="none"):
        self.h5file = h5file
        self.group = h5file.require_group(name) if name not in ("", "/") else h5file
        self.name = self.group.name.strip("/")
        self.options = compression_options(compression)
        self.feature_names = list(feature_names)
        self.target_names = list(target_names or [])
        self.feature_dtype, self.target_dtype = np.dtype(feature_dtype), np.dtype(target_dtype)
        self.with_timestamps = with_timestamps
        self.features = self.targets = self.timestamps = None
        self.group.attrs[ATTR_FORMAT] = FORMAT_NAME
        self.group.attrs[ATTR_VERSION] = FORMAT_VERSION
        self.group.attrs[ATTR_FEATURE_NAMES] = encode_names(self.feature_names)
        if self.target_names:
            self.group.attrs[ATTR_TARGET_NAMES] = encode_names(self.target_names)
        self.rows = 0

    def _create(self, first_rows):
        # Chunks of ~CHUNK_TARGET_BYTES, but no larger than the first piece: a session
        # that arrives whole and short gets one small chunk, not mostly empty space.
        rows = min(chunk_rows_for(len(self.feature_names), self.feature_dtype.itemsize),
                   max(MIN_CHUNK_ROWS, first_rows))
        def make(name, width, dtype):
            shape = (0,) if width is None else (0, width)
            return self.group.create_dataset(
                name, shape=shape, maxshape=(None,) + shape[1:], dtype=dtype,
                chunks=(rows,) + shape[1:], **self.options)
        self.features = make(FEATURES, len(self.feature_names), self.feature_dtype)
        if self.target_names:
            self.targets = make(TARGETS, len(self.target_names), self.target_dtype)
        if self.with_timestamps:
            self.timestamps = make(TIMESTAMPS, None, np.int64)

    def append(self, features, targets=None, timestamps=None):
        """Append n rows: features (n, F), targets (n, K), timestamps (n,)."""
        n = len(features)
        if n == 0:
            return
        if self.group is None:
            self._reopen()
        if self.features is None:
            self._create(n)
        stop = self.rows + n
        for dset, values in ((self.features, features), (self.targets, targets),
                             (self.timestamps, timestamps)):
            if dset is None:
                continue
            if values is None or len(values) != n:
                raise ValueError(f"{dset.name}: expected {n} rows to append")
            dset.resize(stop, axis=0)
            dset[self.rows:stop] = values
        self.rows = stop

    def release(self):
        """Let go of the open HDF5 objects until the next append. Each open session holds ~50 KB
        in HDF5 (measured: 100 open sessions, 5.3 MB), so a converter writing many sessions in
        turn releases them between turns (issue 10, case 25)."""
        if self.group is not None and self.features is None:
            self._create(MIN_CHUNK_ROWS)        # what was not created now can't be found on reopening
        self.group = self.features = self.targets = self.timestamps = None

    def _reopen(self):
        self.group = self.h5file[self.name] if self.name else self.h5file
        self.features = self.group[FEATURES]
        self.targets = self.group[TARGETS] if self.target_names else None
        self.timestamps = self.group[TIMESTAMPS] if self.with_timestamps else None

    def set_attrs(self, **attrs):
        """Attributes on the session group (reopening it if released)."""
        group = self.group if self.group is not None else (self.h5file[self.name] if self.name else self.h5file)
        for key, value in attrs.items():
            group.attrs[key] = value

    def close(self):
        """Create empty datasets for a session that received no rows, and let go of the session."""
        self.release()


def write_session(h5file, name, features, targets=None, timestamps=None, *,
                  feature_names=None, target_names=None, compression="none"):
    """Write a whole in-memory session (tests, demo data, small conversions)."""
    features = np.asarray(features)
    feature_names = feature_names or [f"f{i}" for i in range(features.shape[1])]
    if targets is not None:
        targets = np.asarray(targets)
        if targets.ndim == 1:
            targets = targets[:, None]
        target_names = target_names or [f"y{i}" for i in range(targets.shape[1])]
    writer = SessionWriter(
        h5file, name, feature_names, target_names if targets is not None else None,
        feature_dtype=features.dtype,
        target_dtype=targets.dtype if targets is not None else np.float32,
        with_timestamps=timestamps is not None, compression=compression)
    writer.append(features, targets, timestamps)
    writer.close()
    return writer
