"""What a trainer is set up with, as free functions it assembles: the device (the local rank's GPU under
torchrun), AMP (autocast context + GradScaler), the thread count, and the optimizer."""

import contextlib
import logging
import os

import psutil
import torch

from errors import InputError

log = logging.getLogger("h5series")
_TORCH_DEFAULT_THREADS = torch.get_num_threads()   # before any run of this process changes it


def resolve_device(name, group):
    """The device of this process: under torchrun on CUDA, the GPU of its local rank."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"training.device is {name!r} but CUDA is not available here; use auto or cpu")
    if device.type == "cuda" and group.enabled:
        device = torch.device("cuda", group.local_rank)
    return device


def cpu_has_bf16():
    """Native bf16 math on this CPU (AVX512-BF16 or AMX); without it bf16 is emulated and slower."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return False


def amp_setup(mode, device):
    """(autocast context, GradScaler, mode): fp16 + GradScaler on CUDA; bf16 on a CPU with native
    bf16, else full precision (measured: emulated bf16 made TCN/PatchTST steps 2-5x slower)."""
    if mode == "auto":
        mode = "fp16" if device.type == "cuda" else "bf16" if cpu_has_bf16() else "off"
        log.info("training.amp=auto: %s on %s", mode, device.type)
    if mode == "fp16" and device.type != "cuda":
        raise InputError("training.amp is fp16, which needs CUDA; use bf16 or auto on CPU")
    if mode == "bf16" and device.type == "cpu" and not cpu_has_bf16():
        # Emulated bf16 crashed LSTM inside oneDNN (and made TCN/PatchTST 2-5x slower).
        raise InputError("training.amp is bf16, but this CPU has no native bf16 (avx512_bf16 / amx); use "
                         "training.amp=auto or off")
    if mode == "off":
        ctx = contextlib.nullcontext()
    else:
        ctx = torch.autocast(device_type=device.type, dtype=torch.float16 if mode == "fp16" else torch.bfloat16)
    scaler = torch.amp.GradScaler(device.type, enabled=mode == "fp16")
    return ctx, scaler, mode


def thread_count(setting, cores=None, busy_cores=None):
    """(threads to set or 0 to leave PyTorch's choice, reason to log). Auto (-1): the cores that other
    processes leave free, measured over 0.3 s while this process waits. Measured here (2 cores, GRU):
    with one core busy elsewhere, 2 threads took 28-32 s where 1 took 13-17 s (the second thread
    spin-waits for one the OS paused); on an idle machine both took 14-16 s."""
    if setting >= 0:
        return setting, ""
    if os.environ.get("OMP_NUM_THREADS"):
        return 0, f"auto: OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} from the environment"
    cores = cores or os.cpu_count() or 1
    if busy_cores is None:
        busy_cores = psutil.cpu_percent(interval=0.3) / 100 * cores
    threads = max(1, min(_TORCH_DEFAULT_THREADS, cores - round(busy_cores)))
    return threads, f"auto: {threads} thread(s); other processes keep {busy_cores:.1f} of {cores} cores busy"


def build_optimizer(model, training_cfg):
    """AdamW over the model's parameters at training.learning_rate / weight_decay."""
    return torch.optim.AdamW(model.parameters(), lr=training_cfg.learning_rate,
                             weight_decay=training_cfg.weight_decay)
