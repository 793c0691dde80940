"""Discover the sessions of a dataset and check their schema, reading metadata only.

A dataset is one HDF5 file, a directory of them, a glob, or a list of those. The
catalog walks each file's groups without following soft or external links,
checks every session (2-D numeric features, matching lengths, same feature names
and dtypes everywhere, nothing that points outside the data unless allowed) and
reads lengths and attributes. No row of data is read.
"""

import dataclasses
import glob
import logging
import os
from pathlib import Path

import h5py
import numpy as np

from data import layout
from data.session import ChunkCache, HandlePool, SessionData, file_stamp, open_file, scratch_copy
from errors import InputError, first_repeated

log = logging.getLogger("h5series")

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")


@dataclasses.dataclass
class Catalog:
    """The sessions of a dataset, in a stable order, with their shared schema."""

    sessions: list
    feature_names: list
    target_names: list
    paths: list

    @property
    def n_rows(self):
        return sum(s.n_rows for s in self.sessions)

    @property
    def pool(self):
        """The HandlePool every session reads through (one per catalog)."""
        return self.sessions[0].pool

    def close(self):
        """Close every file the sessions opened (before forking workers, or when done)."""
        self.pool.close()

    def read_through(self, pool):
        """Read every session through `pool` from now on (the previous pool closed): a query keeps each
        session open at once, with no chunk cache."""
        self.close()
        self.sessions[:] = [scratch_copy(session, pool) for session in self.sessions]

    def session(self, name):
        for s in self.sessions:
            if s.name == name:
                return s
        raise InputError(f"session {name!r} is not in the dataset ({len(self.sessions)} sessions, "
                         f"e.g. {', '.join(s.name for s in self.sessions[:3])}); check the name")


