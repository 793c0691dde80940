"""Target weights from a signal, and the portfolio that follows them period by period.

Timing (no look-ahead): at the close of period t the strategy sees the signal and prices up
to t and sets weights; they earn the return from t to t + 1. Between rebalances the weights
drift with prices. Costs are charged on the value traded at a rebalance, before the period's
return: V(t+1) = (V(t) - cost(t)) * (1 + sum_i w_i r_i), cost(t) = the sum over traded names
of max(bps / 1e4 * |trade value|, min_cost). Cash earns nothing; shorts are financed at zero.

Strategies (weights are fractions of the portfolio's value):
  topk       long the k best names (ties: column order), 1/k each; with 0 < drop < k, Qlib's
             TopkDropout rule: at most `drop` held names are replaced per rebalance
  longshort  long the top quantile, short the bottom one (pd.qcut bins), +0.5 / -0.5 in all
  threshold  per name: +1 where signal > long_above, -1 where signal < short_below, 0 between,
             each 1 / (names with a price) of the value (the RSI rule)
A name can be traded only where it has a price at t: one without (halted, delisted, not listed
yet) keeps its weight through a rebalance; a held, tradable name with no signal ranks last.
"""

import dataclasses

import numpy as np

from analysis.backtest.config import STRATEGIES  # noqa: F401  (the strategies a config may name)
from analysis.backtest.factor import quantile_bins


@dataclasses.dataclass
class StrategySpec:
    name: str = "topk"
    k: int = 50                  # topk: names held
    drop: int = 0                # topk: names replaced at most per rebalance (0 = k: plain top k)
    quantiles: int = 5           # longshort: bins; long the top, short the bottom
    long_above: float = 0.0      # threshold: long where signal > this
    short_below: float = 0.0     # threshold: short where signal < this
    long_only: bool = False      # threshold / longshort: no short side
    rebalance: int = 1           # periods between rebalances
    cost_bps: float = 0.0        # per side, on the traded value
    min_cost: float = 0.0        # per traded name, in money (with `capital`)
    capital: float = 1_000_000.0 # starting value, in money: only the minimum cost depends on it


def topk_dropout(score, eligible, held, k, drop):
    """New held mask (N,) by Qlib's TopkDropoutStrategy rule. score: (N,) with NaN; eligible: (N,) names
    that can be traded now; held: (N,) bool. A held name that cannot be traded is not sold and keeps its
    slot (Qlib skips untradable sells the same way). Ties keep the lower column first (stable sorts)."""
    drop = k if drop <= 0 else drop
    key = np.where(np.isfinite(score), score, -np.inf)
    last = np.flatnonzero(held)
    last = last[np.argsort(-key[last], kind="stable")]
    pool = np.flatnonzero(eligible & ~held & np.isfinite(score))
    n_new = max(0, drop + k - len(last))
    cand = pool[np.argsort(-key[pool], kind="stable")][:n_new]
    comb = np.concatenate([last, cand])
    comb = comb[np.argsort(-key[comb], kind="stable")]
    sell = np.intersect1d(last, comb[-drop:]) if drop > 0 and len(comb) else np.empty(0, np.int64)
    sell = sell[eligible[sell]]
    buy = cand[:len(sell) + k - len(last)]
    out = held.copy()
    out[sell] = False
    out[buy] = True
    return out


def _block_targets(spec, score, eligible):
    """Target weights (T, N) of every row of a block for the rules that need no state: plain top k
    (k best by score, ties by column order), longshort and threshold. A topk row whose names are
    fewer than k holds what there is (the rest in cash)."""
    usable = eligible & np.isfinite(score)                                      # (T, N)
    t, n = score.shape
    if spec.name == "topk":
        key = np.where(usable, score, -np.inf)
        order = np.argsort(-key, axis=1, kind="stable")[:, :spec.k]             # (T, k)
        chosen = np.zeros((t, n), bool)
        np.put_along_axis(chosen, order, True, axis=1)
        return np.where(chosen & usable, 1.0 / spec.k, 0.0)
    if spec.name == "longshort":
        bins = quantile_bins(np.where(usable, score, np.nan), spec.quantiles)
        top, bottom = bins == spec.quantiles, bins == 1
        with np.errstate(invalid="ignore", divide="ignore"):
            long_w = (1.0 if spec.long_only else 0.5) / top.sum(axis=1, keepdims=True)
            short_w = -0.5 / bottom.sum(axis=1, keepdims=True)
        w = np.where(top, long_w, 0.0)
        return w if spec.long_only else np.where(bottom, short_w, w)
    with np.errstate(invalid="ignore"):
        side = np.where(usable & (score > spec.long_above), 1.0, 0.0)
        if not spec.long_only:
            side = np.where(usable & (score < spec.short_below), -1.0, side)
    return side / np.maximum(eligible.sum(axis=1, keepdims=True), 1)


