"""Signal analysis, accumulated block by block (alphalens' tear sheet, Qlib's SigAnaRecord).

Per period t, across the sessions with a signal and a price at t:
  IC        Pearson correlation of the signal with the forward return over j periods
  rank IC   Spearman (Pearson of average ranks; alphalens' factor_information_coefficient)
  quantiles the signal binned as pd.qcut(signal, q) (alphalens' quantize_factor): mean forward
            return per bin, averaged over periods (mean_return_by_quantile, by_date=False),
            top minus bottom spread, and the share of each bin's names new since t - 1
            (quantile_turnover)
  coverage  how many sessions had a signal
Forward returns are over 1 .. `decay` periods (the IC decay); a pair is used where both the
signal and that return are known. tests/test_backtest_factor.py checks this against
alphalens-reloaded to 1e-9.
"""

import math

import numpy as np
from analysis.backtest.stats import Moments


def quantile_bins(signal, q):
    """(T, N) signal with NaN -> (T, N) int8 bin 1..q per row as pd.qcut(row, q, labels=False) + 1, 0 where
    the signal is NaN or the row's bin edges are not unique (too few distinct values to bin).

    Edges are the rows' linear-interpolation quantiles (pandas' and numpy's default), taken from one
    sort of the rows: np.nanquantile loops over rows when there are NaNs (~20x slower here). An edge
    that falls between two different values cannot equal any value, so bins match pd.qcut exactly."""
    labels = np.zeros(signal.shape, np.int8)
    finite = np.isfinite(signal)
    count = finite.sum(axis=1)                                                   # (T,)
    rows = np.flatnonzero(count > 0)
    if len(rows) == 0:
        return labels
    values, n = signal[rows], count[rows]
    ordered = np.sort(values, axis=1)                                            # NaN last
    pos = (n - 1)[:, None] * np.linspace(0, 1, q + 1)[None, :]                   # (R, q + 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, (n - 1)[:, None])
    frac = pos - lo
    a, b = np.take_along_axis(ordered, lo, axis=1), np.take_along_axis(ordered, hi, axis=1)
    edges = np.where(frac > 0, a + (b - a) * frac, a)                            # (R, q + 1)
    unique = np.all(np.diff(edges, axis=1) > 0, axis=1)                          # (R,)
    # bin = 1 + how many inner edges lie below the value (right-closed bins, as pd.cut)
    inner = edges[:, 1:q]                                                        # (R, q - 1)
    with np.errstate(invalid="ignore"):
        bins = 1 + (values[:, :, None] > inner[:, None, :]).sum(axis=2)          # (R, N)
    labels[rows] = np.where(np.isfinite(values) & unique[:, None], bins, 0)
    return labels