def resolve_paths(paths, searched=None):
    """Expand files, directories and globs into a sorted list of HDF5 file paths. A folder's search skips
    hidden files and folders (a writer's temporary, .NAME.tmp-PID); `searched`, a set, is given the files
    a folder search found (the catalog skips outputs of other kinds among them, named ones it refuses)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files = []
    for entry in paths:
        entry = str(entry)
        if any(ch in entry for ch in "*?["):
            matches = sorted(glob.glob(entry, recursive=True))
            if not matches:
                raise InputError(f"{entry}: the pattern matches no file; check the path or pattern")
            files.extend(m for m in matches if os.path.isfile(m))
        elif os.path.isdir(entry):
            found = sorted(str(p) for p in Path(entry).rglob("*") if p.suffix.lower() in HDF5_SUFFIXES
                           and not any(part.startswith(".") for part in p.relative_to(entry).parts))
            if not found:
                raise InputError(f"{entry}: directory holds no HDF5 file ({', '.join(HDF5_SUFFIXES)}); "
                                 "convert your data with `python main.py convert`")
            files.extend(found)
            if searched is not None:
                searched.update(os.path.abspath(f) for f in found)
        elif not os.path.exists(entry):
            raise InputError(f"{entry}: no such file or directory; check the path")
        else:
            files.append(entry)
    if not files:
        raise InputError("no data path given; set data.paths or pass a file")
    # Keep the first occurrence: the same file listed twice is one dataset, not two.
    return list(dict.fromkeys(os.path.abspath(f) for f in files))


def other_output(h5file):
    """The kind of an h5series output that is not session data (predictions, a similar index's windows or
    results, backtest periods: each says so in `h5series_format`), or None for a session file."""
    kind = _attr_str(h5file.attrs, layout.ATTR_FORMAT)
    return kind if kind is not None and kind != layout.FORMAT_NAME else None


def file_labels(files):
    """{path: the name its sessions are qualified with}: the file's stem, or, where two files share
    a stem (y2020/data.h5, y2021/data.h5), its path below their common folder without the suffix
    (y2020/data, y2021/data). A session's name is its identity: normalizer statistics, predictions
    and resume positions are keyed by it, so two sessions must never share one."""
    stems = [Path(f).stem for f in files]
    if len(set(stems)) == len(stems):
        return dict(zip(files, stems))
    common = Path(os.path.commonpath([os.path.dirname(f) for f in files]))
    return {f: str(Path(f).relative_to(common).with_suffix("")) if stems.count(Path(f).stem) > 1 else Path(f).stem
            for f in files}


def _check_unique_names(sessions):
    seen = {}
    for s in sessions:
        if s.name in seen:
            other = seen[s.name]
            raise InputError(f"session name {s.name!r} is used twice: {other.path}:{other.group} and "
                             f"{s.path}:{s.group}; rename one of the groups or files (a session's name keys "
                             "its normalization statistics and predictions)")
        seen[s.name] = s


def open_catalog(paths, *, pool=None, allow_external_links=False, use_index=True):
    """Catalog every session under `paths`. Raises InputError on any schema problem.

    A file written by this framework carries a session index (`_h5series_index`,
    written after every session was checked), read in one call; other files are
    walked and checked session by session (~0.3 ms each; `python main.py index`
    adds an index to them).
    """
    searched = set()
    files = resolve_paths(paths, searched)
    pool = pool or HandlePool()
    scanned, skipped = [], []
    for path in files:
        with open_file(path) as h5file:
            if path in searched and other_output(h5file):
                skipped.append(path)           # an output written into a data folder is not its data
                continue
            try:
                indexed = _read_index(h5file, path) if use_index else None
                found = indexed if indexed is not None else _scan_file(h5file, path, allow_external_links)
            except (OSError, KeyError, RuntimeError) as exc:
                raise InputError(f"{path}: cannot be read ({str(exc).splitlines()[0]}); the file may be "
                                 "truncated or damaged; re-create or re-copy it") from None
        if not found:
            raise InputError(
                f"{path}: holds no session (no group with a `features` dataset); write sessions "
                "with `python main.py convert` or see docs/data_format.md")
        scanned.append((path, found))
    if skipped:
        log.info("skipped %d HDF5 file(s) of the data folders that are h5series outputs, not session data "
                 "(predictions, similar indexes or results, backtest periods), e.g. %s", len(skipped), skipped[0])
    if not scanned:
        raise InputError(f"{skipped[0]}: the data folders hold no session file, only h5series outputs like this "
                         "one; convert your data with `python main.py convert`")
    files = [path for path, _ in scanned]
    sessions = []
    multi = len(files) > 1
    labels = file_labels(files)
    for path, found in scanned:
        stem, label = Path(path).stem, labels[path]
        stamp = file_stamp(path)
        for meta in found:
            short = meta["group"].strip("/") or stem
            name = f"{label}/{short}" if multi and short != stem else (label if short == stem else short)
            sessions.append(SessionData(path=path, name=name, pool=pool, file_stamp=stamp, **meta))
    if not sessions:
        raise InputError(f"{', '.join(files)}: the dataset is empty (no sessions)")
    _check_unique_names(sessions)
    _check_same_schema(sessions)
    return Catalog(sessions=sessions, feature_names=sessions[0].feature_names,
                   target_names=sessions[0].target_names, paths=files)


def _scan_file(h5file, path, allow_external_links):
    """Metadata of every session of an open file, each checked (the slow, general path)."""
    return [_describe_session(path, group_name, group_name.strip("/") or Path(path).stem, group,
                              allow_external_links)
            for group_name, group in _walk_sessions(h5file, "/", path, allow_external_links)]


def _read_index(h5file, path):
    """Session metadata from the file's index, or None when it has none."""
    index = h5file.get(layout.INDEX)
    if not isinstance(index, h5py.Dataset) or index.attrs.get(layout.ATTR_VERSION) != layout.FORMAT_VERSION:
        return None
    attrs = index.attrs
    feature_names = layout.decode_names(attrs[layout.ATTR_FEATURE_NAMES])
    target_names = layout.decode_names(attrs[layout.ATTR_TARGET_NAMES])
    feature_dtype = _attr_str(attrs, "feature_dtype")
    target_dtype = _attr_str(attrs, "target_dtype")
    table = index[()]
    # Indexes written before labelled rows were kept have no column for them: every row has its target.
    labelled = table["labelled"] if "labelled" in table.dtype.names else table["rows"]
    lead = int(attrs.get(layout.ATTR_TARGET_LEAD, 0))
    return [{"group": g.decode(), "n_rows": int(n), "feature_names": feature_names,
             "target_names": target_names, "feature_dtype": feature_dtype, "target_dtype": target_dtype,
             "has_timestamps": bool(t), "labelled_rows": int(m), "target_lead": lead}
            for g, n, t, m in zip(table["group"], table["rows"], table["timestamps"], labelled)]