class Portfolio:
    """Runs one strategy over blocks of (signal, eligible, one-period returns); keeps its positions
    from block to block. `step` returns per-period columns; the caller accumulates statistics.

    Targets are computed for a whole block at once where the rule has no state; the loop over
    periods only trades, charges costs and drifts the weights (~20 us a period for 500 names)."""

    def __init__(self, spec, n_sessions):
        self.spec = spec
        self.weights = np.zeros(n_sessions)        # after the last period's drift
        self.held = np.zeros(n_sessions, bool)
        self.periods = 0                           # periods seen: rebalance when periods % rebalance == 0
        self.value = spec.capital                  # in money, net of costs
        self.dropout = spec.name == "topk" and 0 < spec.drop < spec.k

    def _topk_with_frozen(self, score, eligible, w):
        """Plain top k where some held names cannot trade: they keep their slots, the best tradable
        names fill the rest."""
        k = self.spec.k
        frozen = ~eligible & (w != 0)
        key = np.where(eligible & np.isfinite(score), score, -np.inf)
        order = np.argsort(-key, kind="stable")
        free = [i for i in order[:k + int(frozen.sum())] if np.isfinite(key[i])][:k - int(frozen.sum())]
        target = np.zeros(len(score))
        target[free] = 1.0 / k
        return target

    def step(self, score, eligible, returns):
        """score, eligible, returns: (T, N); returns[t] = return from t to t + 1 (NaN: no price).
        Returns per-period arrays (T,): gross, net, cost, turnover, long, short, exposure."""
        s = self.spec
        t_rows, n = score.shape
        out = {key: np.zeros(t_rows) for key in ("gross", "net", "cost", "turnover", "exposure")}
        out["long"] = np.zeros(t_rows, np.int32)
        out["short"] = np.zeros(t_rows, np.int32)
        due = (self.periods + np.arange(t_rows)) % s.rebalance == 0               # (T,) rebalance rows
        targets = None if self.dropout else _block_targets(s, score, eligible)   # (T, N)
        r_all = np.where(np.isfinite(returns), returns, 0.0)                      # a name with no next price earns 0
        w = self.weights
        bps, min_frac = s.cost_bps / 1e4, s.min_cost
        gross_a, net_a, cost_a, turn_a = out["gross"], out["net"], out["cost"], out["turnover"]
        long_a, short_a, expo_a = out["long"], out["short"], out["exposure"]
        for t in range(t_rows):
            cost = 0.0
            if due[t]:
                elig = eligible[t]
                frozen = ~elig & (w != 0)                     # no price now: cannot be traded
                if self.dropout:
                    self.held = topk_dropout(score[t], elig, self.held | frozen, s.k, s.drop)
                    target = np.where(self.held, 1.0 / s.k, 0.0)
                elif s.name == "topk" and frozen.any():
                    target = self._topk_with_frozen(score[t], elig, w)
                else:
                    target = targets[t]
                if frozen.any():
                    target = target.copy()
                    target[frozen] = w[frozen]
                trade = np.abs(target - w)
                turn_a[t] = trade.sum()
                if bps or min_frac:
                    traded = trade[trade > 1e-15]
                    cost = float(np.maximum(bps * traded, min_frac / self.value).sum())
                w = target
            r = r_all[t]
            gross = float(w @ r)
            net = (1.0 - cost) * (1.0 + gross) - 1.0
            gross_a[t], net_a[t], cost_a[t] = gross, net, cost
            self.value *= 1.0 + net
            long_a[t] = np.count_nonzero(w > 0)
            short_a[t] = np.count_nonzero(w < 0)
            expo_a[t] = np.abs(w).sum()
            w = w * (1.0 + r) / (1.0 + gross) if gross != -1.0 else np.zeros(n)
        self.periods += t_rows
        self.weights = w
        return out


def benchmark_returns(eligible, returns):
    """Equal weight over the names with a price at t, rebalanced every period, no costs: (T,)."""
    r = np.where(eligible & np.isfinite(returns), returns, np.nan)
    with np.errstate(invalid="ignore"):
        count = np.isfinite(r).sum(axis=1)
        return np.where(count > 0, np.nansum(r, axis=1) / np.maximum(count, 1), 0.0)
