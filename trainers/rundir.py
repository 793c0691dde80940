"""A trained run's directory: its layout and every rule about it, in one place. Every other module asks
a RunDir for a path instead of naming the file.

    RUN/config.yaml                  the resolved config the run trained with
    RUN/normalizer.json              the statistics of its train split
    RUN/checkpoints/{last,best}.pt   trainers/checkpoint.py
    RUN/metrics_<split>.json         evaluate's result (metrics_<split>.data-changed.json: on data that
                                     changed since the checkpoint, written beside it, never over it)
    RUN/tensorboard/                 trainers/monitor.py
    .RUN.lock                        beside it: the process using the run (RunLock, on the resolved path)

The rules the trust work fixed live here too: the lock, the check of config.yaml and the data against the
checkpoint before a run is scored or resumed (`restore`), and a run replaced with --overwrite moved aside
only after every check and put back on any failure (`RunDir.starting`).
"""

import contextlib
import datetime
import os
import shutil
import sys
from pathlib import Path

import yaml

from atomic import atomic_path, process_alive, write_json
from config import Config
from errors import InputError
from schema import flatten, from_dict, to_dict


class RunDir:
    CONFIG = "config.yaml"
    NORMALIZER = "normalizer.json"
    CHECKPOINTS = "checkpoints"
    TENSORBOARD = "tensorboard"

    def __init__(self, path):
        self.path = Path(path)

    def __str__(self):
        return str(self.path)

    @classmethod
    def new(cls, config):
        """A fresh run directory (not created: a run creates it once its data and plan check out)."""
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = Path(config.output.runs_dir) / f"{config.profile}-{stamp}"
        n = 1
        while path.exists():
            n += 1
            path = Path(config.output.runs_dir) / f"{config.profile}-{stamp}-{n}"
        return cls(path)

    # --- where things are ---------------------------------------------------------------
    @property
    def config(self):
        return self.path / self.CONFIG

    @property
    def normalizer(self):
        return self.path / self.NORMALIZER

    @property
    def checkpoints(self):
        return self.path / self.CHECKPOINTS

    @property
    def tensorboard(self):
        return self.path / self.TENSORBOARD

    def metrics(self, split, data_changed=False):
        return self.path / (f"metrics_{split}.data-changed.json" if data_changed else f"metrics_{split}.json")

    def inputs(self):
        """The files a command scoring the run reads (its outputs must never be one of them)."""
        return [self.config, self.normalizer] + sorted(self.checkpoints.glob("*"))

    def holds_run(self):
        return self.config.exists() or self.checkpoints.exists()

    # --- checks -------------------------------------------------------------------------
    def check(self):
        """A run directory that cannot be one is refused before any work: a file, or a path under a file."""
        blocker = next((p for p in [self.path, *self.path.parents] if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            what = "is a file" if blocker == self.path else f"is under {blocker}, a file"
            raise InputError(f"{self.path}: {what}; --run-dir names a folder for the run")
        return self

    def lock(self, enabled=True):
        return RunLock(self.path, enabled)

    # --- what is in it ------------------------------------------------------------------
    def save_config(self, config):
        with atomic_path(self.config, space=False) as tmp:     # (a few hundred bytes)
            tmp.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))

    def load_config(self):
        if not self.config.exists():
            raise InputError(f"{self.path}: not a run directory (no config.yaml); give the directory a "
                             "training run printed")
        from config import migrate_flat_model_keys, read_yaml
        return from_dict(Config, migrate_flat_model_keys(read_yaml(self.config)), "")

    def save_normalizer(self, normalizer):
        normalizer.save(self.normalizer)

    def write_metrics(self, split, result, checkpoint, data_changed=(), speak=True):
        """metrics_<split>.json; on changed data the result names the change and goes beside it."""
        if data_changed:
            result["data_changed"] = list(data_changed)
            if speak:
                print(f"warning: {self.path}: the data changed since checkpoint {checkpoint} was trained "
                      f"({'; '.join(data_changed)}); metrics written to {self.metrics(split, True).name}, {split} "
                      f"split of the data as it is now; metrics_{split}.json is kept", file=sys.stderr)
        if speak:
            write_json(self.metrics(split, bool(data_changed)), result)

    @contextlib.contextmanager
    def starting(self, replacing=False, new=True, enabled=True):
        """The start of a run, up to its first step: the directory is made on entry (after the caller's
        data checks), a run replaced with --overwrite moved aside first; on any failure inside, what a `new`
        start made is removed and the old run put back; on success the old run is removed. `enabled`: False
        on the ranks other than 0, which write nothing."""
        if not enabled:
            yield
            return
        fresh = new and (replacing or not self.path.exists())
        aside = self.path.with_name(f".{self.path.name}.old-{os.getpid()}")
        created = False
        try:
            if replacing:
                os.replace(self.path, aside)
            created = fresh
            self.path.mkdir(parents=True, exist_ok=True)
            yield
        except BaseException:
            if created:
                shutil.rmtree(self.path, ignore_errors=True)
                if aside.exists():
                    os.replace(aside, self.path)                 # the old run, untouched
            raise
        if aside.exists():
            shutil.rmtree(aside, ignore_errors=True)             # every check passed: the new run replaces it