def _attr_str(attrs, key):
    value = attrs.get(key)
    return value.decode() if isinstance(value, bytes) else (None if value is None else str(value))


def write_index(path):
    """Check every session of a file and write its index (the file is modified in place)."""
    with open_file(path) as h5file:
        found = _scan_file(layout.small_metadata_cache(h5file), str(path), allow_external_links=False)
    if not found:
        raise InputError(f"{path}: holds no session to index")
    probe = [SessionData(path=str(path), name=m["group"], **m) for m in found]
    _check_same_schema(probe)
    first = found[0]
    width = max(len(m["group"].encode()) for m in found)
    table = np.zeros(len(found), dtype=[("group", f"S{width}"), ("rows", "<i8"), ("timestamps", "?"),
                                        ("labelled", "<i8")])
    table["group"] = [m["group"].encode() for m in found]
    table["rows"] = [m["n_rows"] for m in found]
    table["timestamps"] = [m["has_timestamps"] for m in found]
    table["labelled"] = [m["labelled_rows"] for m in found]
    try:
        h5file = h5py.File(path, "r+", rdcc_nbytes=0, libver=layout.LIBVER)
    except OSError as exc:
        from data.session import open_error
        raise open_error(path, exc, writing=True) from None
    with h5file:
        layout.small_metadata_cache(h5file)
        if layout.INDEX in h5file:
            del h5file[layout.INDEX]
        index = h5file.create_dataset(layout.INDEX, data=table)
        index.attrs[layout.ATTR_VERSION] = layout.FORMAT_VERSION
        index.attrs[layout.ATTR_FEATURE_NAMES] = layout.encode_names(first["feature_names"])
        index.attrs[layout.ATTR_TARGET_NAMES] = layout.encode_names(first["target_names"])
        index.attrs["feature_dtype"] = first["feature_dtype"]
        if first["target_dtype"]:
            index.attrs["target_dtype"] = first["target_dtype"]
        index.attrs[layout.ATTR_TARGET_LEAD] = first["target_lead"]
    return len(found)


def _walk_sessions(group, where, path, allow_external_links):
    """Yield (hdf5 path in this file, group) of every session group, depth first in name order.

    `where` is tracked here because a group reached through an external link
    reports its name in the other file.
    """
    if layout.FEATURES in group:
        yield where, group
        return
    if any(name in group for name in (layout.TARGETS, layout.TIMESTAMPS)) or \
            group.attrs.get(layout.ATTR_FORMAT) == layout.FORMAT_NAME:
        raise InputError(f"{path}: session {where!r} has no `features` dataset; add a 2-D "
                         "[rows, features] dataset named `features` (docs/data_format.md)")
    for name in sorted(group.keys()):
        child_path = f"{where.rstrip('/')}/{name}"
        link = group.get(name, getlink=True)
        if isinstance(link, h5py.ExternalLink):
            if not allow_external_links:
                raise InputError(
                    f"{path}: {child_path} is an external link to {link.filename}:{link.path}; refused "
                    "because it points outside the data; set data.allow_external_links=true if you trust it")
        elif isinstance(link, h5py.SoftLink):
            continue  # an alias of something walked elsewhere; following it would count it twice
        child = layout.open_member(group, name, path)        # (a damaged one is an error, not skipped)
        if isinstance(child, h5py.Group):
            yield from _walk_sessions(child, child_path, path, allow_external_links)


