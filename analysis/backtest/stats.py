"""Streaming summary statistics: moments merged block by block, drawdown carried across blocks.

Every figure of the report is computed from per-period values that pass once, in blocks, so
memory does not depend on the length of the history. The formulas are empyrical-reloaded's
(tests/test_backtest_stats.py compares them to 1e-9), with one stated difference: the
drawdown counts from the starting capital, so a loss in the first period is a drawdown
(empyrical's max_drawdown starts its running peak after the first return).
"""

import math

import numpy as np

from data.catalog import time_text


class Moments:
    """Count, mean and sum of squared deviations of the finite values seen (Chan et al.'s merge)."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, 0.0, 0.0
        self.positive = 0

    def update(self, values):
        values = np.asarray(values, np.float64)
        values = values[np.isfinite(values)]
        m = len(values)
        if m == 0:
            return
        mean = float(values.mean())
        m2 = float(((values - mean) ** 2).sum())
        n = self.n + m
        delta = mean - self.mean
        self.mean += delta * m / n
        self.m2 += m2 + delta * delta * self.n * m / n
        self.n = n
        self.positive += int((values > 0).sum())

    @property
    def std(self):
        """Sample standard deviation (ddof=1), NaN below two values."""
        return math.sqrt(self.m2 / (self.n - 1)) if self.n > 1 else math.nan

    def summary(self):
        sd = self.std
        ratio = self.mean / sd if sd and sd > 0 else math.nan
        return {"mean": self.mean if self.n else math.nan, "std": sd, "ir": ratio,
                "t_stat": ratio * math.sqrt(self.n) if self.n else math.nan,
                "positive_share": self.positive / self.n if self.n else math.nan, "periods": self.n}


class Performance:
    """Per-period returns of one strategy -> total / annual return, volatility, Sharpe, drawdown.

    `start_time`: when the first period starts (the starting capital's time, the first peak)."""

    def __init__(self, periods_per_year, start_time=None):
        self.periods_per_year = periods_per_year
        self.moments = Moments()
        self.log_value = 0.0            # log of the value of 1 invested at the start
        self.peak_log = 0.0             # the starting capital is the first peak
        self.peak_time = start_time
        self.max_drawdown = 0.0
        self.drawdown_peak = self.drawdown_trough = self.recovered = None
        self._worst_peak_log = None
        self.ruined_at = None           # when a period lost everything (return <= -100%): the value is then
        self.ruined_value = None        # <= 0, which logs cannot hold; later periods are not compounded

    def update(self, returns, times):
        """returns (n,) net of everything, for periods ending at `times` (n,) int64 ns."""
        returns = np.asarray(returns, np.float64)
        times = np.asarray(times)
        n = len(returns)
        if n == 0:
            return
        self.moments.update(returns)
        if self.ruined_at is not None:
            return
        wiped = np.flatnonzero(returns <= -1.0)
        if len(wiped):
            # The periods before the wipe-out as usual, then the value (<= 0) in plain numbers: a drawdown of
            # -100% or worse (log1p gave NaN or -inf, and the report said max_drawdown 0.0).
            j = int(wiped[0])
            self._update(returns[:j], times[:j])
            value = math.exp(self.log_value) * (1.0 + float(returns[j]))
            drawdown = value / math.exp(self.peak_log) - 1.0
            if drawdown < self.max_drawdown:
                self.max_drawdown, self.drawdown_peak = drawdown, self.peak_time
                self.drawdown_trough, self.recovered = int(times[j]), None
            self.ruined_at, self.ruined_value = int(times[j]), value
            return
        self._update(returns, times)

    def _update(self, returns, times):
        n = len(returns)
        if n == 0:
            return
        lv = self.log_value + np.cumsum(np.log1p(returns))                 # (n,) log value after each period
        run = np.maximum.accumulate(np.maximum(lv, self.peak_log))         # (n,) running peak
        setter = np.where(lv >= run, np.arange(n), -1)                     # row that set the peak, -1 = earlier
        np.maximum.accumulate(setter, out=setter)
        drawdown = np.expm1(lv - run)                                      # (n,) <= 0
        i = int(np.argmin(drawdown))
        search_from = 0
        if drawdown[i] < self.max_drawdown:
            self.max_drawdown = float(drawdown[i])
            self.drawdown_peak = int(times[setter[i]]) if setter[i] >= 0 else self.peak_time
            self.drawdown_trough = int(times[i])
            self._worst_peak_log, self.recovered, search_from = float(run[i]), None, i + 1
        if self.recovered is None and self._worst_peak_log is not None:
            back = np.flatnonzero(lv[search_from:] >= self._worst_peak_log)
            if len(back):
                self.recovered = int(times[search_from + back[0]])
        if setter[-1] >= 0:
            self.peak_time = int(times[setter[-1]])
        self.peak_log = float(run[-1])
        self.log_value = float(lv[-1])

    def summary(self):
        n, p = self.moments.n, self.periods_per_year
        sd = self.moments.std
        # a few periods compounded to a year can exceed a float: inf, written as null in the JSON
        annual = math.exp(min(self.log_value * p / n, 700.0)) - 1 if n else math.nan
        annual = math.inf if n and self.log_value * p / n > 700 else annual
        total = math.expm1(self.log_value)
        if self.ruined_at is not None:
            total, annual = self.ruined_value - 1.0, -1.0          # everything lost (or more, on margin)
        return {"total_return": total, "annual_return": annual, "ruined_at": iso(self.ruined_at),
                "annual_volatility": sd * math.sqrt(p),
                "sharpe": self.moments.mean / sd * math.sqrt(p) if n > 1 and sd > 0 else math.nan,
                "max_drawdown": self.max_drawdown, "max_drawdown_peak": iso(self.drawdown_peak),
                "max_drawdown_trough": iso(self.drawdown_trough), "max_drawdown_recovered": iso(self.recovered),
                "calmar": annual / abs(self.max_drawdown) if self.max_drawdown < 0 else math.nan,
                "hit_rate": self.moments.positive / n if n else math.nan, "periods": n}


def iso(ns):
    """A time (int ns) as ISO text, None kept (a drawdown not recovered)."""
    return None if ns is None else time_text(ns)
