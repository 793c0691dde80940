"""Write-then-rename, so a crash or a bad input never leaves a half-written output
or destroys the previous one."""

import contextlib
import json
import os
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; on success fsync it and rename it over
    `path`, on any error delete it and leave `path` as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        # The rename is durable only once the directory entry is on disk.
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path, obj):
    """Write `obj` as indented JSON to `path` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")


def check_not_input(path, reads, folder=False):
    """Refuse an output that would replace what the command reads (--overwrite or not): one of the input
    files or folders `reads`, or, for an output folder (replaced whole), a folder holding one of them or
    the folder the command runs in (or one above it)."""
    from errors import InputError
    out = Path(path).resolve()
    here = Path.cwd().resolve()
    if folder and (out == here or out in here.parents):
        raise InputError(f"{path}: is the folder this command runs in (or one above it), and would be replaced "
                         "whole; write the output elsewhere")
    for source in reads:
        source = Path(source).resolve()
        if out == source:
            raise InputError(f"{path}: is {source}, which this command reads; write the output elsewhere")
        if folder and out in source.parents:
            raise InputError(f"{path}: holds {source}, which this command reads, and would be replaced whole; "
                             "write the output elsewhere")


def check_outputs_distinct(named):
    """Refuse two outputs of one command on the same path ({flag: path}, None for one not asked for)."""
    from errors import InputError
    seen = {}
    for flag, path in named.items():
        if path is None:
            continue
        key = Path(path).resolve()
        if key in seen:
            raise InputError(f"{seen[key]} and {flag} are both {path}; give each output its own path")
        seen[key] = flag


def check_output(path, overwrite=False, reads=(), suffixes=None):
    """Refuse an output path before any work is done: a directory, an existing file without
    `overwrite`, one of the command's inputs `reads`, a name not ending in one of `suffixes` (when given:
    an HDF5 file named .csv would be read as a CSV), or a folder that cannot be written. Returns the path."""
    from errors import InputError
    path = Path(path)
    check_not_input(path, reads)
    if path.is_dir():
        raise InputError(f"{path}: is a directory; give a file name for the output, e.g. {path / 'out.h5'}")
    if suffixes and path.suffix.lower() not in suffixes:
        names = f"{', '.join(suffixes[:-1])} or {suffixes[-1]}" if len(suffixes) > 1 else suffixes[0]
        raise InputError(f"{path}: name the output with {names} (what it holds; a folder of data is searched for "
                         "those)")
    if path.exists() and not overwrite:
        raise InputError(f"{path}: already exists; pass --overwrite to replace it (it is replaced only "
                         "after the new file is complete)")
    _check_writable_parent(path)
    return path


def check_output_dir(path, overwrite=False, what="report", reads=()):
    """`check_output` for an output folder (a backtest report, a similar-window index): refused when it
    exists without `overwrite`, is a file, is or holds one of the command's inputs `reads`, or cannot be
    written. Returns the path."""
    from errors import InputError
    path = Path(path)
    check_not_input(path, reads, folder=True)
    if path.exists() and not overwrite:
        raise InputError(f"{path}: already exists; pass --overwrite to replace it (replaced only once the new "
                         f"{what} is complete)")
    if path.exists() and not path.is_dir():
        raise InputError(f"{path}: is a file; --out names a folder for the {what}")
    _check_writable_parent(path)
    return path


def _check_writable_parent(path):
    """The nearest existing folder above `path` must be a writable folder (not a file)."""
    from errors import InputError
    parent = next((p for p in [path.parent, *path.parent.parents] if p.exists()), Path("."))
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise InputError(f"{path}: cannot be written ({parent} is not a writable folder); choose another path")


@contextlib.contextmanager
def atomic_dir(path):
    """Yield a temporary folder beside `path`, renamed over `path` on success (the old one, if any,
    removed only then); on any error it is deleted and `path` is left as it was."""
    import shutil
    import tempfile
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield work
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(work, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(work, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