def _check_link(group, name, path, session, allow_external_links):
    link = group.get(name, getlink=True)
    if isinstance(link, h5py.ExternalLink) and not allow_external_links:
        raise InputError(
            f"{path}: session {session!r} `{name}` is an external link to {link.filename}:{link.path}; "
            "refused because it points outside the data; set data.allow_external_links=true if you trust it")


def _check_storage(dataset, path, session, allow_external_links):
    """Refuse virtual datasets with sources in other files and external raw storage."""
    if allow_external_links:
        return
    if dataset.is_virtual:
        outside = sorted({src.file_name for src in dataset.virtual_sources() if src.file_name != "."})
        if outside:
            raise InputError(
                f"{path}: session {session!r} `{dataset.name}` is a virtual dataset reading from "
                f"{', '.join(outside)}; refused because it points outside the data; set "
                "data.allow_external_links=true if you trust it")
    if dataset.external:
        raise InputError(
            f"{path}: session {session!r} `{dataset.name}` stores its data in external files "
            f"{', '.join(str(e[0]) for e in dataset.external)}; refused; set "
            "data.allow_external_links=true if you trust them")


def _check_numeric(dataset, path, session, what, kinds="fiu"):
    if dataset.dtype.kind not in kinds:
        if what == layout.TIMESTAMPS:
            raise InputError(
                f"{path}: session {session!r} `timestamps` has dtype {dataset.dtype}; store times as int64 "
                "nanoseconds since 1970 (UTC), e.g. by converting with `python main.py convert`, which reads "
                "ISO text and epoch numbers")
        raise InputError(
            f"{path}: session {session!r} `{what}` has dtype {dataset.dtype}, which is not numeric; "
            "store numbers (float32 is best), e.g. by converting with `python main.py convert`")


def _describe_session(path, group_name, name, group, allow_external_links):
    for dataset_name in (layout.FEATURES, layout.TARGETS, layout.TIMESTAMPS):
        if dataset_name in group:
            _check_link(group, dataset_name, path, name, allow_external_links)
    features = group[layout.FEATURES]
    if not isinstance(features, h5py.Dataset):
        raise InputError(f"{path}: session {name!r} `features` is a group, not a dataset; "
                         "store a 2-D [rows, features] dataset")
    if features.ndim != 2:
        raise InputError(
            f"{path}: session {name!r} `features` has shape {features.shape} ({features.ndim}-D); "
            "expected 2-D [rows, features]; reshape it (one row per time step)")
    _check_numeric(features, path, name, "features")
    _check_storage(features, path, name, allow_external_links)
    n_rows, n_features = features.shape
    if n_features == 0:
        # Issue 10, case 17: a (N, 0) dataset reached scikit-learn as a traceback.
        raise InputError(f"{path}: session {name!r} `features` has shape {features.shape}: no feature column; "
                         "write at least one column of inputs")

    target_names, target_dtype = [], None
    if layout.TARGETS in group:
        targets = group[layout.TARGETS]
        if not isinstance(targets, h5py.Dataset) or targets.ndim != 2:
            raise InputError(
                f"{path}: session {name!r} `targets` has shape {getattr(targets, 'shape', None)}; "
                "expected 2-D [rows, targets]; store one target column per column")
        if targets.shape[1] == 0:
            raise InputError(f"{path}: session {name!r} `targets` has shape {targets.shape}: no target column; "
                             "write at least one, or leave the `targets` dataset out")
        _check_numeric(targets, path, name, "targets")
        _check_storage(targets, path, name, allow_external_links)
        if targets.shape[0] != n_rows:
            raise InputError(
                f"{path}: session {name!r} has {n_rows} feature rows but {targets.shape[0]} target rows; "
                "write one target row per feature row")
        target_names = layout.read_names(group, layout.ATTR_TARGET_NAMES, targets.shape[1], "y")
        target_dtype = str(targets.dtype)

    has_timestamps = layout.TIMESTAMPS in group
    if has_timestamps:
        stamps = group[layout.TIMESTAMPS]
        if not isinstance(stamps, h5py.Dataset) or stamps.ndim != 1 or stamps.shape[0] != n_rows:
            raise InputError(
                f"{path}: session {name!r} `timestamps` has shape {getattr(stamps, 'shape', None)}; "
                f"expected ({n_rows},), one per row")
        _check_numeric(stamps, path, name, "timestamps", kinds="iu")
        _check_storage(stamps, path, name, allow_external_links)

    labelled = int(group.attrs.get(layout.ATTR_LABELLED_ROWS, n_rows))
    if not 0 <= labelled <= n_rows:
        raise InputError(f"{path}: session {name!r} attribute {layout.ATTR_LABELLED_ROWS} is {labelled}, outside "
                         f"[0, {n_rows}] rows; set it to the rows that have targets or delete it")
    lead = int(group.attrs.get(layout.ATTR_TARGET_LEAD, 0))
    if lead < 0:
        raise InputError(f"{path}: session {name!r} attribute {layout.ATTR_TARGET_LEAD} is {lead}; it must be >= 0 "
                         "(rows after its own row that a target describes)")
    return {"group": group_name, "n_rows": int(n_rows),
            "feature_names": layout.read_names(group, layout.ATTR_FEATURE_NAMES, n_features, "f"),
            "target_names": target_names, "feature_dtype": str(features.dtype), "target_dtype": target_dtype,
            "has_timestamps": has_timestamps, "labelled_rows": labelled, "target_lead": lead}


