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


def check_output(path, overwrite=False):
    """Refuse an output path before any work is done: a directory, an existing file without
    `overwrite`, or a folder that cannot be written. Returns the path."""
    from errors import InputError
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a directory; give a file name for the output, e.g. {path / 'out.h5'}")
    if path.exists() and not overwrite:
        raise InputError(f"{path}: already exists; pass --overwrite to replace it (it is replaced only "
                         "after the new file is complete)")
    parent = next((p for p in [path.parent, *path.parent.parents] if p.exists()), Path("."))
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise InputError(f"{path}: cannot be written ({parent} is not a writable folder); choose another path")
    return path