class RunLock:
    """`.<run>.lock` beside a run directory, holding the pid of the process that uses the run: two
    trainings of one directory would mix one's config with the other's checkpoints (issue 10, case
    13). A lock whose process is gone (killed, crashed) is taken over."""

    def __init__(self, run_dir, enabled=True):
        # Of the resolved path: a symlink to a run (or a path through one) takes the run's own lock.
        real = Path(run_dir).resolve()
        self.path = real.parent / f".{real.name}.lock"
        self.run_dir = run_dir
        self.enabled = enabled

    def __enter__(self):
        if not self.enabled:
            return self
        # The parent (runs/) is made for the lock if missing, and removed again if the run made nothing
        # in it: a failed start leaves no directory behind (issue 10, case 15).
        self.made_parent = not self.path.parent.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    pid = int(self.path.read_text().strip() or 0)
                except (OSError, ValueError):
                    pid = 0
                if pid and process_alive(pid):
                    raise InputError(f"{self.run_dir}: in use by process {pid} (lock {self.path}); wait for it, "
                                     "or stop it, or train into another --run-dir") from None
                self.path.unlink(missing_ok=True)       # its process is gone: take the lock over
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
            return self
        raise InputError(f"{self.run_dir}: cannot take the lock {self.path}; remove it if no run uses it")

    def __exit__(self, *exc):
        if self.enabled:
            self.path.unlink(missing_ok=True)
            if self.made_parent and not any(self.path.parent.iterdir()):
                self.path.parent.rmdir()


def restore(run_dir, config=None, prepared=None, which=None):
    """(config, checkpoint state, prepared data, the checkpoint's name), config.yaml checked against the
    checkpoint first. `which` None: `best`, or `last` where the run has no `best` yet, said so on stderr
    (issue 10, case 11); a named one that does not exist is an error (Checkpointer.load)."""
    from data.dataset import prepare_data
    from data.normalize import Normalizer
    from trainers.checkpoint import Checkpointer
    run = RunDir(run_dir)
    config = config or run.load_config()
    checkpoints = Checkpointer(run.path)
    if which is None:
        which = "best" if checkpoints.exists("best") else "last"
        if which == "last" and checkpoints.exists("last"):
            print(f"{run_dir}: no `best` checkpoint yet; scoring `last`", file=sys.stderr)
    state = checkpoints.load(which)
    check_config_matches(config, state, run.path, which)
    if prepared is None:
        prepared = prepare_data(config.data, seed=config.seed, progress=False,
                                normalizer=Normalizer.from_json(state["normalizer"]))
    return config, state, prepared, which


def check_config_matches(config, state, run_dir, which):
    """The run's config.yaml must be the config its checkpoint was trained with (up to what a resume may
    change): a hand-edited lookback or column list scored other windows with exit 0."""
    from config import RESUME_KEYS, migrate_flat_model_keys
    from models import is_import_path
    if "config" not in state:                    # checkpoints from before the config was saved in them
        return
    try:                                         # read as a config.yaml is (older layouts migrated, defaults filled)
        then = flatten(to_dict(from_dict(Config, migrate_flat_model_keys(state["config"]))))
    except InputError:
        return                                   # a config of an older version that no longer loads: nothing to compare
    now = flatten(to_dict(config))
    used = "custom" if is_import_path(config.model.name) else config.model.name
    for key in sorted(set(now) | set(then)):
        if key in RESUME_KEYS or now.get(key) == then.get(key):
            continue
        parts = key.split(".")
        if parts[0] == "model" and len(parts) > 2 and parts[1] != used:
            continue                             # another model's section: not what this run builds
        raise InputError(f"{RunDir(run_dir).config}: {key} is {now.get(key)!r}, but checkpoint {which} was trained "
                         f"with {then.get(key)!r}; the model would be scored on other inputs: restore the value in "
                         "config.yaml, or train a new run with the new setting")


def data_changes(state, prepared):
    """How the data differs from what the checkpoint was trained on (words), [] when it matches."""
    from data.dataset import fingerprint_changes
    return fingerprint_changes(state["data"], prepared.fingerprint()) if "data" in state else []