def _check_same_schema(sessions):
    first = sessions[0]
    # Columns are found by name (--price-column, data.target_columns, similar --columns): a name used twice,
    # or by a feature and a target, would pick one of them silently.
    names = list(first.feature_names) + list(first.target_names or [])
    repeated = first_repeated(names)
    if repeated is not None:
        raise InputError(f"{first.path}: session {first.name!r} names column {repeated!r} twice (features "
                         f"{list(first.feature_names)}, targets {list(first.target_names or [])}); rename one "
                         "(feature_names / target_names attributes) and run `python main.py index` on the file")
    for s in sessions[1:]:
        if s.feature_names != first.feature_names:
            differ = [f"{a}!={b}" for a, b in zip(first.feature_names, s.feature_names) if a != b]
            detail = ", ".join(differ[:3]) or f"{len(first.feature_names)} vs {len(s.feature_names)} columns"
            raise InputError(
                f"{s.path}: session {s.name!r} has feature names different from session {first.name!r} "
                f"({detail}); every session must have the same features in the same order")
        if s.feature_dtype != first.feature_dtype:
            raise InputError(
                f"{s.path}: session {s.name!r} features are {s.feature_dtype} but session {first.name!r} "
                f"features are {first.feature_dtype}; store all sessions with one dtype")
        if s.target_names != first.target_names:
            raise InputError(
                f"{s.path}: session {s.name!r} target columns {s.target_names} differ from session "
                f"{first.name!r} {first.target_names}; every session must have the same targets")
        if s.target_lead != first.target_lead:
            raise InputError(
                f"{s.path}: session {s.name!r} targets describe the row {s.target_lead} after their own "
                f"({layout.ATTR_TARGET_LEAD}) but session {first.name!r} targets the row {first.target_lead} after; "
                "convert all sessions with one target definition")


def time_text(ns):
    """A time (int ns) as short ISO text: 2017-11-06 at midnight, 2017-11-06T09:30:00 to the second, the
    fraction only where there is one (it printed 2017-11-06T00:00:00.000000000)."""
    stamp = np.datetime64(int(ns), "ns")
    if int(ns) % 86_400_000_000_000 == 0:
        return str(stamp.astype("datetime64[D]"))
    text = str(stamp.astype("datetime64[s]")) if int(ns) % 1_000_000_000 == 0 else str(stamp).rstrip("0")
    return text


