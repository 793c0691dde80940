"""What a training run will hold in GPU memory, planned before its first step.

The host plan (data/memory_plan.py) adds up buffers that live side by side all run
long. On the GPU the number that matters is the peak of `torch.cuda.max_memory_allocated`,
what coexists at the worst moment, so this plan is

    persistent                   weights, AdamW moments, buffers, library workspaces
    + the largest of four phases:
      training step              round held + batch chunk + forward/backward (probed)
      chunk gather               round held + the chunk the last batch is a view of + the
                                 next chunk + a batch concatenated across rounds
      optimizer step             round held + batch chunk + gradients + AdamW temporaries
      round preparation          round held + the next round's rows, normalized copies and
                                 temporaries + the chunk the last batch is a view of

(The first H100 run, without the chunk-gather phase, planned 5-14% under the measured
peaks: the chunk a trainer's last batch still views lives on while the next is gathered.)

Sizes of the rounds and batches follow from the config and the block plan; the
forward/backward line comes from a probe: two small forward/backward passes on the
device (batch/2 and the batch itself, after a warm-up pass at batch/2); the first H100
run extrapolated from batch/8 and batch/4 and planned a 2-layer GRU 5 MB under its peak
(cuDNN's RNN memory does not grow linearly in the batch), so the batch size itself is
probed. A batch too large for the GPU stops here, before training, naming the key. The probe leaves the model, its buffers
and every RNG as it found them. Planned vs measured peaks per profile:
docs/benchmarks.md (GPU check).
"""

import contextlib

import torch

from data.dataloader import gather_batches
from data.memory_plan import PlanLine
from errors import InputError
from trainers.host_plan import model_left_as_it_was, probe_loss

MB = 1024 * 1024
FLOAT = 4


def probe_forward_backward(model, autocast, task, shapes, batch_size, device):
    """(bytes per window, fixed bytes, resident bytes) of one training forward/backward pass.

    Peaks are measured above what is allocated before each pass (inputs already made, gradients None, as after `zero_grad(set_to_none=True)`); `resident` is what the
    warm-up pass leaves allocated for good (cuBLAS/cuDNN workspaces)."""
    sizes = (max(1, batch_size // 2), max(2, batch_size))
    peaks = []
    with model_left_as_it_was(model, devices=[device]) as params, \
            _out_of_memory_names_the_batch(batch_size, device):
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        for b in (sizes[0],) + sizes:          # the first pass is the warm-up
            x = torch.randn(b, shapes.lookback, shapes.n_features, device=device)       # (b, L, F)
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            start = torch.cuda.memory_allocated(device)
            with autocast:
                out = model(x)
            probe_loss(out, task).backward()
            torch.cuda.synchronize(device)
            peaks.append(torch.cuda.max_memory_allocated(device) - start)
            del x, out
            for p in params:
                p.grad = None
        torch.cuda.synchronize(device)
        resident = max(0, torch.cuda.memory_allocated(device) - before)
    per_window = max(0.0, (peaks[2] - peaks[1]) / (sizes[1] - sizes[0]))
    fixed = max(0.0, peaks[1] - per_window * sizes[0])
    return per_window, fixed, resident


@contextlib.contextmanager
def _out_of_memory_names_the_batch(batch_size, device):
    try:
        yield
    except torch.cuda.OutOfMemoryError:
        raise InputError(f"training.batch_size={batch_size}: one training step does not fit in the memory of "
                         f"{torch.cuda.get_device_name(device)}; lower training.batch_size (or the model's size)") from None


def cuda_plan(trainer):
    """(plan lines, planned peak bytes) of a trainer whose device is a GPU."""
    prepared, tc, device = trainer.prepared, trainer.loader_cfg, trainer.device
    w, cols = prepared.window, prepared.columns
    B = tc.batch_size
    F, K = len(cols.feature_index), len(cols.target_index)
    from_features = cols.target_source == "features"
    C = len(set(cols.feature_index) | (set(cols.target_index) if from_features else set()))

    params = sum(p.numel() * p.element_size() for p in trainer.model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in trainer.model.buffers())
    per_window, fixed, resident = probe_forward_backward(
        trainer.model, trainer.autocast, trainer.task, trainer.shapes, B, device)

    # The largest round of the training split (validation and test rounds are no larger per block).
    blocks = prepared.blocks["train"]
    block_rows = max((w.block_rows(int(n)) for n in blocks[:, 2]), default=0)
    R = tc.round_blocks * block_rows
    windows_per_round = tc.round_blocks * max((int(n) for n in blocks[:, 2]), default=0)
    y_bytes = 8 if trainer.task == "classify" else FLOAT
    held = R * F * FLOAT + R * K * y_bytes + windows_per_round * 4              # x_rows, y_rows, starts
    # Preparing the next round: its rows, (x - mean) and the result, then the targets' copies.
    prepare = R * C * FLOAT + R * F * FLOAT + held
    if not from_features:
        prepare += R * K * y_bytes                       # the targets' own host-to-device copy
    if prepared.normalizer.mode == "per_session":
        prepare += R * 8 + 2 * R * F * FLOAT             # row -> session ids, gathered mean and std
    batch = B * (w.lookback * F * FLOAT + w.horizon * K * y_bytes)
    chunk_batches = gather_batches(device, B, w, F)
    chunk = chunk_batches * batch + chunk_batches * B * w.lookback * 4          # + the int32 index buffer
    optimizer = 2 * params                               # gradients + one foreach temporary (sqrt of v)
    activations = per_window * B + fixed
    phases = {"training step": held + chunk + activations,
              "chunk gather": held + 2 * chunk + batch,
              "optimizer step": held + chunk + optimizer,
              "round preparation": held + prepare + chunk + batch}
    persistent = 3 * params + buffers + resident
    lines = [
        PlanLine("weights + AdamW moments + buffers", (3 * params + buffers) / MB, "model size",
                 f"{params / FLOAT:,.0f} parameters x 12 bytes"),
        PlanLine("library workspaces (cuBLAS/cuDNN)", resident / MB, "-", "measured by the probe"),
        PlanLine("round held on the device", held / MB, "training.round_blocks / data.block_rows",
                 f"{R:,} rows x ({F} inputs + {K} targets)"),
        PlanLine("next round being prepared", prepare / MB, "training.round_blocks / data.block_rows",
                 "rows, normalized copy, temporaries"),
        PlanLine("batch chunk", chunk / MB, "training.batch_size",
                 f"{chunk_batches} batch(es) gathered at once"),
        PlanLine("forward + backward (probed)", activations / MB, "training.batch_size",
                 f"{per_window / 1024:,.1f} KiB per window + {fixed / MB:,.1f} MB"),
        PlanLine("gradients + optimizer temporaries", optimizer / MB, "model size", "2 x weights"),
    ]
    lines.append(PlanLine("phases", 0, "-", ", ".join(f"{k} {v / MB:,.1f} MB" for k, v in phases.items())))
    worst = max(phases, key=phases.get)
    return lines, persistent + phases[worst], worst


def format_cuda_plan(lines, total, worst, capacity):
    width = max(len(line.name) for line in lines)
    out = [f"CUDA memory plan (peak allocated; device {capacity / MB:,.0f} MB):"]
    for line in lines:
        size = " " * 12 if line.name == "phases" else f"{line.mb:>9,.1f} MB"
        out.append(f"  {line.name:<{width}} {size}   {line.detail}")
    out.append(f"  {'planned peak':<{width}} {total / MB:>9,.1f} MB   persistent + {worst} (the largest phase)")
    return "\n".join(out)