def _row_corr(x, y):
    """Pearson correlation per row of (T, N) arrays with NaN where a pair is not used."""
    valid = np.isfinite(x) & np.isfinite(y)
    n = valid.sum(axis=1)
    x = np.where(valid, x, 0.0)
    y = np.where(valid, y, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mx = x.sum(axis=1) / n
        my = y.sum(axis=1) / n
        dx = np.where(valid, x - mx[:, None], 0.0)
        dy = np.where(valid, y - my[:, None], 0.0)
        corr = (dx * dy).sum(axis=1) / np.sqrt((dx * dx).sum(axis=1) * (dy * dy).sum(axis=1))
    corr[n < 2] = np.nan
    return corr


def _ranks(x):
    """Average ranks (1 = lowest, ties share their mean rank, as scipy.stats.rankdata) per row over the
    finite values, NaN elsewhere. Vectorized over rows: scipy's rankdata with nan_policy is ~10x slower
    here, and scipy.stats takes ~0.5 s to import."""
    t, n = x.shape
    order = np.argsort(x, axis=1)                                       # NaN sort last; tie order is irrelevant
    xs = np.take_along_axis(x, order, axis=1)                          # (T, N) sorted
    idx = np.broadcast_to(np.arange(n), (t, n))
    starts = np.ones((t, n), bool)
    starts[:, 1:] = xs[:, 1:] != xs[:, :-1]                            # a new value begins
    finite = np.isfinite(xs)
    if np.all(starts | ~finite):                                       # no ties: ranks are positions
        ranks_sorted = np.where(finite, idx + 1.0, np.nan)
    else:
        ends = np.ones((t, n), bool)
        ends[:, :-1] = starts[:, 1:]
        first = np.maximum.accumulate(np.where(starts, idx, 0), axis=1)   # where its tie group starts
        last = np.minimum.accumulate(np.where(ends, idx, n - 1)[:, ::-1], axis=1)[:, ::-1]
        ranks_sorted = np.where(finite, (first + last) / 2.0 + 1.0, np.nan)
    ranks = np.empty((t, n))
    np.put_along_axis(ranks, order, ranks_sorted, axis=1)
    return ranks


class SignalAnalysis:
    """Feed it (times, signal, forward returns) per block; `summary()` at the end; `per_period` rows of
    the last block for the per-period file (IC and rank IC one period ahead, coverage, spread)."""

    def __init__(self, n_sessions, quantiles=5, decay=5):
        self.q, self.decay = quantiles, decay
        self.ic = {j: Moments() for j in range(1, decay + 1)}
        self.rank_ic = {j: Moments() for j in range(1, decay + 1)}
        self.quantile_sum = np.zeros((decay, quantiles))      # sum over periods of the bin's mean return
        self.quantile_periods = np.zeros((decay, quantiles), np.int64)
        self.turnover = [Moments() for _ in range(quantiles)]
        self.spread = Moments()
        self.coverage = Moments()
        self.unbinned_periods = 0
        self._previous_bins = np.zeros(n_sessions, np.int8)   # bins of the last period seen (0 = none)
        self._have_previous = False

    def count(self, signal):
        """Only the coverage of these periods (when the analysis is off): (T,) sessions with a signal."""
        coverage = np.isfinite(signal).sum(axis=1)
        self.coverage.update(coverage[coverage > 0])
        return coverage

    def update(self, signal, forward, periods=None):
        """signal (T, N) with NaN where there is none (or no price); forward {j: (T, N)} from
        analysis.backtest.returns.forward_returns; `periods`: how many of the T rows have a next bar (the data's
        last bar has none: its bins count for no turnover, as in alphalens). Returns per-period columns."""
        t = len(signal)
        if t == 0:
            return {}
        known = np.isfinite(signal)
        coverage = known.sum(axis=1)
        self.coverage.update(coverage[coverage > 0])
        bins = quantile_bins(signal, self.q)                                     # (T, N)
        self.unbinned_periods += int(((coverage > 0) & (bins.max(axis=1) == 0)).sum())
        ranks_all = _ranks(signal)
        out = {"coverage": coverage}
        for j, ret in forward.items():
            pair = known & np.isfinite(ret)
            sig = np.where(pair, signal, np.nan)
            ic = _row_corr(sig, ret)
            # Signal ranks are redone only on the rows where a missing return drops names.
            differ = np.flatnonzero(np.any(pair != known, axis=1))
            sig_ranks = ranks_all
            if len(differ):
                sig_ranks = ranks_all.copy()
                sig_ranks[differ] = _ranks(sig[differ])
            rank_ic = _row_corr(sig_ranks, _ranks(np.where(pair, ret, np.nan)))
            self.ic[j].update(ic)
            self.rank_ic[j].update(rank_ic)
            means = self._bin_means(bins, ret, pair)                              # (T, q)
            have = np.isfinite(means)
            self.quantile_sum[j - 1] += np.where(have, means, 0.0).sum(axis=0)
            self.quantile_periods[j - 1] += have.sum(axis=0)
            if j == 1:
                spread = means[:, -1] - means[:, 0]
                self.spread.update(spread)
                out.update(ic=ic, rank_ic=rank_ic, spread=spread)
        self._update_turnover(bins[:t if periods is None else periods])
        return out

    def _bin_means(self, bins, ret, pair):
        means = np.full((len(bins), self.q), np.nan)
        for b in range(1, self.q + 1):
            member = (bins == b) & pair
            count = member.sum(axis=1)
            total = np.where(member, ret, 0.0).sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                means[:, b - 1] = np.where(count > 0, total / count, np.nan)
        return means

    def _update_turnover(self, bins):
        if len(bins) == 0:
            return
        previous = np.concatenate([self._previous_bins[None], bins[:-1]]) if len(bins) else bins
        first = 0 if self._have_previous else 1          # the very first period has no previous one
        for b in range(1, self.q + 1):
            now = bins[first:] == b
            new = (now & (previous[first:] != b)).sum(axis=1)
            size = now.sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                self.turnover[b - 1].update(np.where(size > 0, new / size, np.nan))
        self._previous_bins = bins[-1].copy()
        self._have_previous = True

    def summary(self):
        decay = {j: {"ic": self.ic[j].mean if self.ic[j].n else math.nan,
                     "rank_ic": self.rank_ic[j].mean if self.rank_ic[j].n else math.nan} for j in self.ic}
        with np.errstate(invalid="ignore", divide="ignore"):
            quantile_mean = self.quantile_sum / self.quantile_periods                 # (decay, q)
        return {
            "ic": self.ic[1].summary(), "rank_ic": self.rank_ic[1].summary(),
            "ic_decay": {str(j): v for j, v in decay.items()},
            "quantiles": self.q,
            "quantile_mean_return": {str(j + 1): [float(v) for v in quantile_mean[j]] for j in range(self.decay)},
            "top_minus_bottom": self.spread.summary(),
            "quantile_turnover": [m.mean if m.n else math.nan for m in self.turnover],
            "coverage": {"mean": self.coverage.mean if self.coverage.n else math.nan,
                         "periods_with_signal": self.coverage.n},
            "periods_not_binned": self.unbinned_periods,
        }