def check_time_order(catalog):
    """Refuse sessions whose timestamps go back or repeat (issue 10, case 7): splits by time, the
    embargo and `predict`'s target times all assume rows in time order. Read through a pool of its own
    with one open session: through the run's pool (64 open sessions) every session's timestamp cache
    stayed filled after the pass, 1 MiB each (predict on 105 sessions: +70 MB)."""
    pool = HandlePool(ChunkCache(nbytes=2 ** 20), max_open=1)
    try:
        _check_order(catalog, pool)
    finally:
        pool.close()


def _check_order(catalog, pool):
    for s in catalog.sessions:
        if not s.has_timestamps:
            continue
        problem = scratch_copy(s, pool).time_order_problem()
        if problem is not None:
            row, before, at = problem
            raise InputError(
                f"{s.path}: session {s.name!r} row {row} has time {time_text(at)}, not after row {row - 1}'s "
                f"{time_text(before)} (timestamps go back or repeat); sort the rows by time, or set "
                "data.check_time_order=false to train on them in stored order")


def describe(paths, *, allow_external_links=False):
    """What `inspect` shows: per file and session rows, columns, dtypes, chunking, compression, size."""
    catalog = open_catalog(paths, allow_external_links=allow_external_links)
    files = []
    for path in catalog.paths:
        entries = []
        with open_file(path) as h5file:
            for s in (s for s in catalog.sessions if s.path == path):
                group = layout.open_member(h5file, s.group, path) if s.group not in ("", "/") else h5file
                if group is None:
                    raise InputError(f"{path}: session {s.name!r} is in the file's index but not in the file; "
                                     f"run `python main.py index {path}`")
                entry = {"session": s.name, "group": s.group, "rows": s.n_rows}
                if s.has_timestamps:
                    problem = s.time_order_problem()
                    entry["time_order"] = "increasing" if problem is None else \
                        f"row {problem[0]} at {time_text(problem[2])} is not after {time_text(problem[1])}"
                for dataset_name in (layout.FEATURES, layout.TARGETS, layout.TIMESTAMPS):
                    d = layout.open_member(group, dataset_name, path)
                    if d is None:
                        continue
                    entry[dataset_name] = {
                        "shape": list(d.shape), "dtype": str(d.dtype),
                        "chunks": list(d.chunks) if d.chunks else None,
                        "compression": layout.compression_name(d),
                        "stored_bytes": int(d.id.get_storage_size()),
                    }
                entries.append(entry)
        files.append({"path": path, "size_bytes": os.path.getsize(path), "sessions": entries})
    disordered = [e["session"] for f in files for e in f["sessions"] if e.get("time_order", "increasing") != "increasing"]
    return {
        "n_sessions": len(catalog.sessions), "n_rows": catalog.n_rows, "time_disordered_sessions": disordered,
        "feature_names": catalog.feature_names, "feature_dtype": catalog.sessions[0].feature_dtype,
        "target_names": catalog.target_names, "target_dtype": catalog.sessions[0].target_dtype,
        "has_timestamps": all(s.has_timestamps for s in catalog.sessions),
        "files": files,
        "total_size_bytes": sum(f["size_bytes"] for f in files),
        "min_rows": int(np.min([s.n_rows for s in catalog.sessions])),
        "max_rows": int(np.max([s.n_rows for s in catalog.sessions])),
    }


def index_files(paths):
    """`index`: write a session index into each HDF5 file of `paths` (files, folders, globs); a prediction
    or index file found in a folder is not data and is left alone. Yields (path, sessions indexed)."""
    from data.session import open_file
    searched = set()
    for path in resolve_paths(paths, searched):
        if path in searched:
            with open_file(path) as h5file:
                if other_output(h5file):
                    continue
        yield path, write_index(path)
