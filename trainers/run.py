"""A run from start to end: run directory, data, trainer, test evaluation.

The CLI (main.py) calls `train` and `evaluate` here (`predict` is trainers/predict.py); each takes a Config
(or a run directory) and returns plain results.
"""

import dataclasses
import datetime
import logging
import os
import shutil
import signal
import sys
from pathlib import Path

import torch
import yaml

from atomic import atomic_path, check_space, process_alive, write_json
from config import Config, DataConfig
from schema import flatten, from_dict, to_dict
from data.dataset import prepare_data
from data.normalize import Normalizer
from errors import InputError
from models import check_model_config, is_import_path
from trainers.checkpoint import Checkpointer
from trainers.distributed import Group
from trainers.evaluator import Evaluator
from trainers.trainer import Trainer, amp_setup

log = logging.getLogger("h5series")


def new_run_dir(config):
    """A fresh run directory's path (not created: a run creates it once its data and plan check out)."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(config.output.runs_dir) / f"{config.profile}-{stamp}"
    n = 1
    while run_dir.exists():
        n += 1
        run_dir = Path(config.output.runs_dir) / f"{config.profile}-{stamp}-{n}"
    return run_dir


def save_config(config, run_dir):
    with atomic_path(Path(run_dir) / "config.yaml", space=False) as tmp:     # (a few hundred bytes)
        tmp.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


def load_run_config(run_dir):
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        raise InputError(f"{run_dir}: not a run directory (no config.yaml); give the directory a "
                         "training run printed")
    from config import migrate_flat_model_keys, read_yaml
    return from_dict(Config, migrate_flat_model_keys(read_yaml(path)), "")


def check_run_dir(run_dir):
    """A run directory that cannot be one is refused before any work: a file, or a path under a file."""
    run_dir = Path(run_dir)
    blocker = next((p for p in [run_dir, *run_dir.parents] if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        what = "is a file" if blocker == run_dir else f"is under {blocker}, a file"
        raise InputError(f"{run_dir}: {what}; --run-dir names a folder for the run")
    return run_dir


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


def train(config, run_dir=None, resume=False, group=None, overwrite=False, profile_source=None):
    """Train (or resume) a run; evaluates the best checkpoint on the test split at the end.

    Under torchrun every rank calls this with its `group`; rank 0 alone writes files and prints.
    A run directory is locked while in use; an existing run is replaced only with `overwrite`.
    `profile_source`: why this profile (the CLI says whether --profile or main.py's SELECTED_CONFIG chose it).
    """
    group = group or Group()
    if not resume and group.is_main:
        run_dir = check_run_dir(run_dir) if run_dir else new_run_dir(config)
    run_dir = Path(group.broadcast_object(str(run_dir)))   # one directory for all ranks (named by rank 0)
    with RunLock(run_dir, enabled=group.is_main):
        return _train(config, run_dir, resume, group, overwrite, profile_source)


def describe_run(config, profile_source=None):
    """The first line of a run: which profile (and why, when the CLI says), and what it will do."""
    tc, m = config.training, config.model
    steps = f", at most {tc.max_steps_per_epoch} steps each" if tc.max_steps_per_epoch else ""
    why = f" ({profile_source})" if profile_source else ""
    line = (f"profile {config.profile}{why}: model {m.name}, {tc.epochs} epochs{steps}, batch {tc.batch_size}, "
            f"lookback {config.data.lookback}, horizon {config.data.horizon}")
    if config.profile == "quick_demo" and config.data.paths != DataConfig().paths:      # not the demo file
        line += ("\nnote: quick_demo is the demo profile (a small model, short epochs); for your own data "
                 "choose --profile default (or low_memory / high_performance)")
    return line


def _train(config, run_dir, resume, group, overwrite, profile_source=None):
    state, normalizer, replacing = None, None, False
    if resume:
        config = config or load_run_config(run_dir)
    check_model_config(config.model)          # an unimportable model stops before the data is read
    if group.is_main:
        print(describe_run(config, None if resume else profile_source))
    if resume:
        checkpoints = Checkpointer(run_dir)
        if checkpoints.exists("last"):
            state = checkpoints.load("last")
            normalizer = Normalizer.from_json(state["normalizer"])
            done = int(state["epoch"])
            if done > config.training.epochs:       # (the saved config would claim fewer than were trained)
                raise InputError(f"training.epochs={config.training.epochs}: {run_dir} has already trained {done} "
                                 f"epochs; give {done} or more (more continues it)")
        elif group.is_main:
            print(f"{run_dir}: no checkpoint yet (stopped in its first epoch); starting it again")
    elif group.is_main and ((run_dir / "config.yaml").exists() or (run_dir / "checkpoints").exists()):
        if not overwrite:
            raise InputError(f"{run_dir}: already holds a run; continue it with `train --resume {run_dir}`, "
                             "train into another --run-dir, or pass --overwrite to replace it")
        _check_replaceable(run_dir, config.data.paths)
        replacing = True
    created = False                           # set once this start made the directory (removed again on failure)
    fresh = not resume and (replacing or not run_dir.exists())
    aside = run_dir.with_name(f".{run_dir.name}.old-{os.getpid()}")      # the replaced run, until the new one starts
    try:
        # Data, model and memory plans are checked before training; a start that fails on them
        # leaves no empty run directory behind (issue 10, case 15), and a run replaced with --overwrite
        # is moved aside only once the data checks out, and put back if anything later fails.
        prepared = prepare_data(config.data, seed=config.seed, normalizer=normalizer, progress=group.is_main)
        if group.is_main:
            if replacing:
                os.replace(run_dir, aside)
            created = fresh
            run_dir.mkdir(parents=True, exist_ok=True)
        group.barrier()
        if group.is_main:
            save_config(config, run_dir)          # on resume: with the overrides it took (training.epochs)
        if state is None and group.is_main:
            prepared.normalizer.save(run_dir / "normalizer.json")
        # A resumed run keeps the session order its embedding rows were learned in.
        trainer = Trainer(config, prepared, run_dir, group=group,
                          vocabulary=state.get("session_vocabulary") if state is not None else None)
        if group.is_main:
            # Room for its two checkpoints, else one line (a full disk left a run of config.yaml alone)
            check_space(trainer.checkpoints.dir, need=2 * trainer.checkpoints.expected_bytes(trainer.model),
                        what="run", headroom=1 << 16)
        if state is not None:
            trainer.load(state)
            if group.is_main:
                print(f"resuming {run_dir} in epoch {trainer.epoch + 1}, at step {trainer.step}")
        trainer.preflight()
    except BaseException:
        if created and group.is_main:
            shutil.rmtree(run_dir, ignore_errors=True)
            if aside.exists():
                os.replace(aside, run_dir)                 # the old run, untouched
        raise
    if group.is_main and aside.exists():
        shutil.rmtree(aside, ignore_errors=True)           # every check passed: the new run replaces it
    stopped = trainer.fit()
    if stopped is not None:
        name = signal.Signals(stopped).name
        if group.is_main:
            print(f"{name}: saved {trainer.checkpoints.path('last')}; continue with "
                  f"`python main.py train --resume {run_dir}`")
        return {"run_dir": str(run_dir), "stopped_by": name}
    result = evaluate(run_dir, "test", prepared=prepared, config=config, trainer=trainer)
    if group.is_main:
        hparams_monitor(config, run_dir, result)
    return {"run_dir": str(run_dir), "test": result}


def _check_replaceable(run_dir, data_paths):
    """--overwrite removes the whole run directory: never one holding the data the run reads (data kept
    beside a run's config.yaml), nor the folder the command runs in or one above it."""
    from atomic import check_not_input
    from data.catalog import resolve_paths
    check_not_input(run_dir, resolve_paths(data_paths), folder=True)


def hparams_monitor(config, run_dir, result):
    if not config.output.tensorboard:
        return
    from trainers.monitor import Monitor
    monitor = Monitor(Path(run_dir), True)
    model = to_dict(config)["model"]
    # The chosen model's own section, not every model's defaults.
    section = ("custom", model["custom"]) if is_import_path(config.model.name) else \
        (config.model.name, model.get(config.model.name) or {})
    flat = {f"model.{k}": model[k] for k in ("name", "task", "quantiles")}
    flat.update({f"model.{section[0]}.{k}": v for k, v in section[1].items()})
    flat.update({f"training.{k}": v for k, v in to_dict(config)["training"].items()
                 if k in ("batch_size", "learning_rate", "epochs", "amp", "scheduler")})
    flat.update({"data.lookback": config.data.lookback, "data.horizon": config.data.horizon})
    monitor.hparams(flat, {f"test_{k}": v for k, v in result.items() if isinstance(v, float)})
    monitor.close()


def restore(run_dir, config=None, prepared=None, which=None):
    """(config, checkpoint state, prepared data, the checkpoint's name). `which` None: `best`, or
    `last` where the run has no `best` yet, said so on stderr (issue 10, case 11); a named one
    that does not exist is an error (Checkpointer.load)."""
    config = config or load_run_config(run_dir)
    checkpoints = Checkpointer(run_dir)
    if which is None:
        which = "best" if checkpoints.exists("best") else "last"
        if which == "last" and checkpoints.exists("last"):
            print(f"{run_dir}: no `best` checkpoint yet; scoring `last`", file=sys.stderr)
    state = checkpoints.load(which)
    check_config_matches(config, state, Path(run_dir), which)
    if prepared is None:
        prepared = prepare_data(config.data, seed=config.seed, progress=False,
                                normalizer=Normalizer.from_json(state["normalizer"]))
    return config, state, prepared, which


def check_config_matches(config, state, run_dir, which):
    """The run's config.yaml must be the config its checkpoint was trained with (up to what a resume may
    change): a hand-edited lookback or column list scored other windows with exit 0."""
    from config import RESUME_KEYS, migrate_flat_model_keys
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
        raise InputError(f"{run_dir / 'config.yaml'}: {key} is {now.get(key)!r}, but checkpoint {which} was trained "
                         f"with {then.get(key)!r}; the model would be scored on other inputs: restore the value in "
                         "config.yaml, or train a new run with the new setting")


def data_changes(state, prepared):
    """How the data differs from what the checkpoint was trained on (words), [] when it matches."""
    from data.dataset import fingerprint_changes
    return fingerprint_changes(state["data"], prepared.fingerprint()) if "data" in state else []


@dataclasses.dataclass
class LoadedRun:
    """A trained run, ready to forecast: its config, its data read with its own statistics, and its
    model (the checkpoint's weights, eval mode, on the config's device)."""

    config: Config
    prepared: object          # data.dataset.PreparedData
    model: torch.nn.Module
    checkpoint: str           # best or last
    epoch: int                # epochs completed when the checkpoint was saved
    vocabulary: list          # names of the sessions the run trained on (its session embedding's rows)
    data_changed: list = dataclasses.field(default_factory=list)   # how its data differs from the checkpoint's

    def session_codes(self, catalog):
        """(S,) embedding codes of a catalog's sessions for this run's model (0: a session it never saw)."""
        from trainers.trainer import session_codes
        return session_codes(self.vocabulary, catalog, next(self.model.parameters()).device)


def load_run(run_dir, checkpoint=None, config=None):
    """The run in `run_dir` with its `checkpoint` (best by default, else last) loaded; `config`: the run's
    own read from config.yaml, unless given (the same run on another device)."""
    from models import build_model
    from trainers.trainer import model_shapes, resolve_device
    config, state, prepared, which = restore(run_dir, config, which=checkpoint)
    vocabulary = list(state.get("session_vocabulary") or [s.name for s in prepared.catalog.sessions])
    model = build_model(config.model, model_shapes(prepared, config.model, vocabulary))
    model.load_state_dict(state["model"])
    model.to(resolve_device(config.training.device, Group())).eval()
    return LoadedRun(config, prepared, model, which, int(state["epoch"]), vocabulary, data_changes(state, prepared))


def evaluate(run_dir, split="test", *, prepared=None, config=None, trainer=None, checkpoint=None):
    """Metrics of the `checkpoint` (best by default) on `split`; written to <run>/metrics_<split>.json
    with the checkpoint's name and the epoch it was saved after (epochs numbered from 1)."""
    if trainer is None:
        # A saved run: its model and an Evaluator alone (no optimizer, no training loader, no memory probe).
        run = load_run(run_dir, checkpoint, config)
        config, prepared, checkpoint, epoch, changes = run.config, run.prepared, run.checkpoint, run.epoch, run.data_changed
        device = next(run.model.parameters()).device
        evaluator = Evaluator(config, prepared, run.model, device, amp_setup(config.training.amp, device)[0],
                              config.training,           # (build_loader turns num_workers=-1 into its auto count)
                              session_codes=run.session_codes(prepared.catalog) if config.model.session_embedding else None)
        result, is_main = evaluator.evaluate(split), True
    else:
        config, state, prepared, checkpoint = restore(run_dir, config, prepared, checkpoint)
        trainer.model.load_state_dict(state["model"])
        epoch, changes = int(state["epoch"]), data_changes(state, prepared)
        result, is_main = trainer.evaluate(split), trainer.group.is_main
    result["epoch_of_checkpoint"] = epoch
    result["checkpoint"] = checkpoint
    name = f"metrics_{split}.json"
    if changes:
        # Not the run's recorded result: written beside it, never over it.
        result["data_changed"] = changes
        name = f"metrics_{split}.data-changed.json"
        if is_main:
            print(f"warning: {run_dir}: the data changed since checkpoint {checkpoint} was trained "
                  f"({'; '.join(changes)}); metrics written to {name}, {split} split of the data as it is now; "
                  f"metrics_{split}.json is kept", file=sys.stderr)
    if is_main:
        write_json(Path(run_dir) / name, result)
    return result
