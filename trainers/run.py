"""A run from start to end: data, trainer, test evaluation; `evaluate` of a saved run.

The CLI (main.py) calls `train` and `evaluate` here (`predict` is trainers/predict.py); each takes a Config
(or a run directory) and returns plain results. The run directory's layout and rules are
trainers/rundir.py's; loading a run to score it is trainers/forecaster.py's.
"""

import logging
import signal
from pathlib import Path

from atomic import check_space
from config import DataConfig
from schema import to_dict
from data.dataset import prepare_data
from data.normalize import Normalizer
from errors import InputError
from models import check_model_config, is_import_path
from trainers.checkpoint import Checkpointer
from trainers.distributed import Group
from trainers.evaluator import Evaluator
from trainers.forecaster import load_run
from trainers.rundir import RunDir, restore, data_changes
from trainers.trainer import Trainer


def load_run_config(run_dir):
    return RunDir(run_dir).load_config()


def check_run_dir(run_dir):
    return RunDir(run_dir).check().path

log = logging.getLogger("h5series")


def launch(config, run_dir=None, resume=False, overwrite=False, profile_source=None):
    """`train` as the command line runs it: in this process, or as one rank under torchrun (the process group
    set up from the environment and shut down after; ranks other than 0 log warnings only), the demo data
    made first when a new run reads it. Returns (train's result, whether this is rank 0)."""
    from data.demo import ensure_demo
    from trainers import distributed
    group = distributed.setup(config.training.device)     # a no-op without torchrun
    if not group.is_main:
        log.setLevel(logging.WARNING)                      # rank 0 speaks for the run
    try:
        if group.is_main and not resume:
            ensure_demo(config.data)
        group.barrier()
        result = train(config, run_dir, resume=resume, group=group, overwrite=overwrite, profile_source=profile_source)
    finally:
        distributed.shutdown(group)
    return result, group.is_main


def train(config, run_dir=None, resume=False, group=None, overwrite=False, profile_source=None):
    """Train (or resume) a run; evaluates the best checkpoint on the test split at the end.

    Under torchrun every rank calls this with its `group`; rank 0 alone writes files and prints.
    A run directory is locked while in use; an existing run is replaced only with `overwrite`.
    `profile_source`: why this profile (the CLI says whether --profile or main.py's SELECTED_CONFIG chose it).
    """
    group = group or Group()
    if not resume and group.is_main:
        run_dir = (RunDir(run_dir).check() if run_dir else RunDir.new(config)).path
    run_dir = Path(group.broadcast_object(str(run_dir)))   # one directory for all ranks (named by rank 0)
    with RunDir(run_dir).lock(enabled=group.is_main):
        return _train(config, run_dir, resume, group, overwrite, profile_source)


def prepare(config, run_dir=None, show_plan=None):
    """Catalog, split and normalize the data of `config`; the memory plan `train` prints and checks (model
    and activations included: the model is built and one forward/backward measured, but no optimizer, no
    training loader and no trainer); then the run directory with config.yaml and normalizer.json.
    `show_plan(lines)` sees the plan before it is checked. The demo data is made first when the config reads
    it and it is missing. Returns (prepared data, run directory). Nothing is written unless every check passes."""
    from data.memory_plan import check_plan
    from models import build_model
    from trainers.forecaster import model_shapes
    from trainers.host_plan import HostPlanner
    from trainers.setup import amp_setup, resolve_device
    from data.demo import ensure_demo
    run = RunDir(run_dir).check() if run_dir else None
    ensure_demo(config.data)
    prepared = prepare_data(config.data, seed=config.seed)
    device = resolve_device(config.training.device, Group())
    shapes = model_shapes(prepared, config.model, [s.name for s in prepared.catalog.sessions])
    model = build_model(config.model, shapes).to(device)
    planner = HostPlanner(config, prepared, model, device, amp_setup(config.training.amp, device)[0], shapes)
    plan = planner.plan(planner.loader_config())
    if show_plan is not None:
        show_plan(plan)
    check_plan(plan, config.memory_budget_mb)
    run = run or RunDir.new(config)                    # created once data and plan check out
    run.path.mkdir(parents=True, exist_ok=True)
    run.save_config(config)
    run.save_normalizer(prepared.normalizer)
    return prepared, run.path


def describe_splits(prepared):
    """A line per split: its windows and blocks, and the times its forecasts are for (how many days each
    part predicts: a test part of a few weeks annualizes nothing)."""
    from data.catalog import time_text
    lines = []
    for split in ("train", "val", "test"):
        line = f"  {split:<5} {prepared.n_windows(split):>12,} windows in {len(prepared.blocks[split]):,} blocks"
        span = prepared.predicted_span(split)
        if span is not None:
            days = (span[1] - span[0]) / 86_400e9
            line += f", predicting {time_text(span[0])} .. {time_text(span[1])} ({days:,.0f} calendar days)"
        lines.append(line)
    return lines


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
    elif group.is_main and RunDir(run_dir).holds_run():
        if not overwrite:
            raise InputError(f"{run_dir}: already holds a run; continue it with `train --resume {run_dir}`, "
                             "train into another --run-dir, or pass --overwrite to replace it")
        _check_replaceable(run_dir, config.data.paths)
        replacing = True
    # Data, model and memory plans are checked before training; a start that fails on them leaves no
    # empty run directory behind (issue 10, case 15), and a run replaced with --overwrite is moved aside
    # only once the data checks out, and put back if anything later fails (RunDir.starting).
    prepared = prepare_data(config.data, seed=config.seed, normalizer=normalizer, progress=group.is_main)
    if group.is_main:
        print("\n".join(describe_splits(prepared)))
    run = RunDir(run_dir)
    with run.starting(replacing, new=not resume, enabled=group.is_main):
        group.barrier()
        if group.is_main:
            run.save_config(config)               # on resume: with the overrides it took (training.epochs)
        if state is None and group.is_main:
            run.save_normalizer(prepared.normalizer)
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


def evaluate(run_dir, split="test", *, prepared=None, config=None, trainer=None, checkpoint=None):
    """Metrics of the `checkpoint` (best by default) on `split`; written to <run>/metrics_<split>.json
    with the checkpoint's name and the epoch it was saved after (epochs numbered from 1)."""
    if trainer is None:
        # A saved run: its model and an Evaluator alone (no optimizer, no training loader, no memory probe).
        run = load_run(run_dir, checkpoint, config)
        config, prepared, checkpoint, epoch, changes = run.config, run.prepared, run.checkpoint, run.epoch, run.data_changed
        evaluator = Evaluator(config, prepared, run.forecaster(),
                              config.training)           # (build_loader turns num_workers=-1 into its auto count)
        result, is_main = evaluator.evaluate(split), True
    else:
        config, state, prepared, checkpoint = restore(run_dir, config, prepared, checkpoint)
        trainer.model.load_state_dict(state["model"])
        epoch, changes = int(state["epoch"]), data_changes(state, prepared)
        result, is_main = trainer.evaluate(split), trainer.group.is_main
    result["epoch_of_checkpoint"] = epoch
    result["checkpoint"] = checkpoint
    RunDir(run_dir).write_metrics(split, result, checkpoint, changes, speak=is_main)
    return result
