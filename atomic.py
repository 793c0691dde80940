"""Write-then-rename, so a crash or a bad input never leaves a half-written output
or destroys the previous one."""

import contextlib
import errno
import fnmatch
import functools
import json
import math
import os
import re
import shutil
import socket
import time
from pathlib import Path

# Temporaries carry the writer's pid and host, so a later run can tell a dead writer's litter from a live
# one's: on a filesystem several hosts share, a pid of another host says nothing here.
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-(?P<pid>\d+)(?:@(?P<host>[^-/]+))?(?:-[^/]*)?$")


@functools.lru_cache(maxsize=1)
def _host():
    return socket.gethostname().replace("-", "_").replace("/", "_") or "host"


def writer_tag():
    """PID@HOST of this process, as temporaries carry it ('-' in the host name written '_')."""
    return f"{os.getpid()}@{_host()}"


def process_alive(pid):
    """Whether process `pid` exists (anyone's); an impossible pid counts as alive: leave its files alone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True                 # someone else's live process
    except (OverflowError, ValueError):
        return True                 # no process id at all: not a temporary of ours, left alone
    return True


def clean_stale_temps(path):
    """Remove the temporaries of `path` (.NAME.tmp-PID..., .NAME.old-PID) left by writers that are gone
    (a SIGKILL mid-write); a live writer's are left alone. Returns the paths removed."""
    path = Path(path)
    removed = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP.match(entry.name)
        if not match or match["name"] != path.name or match["host"] not in (None, _host()):
            continue                  # (another host's writer: alive or not, not ours to judge)
        if process_alive(int(match["pid"])):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(entry.path)
        except OSError:
            pass
    return removed


def _fsync_dir(folder):
    # A rename is durable only once the directory entry is on disk.
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _appeared(path):
    from errors import InputError
    return InputError(f"{path}: appeared while this command ran (another process wrote it); it was kept and this "
                      "command's output dropped: pass --overwrite to replace it, or choose another path")


# Free space an output needs beyond its own size: HDF5 writes up to a few MB of chunk and metadata cache
# when a file closes, and a write that hits a full disk left h5py crashing (rc 139) after tracebacks.
MIN_FREE_BYTES = 16 * 2**20


def check_space(path, need=0, what="output", headroom=MIN_FREE_BYTES):
    """Refuse writing `path` (an output of about `need` bytes) where the disk lacks the room plus
    `headroom`, before HDF5 runs into it: one line naming the folder, what is free and the remedy."""
    from errors import InputError
    path = Path(path)
    folder = next((p for p in [path.parent, *path.parent.parents] if p.exists()), Path("."))
    free = shutil.disk_usage(folder).free
    if free < need + headroom:
        needed = f"; about {need / 2**20:,.1f} MiB needed" if need else ""
        raise InputError(f"{path}: no space left on device for the {what} ({free / 2**20:,.1f} MiB free in {folder}"
                         f"{needed}, plus {headroom / 2**20:,.2g} MiB of headroom); free some space or write it "
                         "elsewhere (nothing was written)")


class SpaceGuard:
    """check_space() at most every `every_s` seconds, for loops that write a growing output."""

    def __init__(self, path, what="output", every_s=0.01):
        self.path, self.what, self.every_s = path, what, every_s
        self._at = -math.inf

    def check(self):
        now = time.monotonic()
        if now - self._at >= self.every_s:
            self._at = now
            check_space(self.path, what=self.what)


@contextlib.contextmanager
def _full_disk_is_one_line(path, what):
    """A full disk met while writing `path` (OSError ENOSPC, from h5py too) as one line."""
    try:
        yield
    except OSError as exc:
        if getattr(exc, "errno", None) != errno.ENOSPC and "No space left on device" not in str(exc):
            raise
        from errors import InputError
        raise InputError(f"{path}: no space left on device while writing it; free some space or write it "
                         f"elsewhere (nothing was written; an existing {what} is as it was)") from None


