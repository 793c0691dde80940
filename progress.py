"""Progress of long work, where the user can see it: a tqdm bar on a terminal, and where output goes to a
log file or a pipe (nohup, a scheduler, CI), where tqdm shows nothing, one line at most every
LOG_EVERY_S seconds: done/total, rate and time left (a 100 s epoch or a 72 s predict printed nothing)."""

import logging
import sys
import time

from tqdm import tqdm

LOG_EVERY_S = 10.0

log = logging.getLogger("h5series")


def bar(total=None, desc="", unit="it", enabled=True, **tqdm_options):
    """A progress bar with tqdm's update / set_postfix / close: tqdm on a terminal, LogProgress elsewhere,
    nothing when not `enabled`."""
    if not enabled:
        return tqdm(total=total, disable=True)
    if sys.stderr.isatty():
        return tqdm(total=total, desc=desc, unit=unit, **tqdm_options)
    return LogProgress(total, desc, unit)


def _duration(seconds):
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class LogProgress:
    """A log line at most every LOG_EVERY_S seconds (and one at the end of work that took that long)."""

    def __init__(self, total=None, desc="", unit="it"):
        self.total, self.desc, self.unit = total, desc, unit
        self.every_s = LOG_EVERY_S
        self.n = 0
        self.postfix = {}
        self.start = self.last = time.monotonic()

    def line(self):
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = self.n / elapsed
        done = f"{self.n:,}" + (f"/{self.total:,} {self.unit}s ({self.n / self.total:.0%})" if self.total else
                                f" {self.unit}s")
        text = f"{self.desc}: {done}, {rate:,.1f} {self.unit}/s, {_duration(elapsed)} elapsed"
        if self.total and rate > 0 and self.n < self.total:
            text += f", about {_duration((self.total - self.n) / rate)} left"
        if self.postfix:
            text += " (" + ", ".join(f"{k} {v}" for k, v in self.postfix.items()) + ")"
        return text

    def update(self, n=1):
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            log.info("%s", self.line())

    def set_postfix(self, postfix=None, refresh=False, **kwargs):
        self.postfix = {**(postfix or {}), **kwargs}

    def close(self):
        if time.monotonic() - self.start >= self.every_s:
            log.info("%s", self.line())
