"""The training loop: setup -> per epoch (train, validate, checkpoint) -> test.

Reads top to bottom as a list of named steps. AMP is one context object plus a
GradScaler that is a no-op unless fp16 on CUDA, so the loop has no AMP branches.
Losses and counters accumulate on the device; the host syncs once per optimizer
step (to skip a non-finite step) and at log intervals.
"""

import contextlib
import gc
import logging
import math
import signal
import time

import torch

from data import quality
from data.dataloader import build_loader
from data.dataset import fingerprint_changes
from data.memory_plan import check_plan, format_plan
from errors import InputError
from models import build_model
from trainers.checkpoint import Checkpointer
from trainers.cuda_plan import cuda_plan, format_cuda_plan
from trainers.distributed import Group
from trainers.evaluator import Evaluator, global_sum
from trainers.forecaster import Forecaster, model_shapes, session_codes
from trainers.host_plan import HostPlanner, probe_activations  # noqa: F401  (tests patch probe_activations here)
from trainers.losses import training_loss
from trainers.plots import ForecastSample, figure
from trainers.schedule import build_scheduler
from trainers.setup import amp_setup, build_optimizer, resolve_device, thread_count  # noqa: F401  (re-exported)
from trainers.monitor import Monitor

log = logging.getLogger("h5series")
MB = 1024 * 1024


