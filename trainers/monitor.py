"""What a run shows and logs: a tqdm bar, TensorBoard scalars and hparams, memory.

Under torchrun only rank 0 writes (enabled=False elsewhere makes every method a no-op).
"""

import logging
import time
from pathlib import Path

import torch
from tqdm import tqdm

import progress

from trainers.memory import cuda_memory_mb, tree_pss_mb
from trainers.rundir import RunDir

log = logging.getLogger("h5series")
PSS_EVERY_S = 10.0


class Monitor:
    def __init__(self, run_dir, tensorboard=True, enabled=True):
        self.enabled = enabled
        self.writer = None
        self.bar = None
        self.peak_pss_mb = 0.0
        self._pss_mb, self._pss_at = 0.0, None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(log_dir=str(RunDir(run_dir).tensorboard))

    def memory(self, device=None):
        """PSS of the process tree (main + workers) and CUDA memory, in MiB. PSS is read at most every
        PSS_EVERY_S seconds: reading /proc/PID/smaps_rollup took 12 ms a process on a GPU machine (a
        CUDA context maps a lot), 15% of a DLinear epoch there when read at every log interval."""
        now = time.monotonic()
        if self._pss_at is None or now - self._pss_at >= PSS_EVERY_S:
            self._pss_mb, self._pss_at = tree_pss_mb(), now
            self.peak_pss_mb = max(self.peak_pss_mb, self._pss_mb)
        # CUDA figures only for a run on CUDA: zeros on a CPU run read as a measurement (issue 10, case 24).
        cuda = cuda_memory_mb() if device is not None and torch.device(device).type == "cuda" else {}
        return {"pss_mb": self._pss_mb, **cuda}

    def start_epoch(self, epoch, total_steps):
        if self.enabled:
            # a bar on a terminal, a line every ~10 s in a log file (progress.py)
            self.bar = progress.bar(total=total_steps, desc=f"epoch {epoch}", unit="step", leave=False,
                                    dynamic_ncols=True)

    def step(self, n=1, **postfix):
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)

    def end_epoch(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def scalars(self, step, values, prefix):
        """values: floats, or nested mappings of them (per_target/close/mse) written under their path."""
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, dict):
                    self.scalars(step, value, f"{prefix}/{key}")
                elif isinstance(value, (int, float)):
                    self.writer.add_scalar(f"{prefix}/{key}", value, step)

    def figure(self, tag, fig, step):
        """A matplotlib figure as an image (closed after)."""
        if self.writer is not None:
            self.writer.add_figure(tag, fig, step, close=True)
        else:
            from matplotlib import pyplot as plt
            plt.close(fig)

    def hparams(self, hparams, metrics):
        """One hparams entry per run: the event file an earlier call wrote (a resumed run that finished
        again) is replaced, not added to (issue 10, case 24)."""
        if self.writer is None:
            return
        logdir = Path(self.writer.get_logdir())
        marker = logdir / ".hparams_event"
        if marker.exists():
            (logdir / marker.read_text().strip()).unlink(missing_ok=True)
        before = set(logdir.glob("events.out.tfevents.*"))
        clean = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in hparams.items()}
        self.writer.add_hparams(clean, {f"hparam/{k}": v for k, v in metrics.items()}, run_name=".")
        new = sorted(set(logdir.glob("events.out.tfevents.*")) - before)
        if new:
            marker.write_text(new[-1].name + "\n")

    def info(self, message):
        if self.enabled:
            (tqdm.write if isinstance(self.bar, tqdm) else print)(message)

    def close(self):
        self.end_epoch()
        if self.writer is not None:
            self.writer.close()
            self.writer = None