@contextlib.contextmanager
def atomic_path(path, replace=True, space=True, own_errors=False, need=0, what="output"):
    """Yield a temporary path beside `path`; on success fsync it and rename it to `path`, on any error
    delete it and leave `path` as it was. With `replace` False (a user's output without --overwrite) the
    final step refuses a `path` that appeared meanwhile (a hard link never replaces: two writers of one
    output cannot both win). A dead writer's temporaries of `path` are removed first; `space` checks the
    folder has room for `need` bytes and HDF5's headroom first; a full disk met while writing is one
    line, unless `own_errors` (the caller words it: checkpoints)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path)
    if space:                       # (checkpoints handle a full disk themselves: "the previous one is intact")
        check_space(path, need, what)
    tmp = path.with_name(f".{path.name}.tmp-{writer_tag()}")
    try:
        with contextlib.nullcontext() if own_errors else _full_disk_is_one_line(path, "file"):
            yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise _appeared(path) from None
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV):
                    raise
                if path.exists():           # a filesystem without hard links: check, then rename
                    raise _appeared(path) from None
                os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path, obj):
    """Write `obj` as indented JSON to `path` atomically."""
    with atomic_path(path, space=False) as tmp:      # (small files: no HDF5 headroom needed)
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


def check_output_dir(path, overwrite=False, what="report", reads=(), owns=None):
    """`check_output` for an output folder (a backtest report, a similar-window index): refused when it
    exists without `overwrite`, is a file, is or holds one of the command's inputs `reads`, holds anything
    that the command does not write (`owns`: glob patterns of its entries; --overwrite replaces only a
    folder this command wrote, never a training run or a folder of other files), or cannot be written.
    Returns the path."""
    from errors import InputError
    path = Path(path)
    check_not_input(path, reads, folder=True)
    if path.exists() and not overwrite:
        raise InputError(f"{path}: already exists; pass --overwrite to replace it (replaced only once the new "
                         f"{what} is complete)")
    if path.exists() and not path.is_dir():
        raise InputError(f"{path}: is a file; --out names a folder for the {what}")
    if path.is_dir() and owns is not None:
        check_owned(path, owns, what)
    _check_writable_parent(path)
    return path


def check_owned(path, owns, what):
    """Refuse replacing folder `path` when it holds an entry not matching the patterns `owns`."""
    from errors import InputError
    foreign = sorted(entry.name for entry in os.scandir(path)
                     if not any(fnmatch.fnmatchcase(entry.name, pattern) for pattern in owns))
    if foreign:
        raise InputError(f"{path}: holds {foreign[0]}" + (f" and {len(foreign) - 1} more" if len(foreign) > 1 else "")
                         + f", not written by this command's {what}; --overwrite replaces only a {what} folder: "
                         "choose another --out (nothing was removed)")


def _check_writable_parent(path):
    """The nearest existing folder above `path` must be a writable folder (not a file)."""
    from errors import InputError
    parent = next((p for p in [path.parent, *path.parent.parents] if p.exists()), Path("."))
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise InputError(f"{path}: cannot be written ({parent} is not a writable folder); choose another path")


@contextlib.contextmanager
def atomic_dir(path, replace=False, owns=None, what="output", need=0):
    """Yield a temporary folder beside `path`, renamed to `path` on success; on any error it is deleted
    and `path` is left as it was. A `path` that exists then is replaced only with `replace` (--overwrite)
    and, with `owns`, only when it holds nothing but what the command writes (checked again at the
    rename: it may have changed meanwhile); the old folder is removed only after the rename. A dead
    writer's temporaries of `path` are removed first; the folder must have room for `need` bytes."""
    import tempfile
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path)
    check_space(path, need, what)
    work = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-{writer_tag()}-", dir=path.parent))
    try:
        with _full_disk_is_one_line(path, "folder"):
            yield work
        if path.exists() or path.is_symlink():
            if not replace:
                raise _appeared(path)
            if owns is not None:
                check_owned(path, owns, what)
            old = path.with_name(f".{path.name}.old-{writer_tag()}")
            os.replace(path, old)
            os.replace(work, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:
                os.rename(work, path)          # onto an empty folder made meanwhile: it had nothing to lose
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                    raise _appeared(path) from None
                raise
        _fsync_dir(path.parent)
    finally:
        shutil.rmtree(work, ignore_errors=True)