class Trainer:
    """One process's trainer; under torchrun, one per rank, `group` tying them together."""

    def __init__(self, config, prepared, run_dir, *, group=None, monitor=True, vocabulary=None):
        """`vocabulary`: the names of the sessions a session embedding was trained on (a saved run's);
        None: the sessions of `prepared` (a new run)."""
        self.config = config
        self.prepared = prepared
        self.run_dir = run_dir
        self.group = group or Group()
        self.rank, self.world_size = self.group.rank, self.group.world_size
        tc = config.training
        self.device = resolve_device(tc.device, self.group)
        torch.manual_seed(config.seed)
        self.task = config.model.task
        if self.task == "classify":
            quality.check_labels(prepared, config.model.n_classes)
        if self.task == "classify" and prepared.columns.target_source == "features":
            raise InputError("model.task is classify but the targets are feature columns; classify needs "
                             "integer labels in the sessions' `targets` dataset")
        self.loss_fn = training_loss(config)              # None for classify (cross-entropy)
        self.quantiles = list(config.model.quantiles)     # [] for point forecasts
        # The sessions the run learns a vector for, by name (saved in checkpoints), and each catalog session's code.
        self.vocabulary = list(vocabulary) if vocabulary is not None else [s.name for s in prepared.catalog.sessions]
        self.session_codes = session_codes(self.vocabulary, prepared.catalog, self.device) \
            if config.model.session_embedding else None
        self.shapes = model_shapes(prepared, config.model, self.vocabulary)
        self.model = build_model(config.model, self.shapes).to(self.device)
        # Training steps go through DDP (gradients averaged over ranks); evaluation and
        # checkpoints use the bare model, so a checkpoint loads in a single process.
        self.train_model = self.model
        if self.group.enabled:
            self.train_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            # Same initial weights on every rank (seeded above), but each rank its own dropout masks.
            torch.manual_seed(config.seed + self.rank)
        self.optimizer = build_optimizer(self.model, tc)
        self.autocast, self.scaler, self.amp = amp_setup(tc.amp, self.device)
        self.planner = HostPlanner(config, prepared, self.model, self.device, self.autocast, self.shapes)
        self.loader_cfg = self.planner.loader_config()
        self.train_loader = build_loader(prepared, "train", self.loader_cfg, seed=config.seed, rank=self.rank,
                                         world_size=self.world_size, device=self.device, return_ids=True)
        forecaster = Forecaster(self.model, config, prepared.normalizer, self.device, self.autocast, self.session_codes)
        self.evaluator = Evaluator(config, prepared, forecaster, self.loader_cfg, group=self.group)
        self.steps_per_epoch = self._steps_per_epoch()
        self.scheduler = build_scheduler(self.optimizer, tc, self.steps_per_epoch)
        # monitor=False: a trainer built only to evaluate or predict writes no TensorBoard files.
        self.monitor = Monitor(run_dir, config.output.tensorboard and monitor, enabled=self.group.is_main)
        self.checkpoints = Checkpointer(run_dir)
        self.epoch, self.step, self.best, self.bad_epochs = 0, 0, math.inf, 0
        self.nonfinite_in_a_row, self.nonfinite_total = 0, 0
        self._epoch_loss, self._carried_loss = (0.0, 0), None     # (sum, count) of the epoch's train loss
        self._stop_signal = None
        self._stop_requested = False    # agreed by every rank at the last optimizer step
        self.epoch_perf = {}            # the last training epoch's throughput (train_epoch)
        self._preflight_done = False
        self._save_due = False          # a periodic checkpoint agreed at the last optimizer step
        self._last_save = time.monotonic()
        self.cuda_plan = None           # on a GPU, after preflight: {"planned_mb", "worst_phase", "lines"}
        self.last_sample = None         # the last validation's ForecastSample (the TensorBoard figure)
        if monitor and self._draws_figure():
            import matplotlib.pyplot    # noqa: F401  now, so the memory plan's process line counts it

    # --- setup ------------------------------------------------------------------------
    def _steps_per_epoch(self):
        tc = self.config.training
        steps = max(1, len(self.train_loader) // tc.gradient_accumulation_steps)
        return min(steps, tc.max_steps_per_epoch) if tc.max_steps_per_epoch else steps

    def memory_plan(self, loader_cfg=None):
        """The whole host plan (trainers/host_plan.py); the activation probe runs once."""
        return self.planner.plan(loader_cfg or self.loader_cfg)

    # --- the run ----------------------------------------------------------------------
    def preflight(self):
        """Print and check the memory plans (host, and GPU on CUDA); raises InputError before any
        training when they cannot be kept. Runs once; fit() calls it if the caller did not."""
        if self._preflight_done:
            return
        plan = self.memory_plan()
        if self.group.is_main:
            print(format_plan(plan, self.config.memory_budget_mb))
        check_plan(plan, self.config.memory_budget_mb)
        if self.device.type == "cuda":
            self._plan_cuda_memory()
        self._preflight_done = True

    def fit(self):
        """Train to the end (or early stop / signal); returns final metrics."""
        self.preflight()
        if self.group.is_main:
            self.checkpoints.remove_stale_temps()
        tc = self.config.training
        threads, why = thread_count(tc.num_threads)
        if threads:
            torch.set_num_threads(threads)
        if why:
            log.info("training.num_threads=%d: %s", tc.num_threads, why)
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            # The early-stop test comes first, so a run resumed after it stopped early (say, killed
            # before its test evaluation) does not train on.
            while self.epoch < tc.epochs and not self._early_stopped() and not self._stop_agreed():
                train_loss = self.train_epoch()
                if self._stop_agreed():
                    self.save("last")
                    break
                val = self.evaluate("val", max_windows=tc.max_val_windows)
                self.end_epoch(train_loss, val)
            return self._stop_signal
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            self.monitor.close()

    def _plan_cuda_memory(self):
        """Print the GPU's plan (trainers/cuda_plan.py); stop before training when it cannot fit."""
        lines, total, worst = cuda_plan(self)
        self.cuda_plan = {"planned_mb": total / MB, "worst_phase": worst,
                          "lines": {line.name: line.detail if line.name == "phases" else round(line.mb, 2)
                                    for line in lines}}
        capacity = torch.cuda.get_device_properties(self.device).total_memory
        if self.group.is_main:
            print(format_cuda_plan(lines, total, worst, capacity))
        self.monitor.scalars(self.step, {"cuda_planned_mb": total / MB}, "memory")
        if total > capacity:
            raise InputError(f"the CUDA memory plan needs {total / MB:,.0f} MB at its peak ({worst}) but "
                             f"{torch.cuda.get_device_name(self.device)} has {capacity / MB:,.0f} MB; lower "
                             "training.batch_size (or training.round_blocks / data.block_rows)")

    def _early_stopped(self):
        patience = self.config.training.early_stopping_patience
        if patience and self.bad_epochs >= patience:
            self.monitor.info(f"early stop: no better validation loss for {self.bad_epochs} epochs")
            return True
        return False

    def _on_signal(self, signum, frame):
        # Finish the current step, save, exit cleanly (checked after each optimizer step).
        self._stop_signal = signum

    def _checkpoint_due(self):
        """This rank's view: periodic `last` due by steps or minutes (agreed over ranks in _agree)."""
        tc = self.config.training
        by_steps = tc.checkpoint_every_steps and (self.step + 1) % tc.checkpoint_every_steps == 0
        by_time = tc.checkpoint_every_minutes and \
            time.monotonic() - self._last_save >= 60 * tc.checkpoint_every_minutes
        return bool(by_steps or by_time)

    def _agree(self, nonfinite=None, overflow=None):
        """(any rank saw a non-finite loss, any rank's fp16 gradients overflowed, any rank was
        signalled), in one all-reduce under DDP and one host sync (`.tolist()`). Every rank calls
        this at the same points, so all skip or stop together (a rank that stopped alone would
        leave the others waiting in a collective). The flags are built on the device (torch.full,
        not torch.tensor: a host-to-device copy of a Python number is a second sync)."""
        def flag(value):
            return torch.zeros((), device=self.device) if value is None else value.float().reshape(())
        stop = torch.full((), float(self._stop_signal or 0), device=self.device)
        due = torch.full((), float(nonfinite is not None and self._checkpoint_due()), device=self.device)
        flags = torch.stack([flag(nonfinite), flag(overflow), stop, due])
        any_nonfinite, any_overflow, signum, any_due = self.group.all_reduce(flags, "max").tolist()
        if signum and self._stop_signal is None:
            self._stop_signal = int(signum)
        self._save_due = bool(any_due)      # every rank saves together: save() is a collective
        return bool(any_nonfinite), bool(any_overflow), signum != 0

    def _stop_agreed(self):
        return self._agree()[2]

    def _global_sum(self, total, count):
        return global_sum(self.group, total, count)

    def train_epoch(self):
        tc = self.config.training
        self.model.train()
        loader = self.train_loader
        loader.set_epoch(self.epoch)
        done_steps = self._steps_done_in_epoch()
        self.monitor.start_epoch(self.epoch + 1, self.steps_per_epoch)
        self.monitor.step(done_steps)
        # The epoch's running loss: carried in a mid-epoch checkpoint, so a resumed epoch's loss covers
        # the steps before the stop too (it covered only those after).
        carried = self._carried_loss if done_steps else None
        self._carried_loss = None
        loss_sum = torch.tensor(carried[0] if carried else 0.0, dtype=torch.float64, device=self.device)
        loss_count = int(carried[1]) if carried else 0
        self._epoch_loss = (loss_sum, loss_count)
        # This optimizer step's micro-batch losses: they join the epoch's loss only if the step is
        # not skipped as non-finite (a skipped NaN used to make the epoch loss NaN).
        step_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        # This rank's windows and seconds waiting on the loader so far this epoch, and what they and
        # the clock were at the last log (the log interval's figures are the differences).
        windows, wait, t_epoch, first_step = 0, 0.0, time.perf_counter(), done_steps
        logged = (0, 0.0, t_epoch)
        micro = 0
        batches = iter(loader)
        while done_steps < self.steps_per_epoch:
            t0 = time.perf_counter()
            batch = next(batches, None)
            wait += time.perf_counter() - t0
            if batch is None:
                break
            windows += len(batch.x)
            # DDP averages gradients over ranks on backward; between accumulation steps it need not.
            accumulating = (micro + 1) % tc.gradient_accumulation_steps != 0
            with self.train_model.no_sync() if accumulating and self.group.enabled else contextlib.nullcontext():
                loss = self._loss(batch) / tc.gradient_accumulation_steps
                self.scaler.scale(loss).backward()
            step_loss += loss.detach().double() * tc.gradient_accumulation_steps
            micro += 1
            if micro % tc.gradient_accumulation_steps:
                continue
            if self._optimizer_step(step_loss, batch):
                loss_sum += step_loss
                loss_count += tc.gradient_accumulation_steps
                self._epoch_loss = (loss_sum, loss_count)
            step_loss = torch.zeros((), dtype=torch.float64, device=self.device)
            done_steps += 1
            if self._save_due and done_steps < self.steps_per_epoch and not self._stop_requested:
                # Mid-epoch `last`, exactly like the one a signal leaves: resumes at the next batch.
                self.save("last")
            self.monitor.step()
            if self.step % tc.log_every_steps == 0:
                elapsed = time.perf_counter() - logged[2]
                stats = {"loss": float(loss_sum) / max(1, loss_count), "lr": self.optimizer.param_groups[0]["lr"],
                         "windows_per_s": (windows - logged[0]) / elapsed, "data_wait": (wait - logged[1]) / elapsed}
                stats.update(self.monitor.memory(self.device))
                self.monitor.scalars(self.step, {"loss": stats["loss"], "lr": stats["lr"]}, "train")
                self.monitor.scalars(self.step, {k: stats[k] for k in ("windows_per_s", "data_wait")}, "perf")
                self.monitor.scalars(self.step, {k: v for k, v in stats.items() if k.endswith("_mb")}, "memory")
                self.monitor.step(0, loss=f"{stats['loss']:.4f}", win_s=f"{stats['windows_per_s']:,.0f}",
                                  wait=f"{stats['data_wait']:.0%}", pss=f"{stats['pss_mb']:,.0f}MB")
                logged = (windows, wait, time.perf_counter())
            # Alone, stop right after this step; under DDP, at the step every rank agreed on.
            if self._stop_requested or (self._stop_signal is not None and not self.group.enabled):
                break
        self.monitor.end_epoch()
        total, count = self._global_sum(loss_sum, loss_count)    # a host sync: the epoch's GPU work is done
        seconds = time.perf_counter() - t_epoch
        # This rank's epoch as a whole (the log-interval figures above are windows of it).
        self.epoch_perf = {"steps": done_steps - first_step, "windows": windows, "seconds": seconds,
                           "data_wait_s": wait, "windows_per_s": windows / max(seconds, 1e-9),
                           "data_wait": wait / max(seconds, 1e-9)}
        self.monitor.scalars(self.epoch + 1, {"windows_per_s": self.epoch_perf["windows_per_s"],
                                          "data_wait": self.epoch_perf["data_wait"]}, "perf_epoch")
        return total / max(1.0, count)

    def _steps_done_in_epoch(self):
        """Optimizer steps already taken in this epoch (non-zero when resuming mid-epoch)."""
        return self.step - self.epoch * self.steps_per_epoch if self.step > self.epoch * self.steps_per_epoch else 0

    def _loss(self, batch):
        x = batch.x.to(self.device, non_blocking=True)                 # (B, L, F)
        y = batch.y.to(self.device, non_blocking=True)                 # (B, H, K)
        with self.autocast:
            out = self.train_model(x, **self.model_inputs(batch))
        if self.task == "classify":
            return torch.nn.functional.cross_entropy(out.float(), y.reshape(-1).long())
        return self.loss_fn(out.float(), y)

    def _optimizer_step(self, loss, batch):
        """Step on the gradients of `loss` (the sum of this step's micro-batch losses); False when
        the loss was non-finite and the step skipped. A skipped step still counts as a step (and
        the scheduler moves on), as an fp16 overflow does: `self.step` then counts the batches the
        epoch consumed, which is what a resumed run needs to continue at the same batch."""
        tc = self.config.training
        self.scaler.unscale_(self.optimizer)
        if tc.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
        # The one per-step host sync: a non-finite loss must skip the step before it lands. Under
        # DDP the ranks agree (one all-reduce) on it and on a stop signal, so they step together.
        # fp16: the GradScaler's overflow flag rides along, so the step below needs no second sync
        # (GradScaler.step would read it with .item(); docs/benchmarks.md, GPU check).
        overflow = sum(self.scaler._found_inf_per_device(self.optimizer).values()) \
            if self.scaler.is_enabled() else None
        nonfinite, overflow, self._stop_requested = self._agree(~torch.isfinite(loss.detach()), overflow)
        if nonfinite:
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.update()
            self.nonfinite_in_a_row += 1
            self.nonfinite_total += 1
            if self.nonfinite_in_a_row >= tc.max_nonfinite_steps:
                names = sorted({self.prepared.catalog.sessions[int(s)].name for s in batch.session.tolist()})
                raise InputError(
                    f"{self.nonfinite_in_a_row} non-finite losses in a row at step {self.step}; the last batch "
                    f"came from sessions {', '.join(names[:5])}; check those for extreme values, lower "
                    "training.learning_rate, or set training.amp=off")
        else:
            self.nonfinite_in_a_row = 0
            if not overflow:
                # What GradScaler.step does once it knows there was no overflow (the gradients are
                # unscaled already); on overflow it skips the step and update() lowers the scale.
                self.optimizer.step()
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
        if not isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step()
        self.step += 1
        return not nonfinite

    def end_epoch(self, train_loss, val):
        tc = self.config.training
        val_loss = val["loss"]
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(val_loss)
        # Epochs are numbered from 1 wherever a user sees them (log, bar, TensorBoard, metrics JSON); the
        # checkpoint's `epoch` counts the epochs completed, so the checkpoint after epoch 1 says 1.
        self.monitor.scalars(self.epoch + 1, {"loss": train_loss, "nonfinite_steps": self.nonfinite_total},
                             "epoch_train")
        self.monitor.scalars(self.epoch + 1, val, "val")
        panels = self.last_sample.panels() if self.last_sample is not None else []
        if panels:
            self.monitor.figure("val/forecasts", figure(panels, f"validation, epoch {self.epoch + 1}"), self.epoch + 1)
        improved = val_loss < self.best
        if improved:
            self.best, self.bad_epochs = val_loss, 0
        else:
            self.bad_epochs += 1
        self.monitor.info(f"epoch {self.epoch + 1}/{tc.epochs}: train loss {train_loss:.5f}, val loss {val_loss:.5f}"
                          f"{' (best)' if improved else ''}; " +
                          ", ".join(f"{k} {v:.4g}" for k, v in val.items() if k != "loss" and isinstance(v, float)))
        self.epoch += 1
        self.step = self.epoch * self.steps_per_epoch
        # best before last: a crash between the two leaves `last` one epoch behind, so the resumed
        # run repeats that epoch and rewrites `best`, instead of skipping an improvement.
        if improved:
            self.save("best")
        self.save("last")
        if tc.gc_every_epoch:
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def evaluate(self, split, model=None, max_windows=0):
        """Loss and metrics of `split` (trainers/evaluator.py); a validation keeps its forecast sample
        for the TensorBoard figure."""
        sample = self._forecast_sample(split)
        result = self.evaluator.evaluate(split, model, max_windows, sample)
        self.last_sample = sample
        return result

    def model_inputs(self, batch):
        """What the model takes besides x (session codes, known-future values): the evaluator's rule."""
        return self.evaluator.model_inputs(batch)

    def _draws_figure(self):
        """The validation figure is drawn by rank 0 of a forecast run with TensorBoard and plot_sessions."""
        out = self.config.output
        return self.task == "forecast" and out.tensorboard and out.plot_sessions > 0 and self.group.is_main

    def _forecast_sample(self, split):
        """A ForecastSample for the validation figure, else None."""
        if split != "val" or not self._draws_figure():
            return None
        return ForecastSample.for_split(self.prepared, split, self.config.output.plot_sessions, self.quantiles)

    # --- checkpoints --------------------------------------------------------------------
    def state(self):
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "loader": {"world_size": self.world_size, "positions": self.group.gather_objects(
                self.train_loader.state_dict())}, "epoch": self.epoch, "step": self.step,
            "best": self.best, "bad_epochs": self.bad_epochs, "nonfinite_total": self.nonfinite_total,
            # This rank's running train loss of the epoch so far (sum, count): a resume continues it.
            "epoch_loss": self.group.gather_objects([float(self._epoch_loss[0]), int(self._epoch_loss[1])]),
            # One RNG state per rank (each rank draws its own dropout masks).
            "rng_cpu": self.group.gather_objects(torch.get_rng_state()),
            "rng_cuda": self.group.gather_objects(torch.cuda.get_rng_state(self.device))
            if self.device.type == "cuda" else [],
            "normalizer": self.prepared.normalizer.to_json(), "config": self._config_dict(),
            "data": self.prepared.fingerprint(), "session_vocabulary": self.vocabulary,
        }

    def _config_dict(self):
        from config import to_dict
        return to_dict(self.config)

    def save(self, name):
        self._last_save = time.monotonic()
        state = self.state()                # a collective under DDP: every rank builds it
        if self.group.is_main:
            self.checkpoints.save(name, state)
        self.group.barrier()                # no rank reads a checkpoint rank 0 is still writing

    def load(self, state):
        if "data" in state:             # checkpoints from before the fingerprint have none to compare
            changes = fingerprint_changes(state["data"], self.prepared.fingerprint())
            if changes:
                raise InputError(
                    f"{self.checkpoints.path('last')}: the data changed since this checkpoint ({'; '.join(changes)}); "
                    "its position in the epoch would point at other windows, so the resume would not be exact; "
                    "restore the data, or start a new run on the new data")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        loader = state["loader"]
        if "positions" not in loader:           # written by a version before DDP: one process
            loader = {"world_size": 1, "positions": [loader]}
        if loader["world_size"] != self.world_size:
            raise InputError(
                f"{self.checkpoints.path('last')}: the run was trained by {loader['world_size']} process(es) and is "
                f"resumed by {self.world_size}; resume with the same count (torchrun --nproc_per_node "
                f"{loader['world_size']}, or plain python for 1): rank shares and steps per epoch depend on it")
        self.train_loader.load_state_dict(loader["positions"][self.rank])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.best, self.bad_epochs = float(state["best"]), int(state["bad_epochs"])
        self.nonfinite_total = int(state["nonfinite_total"])
        if "epoch_loss" in state:       # (checkpoints from before it: the resumed epoch's loss counts from the resume)
            self._carried_loss = tuple(state["epoch_loss"][self.rank])
        rng_cpu = state["rng_cpu"] if isinstance(state["rng_cpu"], list) else [state["rng_cpu"]]
        torch.set_rng_state(rng_cpu[self.rank])
        if self.device.type == "cuda" and state["rng_cuda"]:
            torch.cuda.set_rng_state(state["rng_cuda"][self.rank], self.device)
