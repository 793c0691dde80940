"""Memory of the whole process tree: the training process and its DataLoader workers.

PSS (proportional set size) splits each shared page among the processes that map
it, so forked workers sharing the parent's pages are not counted twice, as RSS
would. CUDA memory is reported separately (allocated / reserved / peak).
"""

import threading

import psutil
import torch

MB = 1024 * 1024


def tree_pss_mb(pid=None):
    """PSS of a process and all its descendants, in MiB (RSS where PSS is unavailable)."""
    try:
        root = psutil.Process(pid)
        procs = [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for proc in procs:
        try:
            info = proc.memory_full_info()
            total += getattr(info, "pss", info.rss)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total / MB


def cuda_memory_mb():
    """Allocated, reserved and peak allocated CUDA memory in MiB (zeros without CUDA)."""
    if not torch.cuda.is_available():
        return {"cuda_allocated_mb": 0.0, "cuda_reserved_mb": 0.0, "cuda_peak_mb": 0.0}
    return {"cuda_allocated_mb": torch.cuda.memory_allocated() / MB,
            "cuda_reserved_mb": torch.cuda.memory_reserved() / MB,
            "cuda_peak_mb": torch.cuda.max_memory_allocated() / MB}


class PeakSampler:
    """Samples tree PSS in a background thread; `.peak_mb` is the largest seen.

    with PeakSampler(pid, interval=0.2) as sampler: ...; sampler.peak_mb
    """

    def __init__(self, pid=None, interval=0.2):
        self.pid = pid
        self.interval = interval
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, tree_pss_mb(self.pid))
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, tree_pss_mb(self.pid))
