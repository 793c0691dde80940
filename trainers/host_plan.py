"""What a training run will hold in host memory (PSS), planned before its first step.

One plan, printed by `train` and by `prepare`, checked against `memory_budget_mb`:

    training process                  its PSS now: torch, the prepared data and the model loaded
    loader lines                      data/memory_plan.py: workers, chunk caches, rounds, batches,
                                      validation's loader beside the training one
    model + AdamW state + gradients   parameters x 16 bytes (fp32 weight, grad, 2 moments)
    activations (measured)            one training forward/backward at the real batch size

Activations are measured, not estimated from a formula: the old `batch x lookback x
max(hidden, d_model x features) x layers` planned 640 MB for a 171-parameter DLinear on 40
features and refused it on low_memory, and planned PatchTST at 0.6x what it used. The probe
runs one forward/backward on the CPU at the run's batch size and precision and reads how far
the process's resident memory rose (Linux: the peak RSS, reset through /proc/self/clear_refs),
times STEP_GROWTH: over the next steps the allocator's freed blocks fragment and the
footprint grows (measured, 4 models on 40 features at batch 256: the run's activation memory
was 0.93-1.34x the first step's peak). Where /proc is missing, what autograd saves for
backward is added up instead (each storage once) times SAVED_TO_PEAK. Planned vs measured
peak PSS per profile and model: docs/memory.md (`benchmarks/host_plan.py`).
"""

import contextlib
import dataclasses
import logging

import psutil
import torch

from data.dataloader import loader_options
from data.memory_plan import MAIN_PROCESS_MB, MB, PlanLine, loader_plan
from errors import InputError

log = logging.getLogger("h5series")

STEP_GROWTH = 1.4
SAVED_TO_PEAK = 1.75        # measured peak / saved bytes: GRU 1.75, TCN 1.63, PatchTST 1.71 (fp32)


def process_mb():
    """PSS of this process now, or the measured baseline where it cannot be read."""
    try:
        return psutil.Process().memory_full_info().pss / MB
    except (psutil.Error, AttributeError):
        return MAIN_PROCESS_MB


def _status_bytes(key):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise OSError(f"no {key} in /proc/self/status")


@contextlib.contextmanager
def model_left_as_it_was(model, devices=()):
    """Run probe steps on `model` in training mode with no gradients, then give back its mode,
    buffers (batch-norm statistics), gradients and every RNG state (both memory probes use it)."""
    params = [p for p in model.parameters() if p.requires_grad]
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    grads = [p.grad for p in params]
    was_training = model.training
    model.train()
    for p in params:
        p.grad = None
    try:
        with torch.random.fork_rng(devices=list(devices)):
            yield params
    finally:
        for p, g in zip(params, grads):
            p.grad = g
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(buffers[name])
        model.train(was_training)


def probe_loss(out, task):
    """A training loss of the model's output against zero targets: only its backward matters."""
    if task == "classify":
        return torch.nn.functional.cross_entropy(out.float(), torch.zeros(len(out), dtype=torch.long,
                                                                          device=out.device))
    return torch.nn.functional.mse_loss(out.float(), torch.zeros_like(out, dtype=torch.float32))


def probe_activations(model, autocast, task, shapes, batch_size):
    """(bytes, how) one training forward/backward needs at `batch_size` windows (module docstring).
    The model, its buffers, its gradients and every RNG are left as they were."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")                        # the peak RSS starts again from the RSS now
        before = _status_bytes("VmRSS:")
    except OSError:
        before = None
    saved = {}
    counting = contextlib.nullcontext()
    if before is None:
        param_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}

        def keep(t):
            storage = t.untyped_storage()
            if storage.data_ptr() not in param_storages:
                saved[storage.data_ptr()] = storage.nbytes()
            return t
        counting = torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t)
    try:
        with model_left_as_it_was(model):
            x = torch.randn(batch_size, shapes.lookback, shapes.n_features)                   # (B, L, F)
            with counting, autocast:
                out = model(x)
            probe_loss(out, task).backward()
            if before is not None:
                return STEP_GROWTH * max(0, _status_bytes("VmHWM:") - before), "measured"
            return SAVED_TO_PEAK * sum(saved.values()), "saved tensors"
    except RuntimeError as exc:
        text = str(exc)
        if "can't allocate memory" not in text and "not enough memory" not in text:
            raise
        raise InputError(f"training.batch_size={batch_size}: one training step of that many windows cannot be "
                         f"allocated ({text.splitlines()[0][:120]}); lower training.batch_size") from None


def host_plan(prepared, config, loader_cfg, loader_options, model, activations, process=None):
    """Plan lines of the whole run. activations: (bytes, how) from probe_activations, or (0, why)
    on a GPU; process: the training process's MB (default: its PSS now)."""
    lines = loader_plan(prepared, config.data, loader_cfg, loader_options, process_mb=process or process_mb())
    n_params = sum(p.numel() for p in model.parameters())
    lines.append(PlanLine("model + AdamW state + gradients", n_params * 16 / MB, "the model's own section, model.<name>",
                          f"{n_params:,} parameters x 16 bytes"))
    size, how = activations
    lines.append(PlanLine("activations", size / MB, "training.batch_size", how))
    return lines


def fit_workers(training_cfg, device, plan_mb, budget_mb):
    """The training section the loaders use: with num_workers=-1 (auto), the auto count lowered until
    the host plan (`plan_mb(cfg)`, MB) fits memory_budget_mb. Measured on a 16-core GPU machine: auto
    gave 4 workers, and low_memory (1 GB) refused to start with them (plan 1,441 MB)."""
    tc = training_cfg
    if tc.num_workers != -1:
        return tc
    auto = loader_options(tc, device)[0]["num_workers"]
    for workers in range(auto, 0, -1):
        cfg = dataclasses.replace(tc, num_workers=workers)
        if plan_mb(cfg) <= budget_mb:
            break
    else:
        cfg = dataclasses.replace(tc, num_workers=0)
    if cfg.num_workers < auto:
        log.info("training.num_workers=-1 (auto): %d workers, not %d, to fit memory_budget_mb=%d",
                 cfg.num_workers, auto, budget_mb)
    return cfg


class HostPlanner:
    """The whole host plan of training `model` on `prepared` (host_plan), its measurements taken once:
    the process's PSS before the probe's step (whose memory stays mapped) and the activations of one
    forward/backward; on a GPU the activations live on the device (the CUDA plan, trainers/cuda_plan.py).
    Used by the Trainer and by `prepare`, which builds no optimizer and no training loader."""

    def __init__(self, config, prepared, model, device, autocast, shapes):
        self.config, self.prepared, self.model, self.device = config, prepared, model, device
        self.autocast, self.shapes = autocast, shapes
        self._measured = None

    def plan(self, loader_cfg):
        options, _ = loader_options(loader_cfg, self.device)
        if self._measured is None:
            process = process_mb()
            if self.device.type == "cuda":
                activations = (0, "on the GPU: see the CUDA plan")
            else:
                size, how = probe_activations(self.model, self.autocast, self.config.model.task, self.shapes,
                                              loader_cfg.batch_size)
                activations = (size, f"{how}: one forward/backward at batch {loader_cfg.batch_size}")
            self._measured = process, activations
        process, activations = self._measured
        return host_plan(self.prepared, self.config, loader_cfg, options, self.model, activations, process=process)

    def loader_config(self):
        """The training section the loaders use (fit_workers: auto workers lowered to fit the budget)."""
        return fit_workers(self.config.training, self.device, lambda cfg: sum(line.mb for line in self.plan(cfg)),
                           self.config.memory_budget_mb)
