"""Target weights from a signal, and the portfolio that follows them period by period.

Timing (no look-ahead): at the close of period t the strategy sees the signal and prices up
to t and sets weights; they earn the return from t to t + 1. Between rebalances the weights
drift with prices. Costs are charged on the value traded at a rebalance, before the period's
return: V(t+1) = (V(t) - cost(t)) * (1 + sum_i w_i r_i), cost(t) = the sum over traded names
of max(bps / 1e4 * |trade value|, min_cost). Cash earns nothing; shorts are financed at zero.

Strategies (weights are fractions of the portfolio's value):
  topk       long the k best names, 1/k each; Qlib's TopkDropout rule: at most `drop` held names
             are replaced per rebalance (drop >= k: plain top k)
  longshort  long the top quantile, short the bottom one (pd.qcut bins), +0.5 / -0.5 in all
  threshold  per name: +1 where signal > long_above, -1 where signal < short_below, 0 between,
             each 1 / (names with a price) of the value (the RSI rule)
A name can be traded only where it has a price at t: one without (halted, delisted, not listed
yet) keeps its weight through a rebalance; a held, tradable name with no signal ranks last.
"""

import dataclasses

import numpy as np

from analysis.factor import quantile_bins

STRATEGIES = ("topk", "longshort", "threshold")


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


class Portfolio:
    """Runs one strategy over blocks of (signal, eligible, one-period returns); keeps its positions
    from block to block. `step` returns per-period columns; the caller accumulates statistics."""

    def __init__(self, spec, n_sessions):
        self.spec = spec
        self.weights = np.zeros(n_sessions)        # after the last period's drift
        self.held = np.zeros(n_sessions, bool)
        self.periods = 0                           # periods seen: rebalance when periods % rebalance == 0
        self.value = spec.capital                  # in money, net of costs

    def _target(self, score, eligible):
        s = self.spec
        if s.name == "topk":
            self.held = topk_dropout(score, eligible, self.held, s.k, s.drop)
            return np.where(self.held, 1.0 / s.k, 0.0)
        usable = eligible & np.isfinite(score)
        if s.name == "longshort":
            bins = quantile_bins(np.where(usable, score, np.nan)[None], s.quantiles)[0]
            top, bottom = bins == s.quantiles, bins == 1
            w = np.zeros(len(score))
            if top.any():
                w[top] = (1.0 if s.long_only else 0.5) / top.sum()
            if bottom.any() and not s.long_only:
                w[bottom] = -0.5 / bottom.sum()
            return w
        n = max(int(eligible.sum()), 1)
        with np.errstate(invalid="ignore"):
            side = np.where(usable & (score > s.long_above), 1.0, 0.0)
            if not s.long_only:
                side = np.where(usable & (score < s.short_below), -1.0, side)
        return side / n

    def step(self, score, eligible, returns):
        """score, eligible, returns: (T, N); returns[t] = return from t to t + 1 (NaN: no price).
        Returns per-period arrays (T,): gross, net, cost, turnover, long, short, exposure."""
        s = self.spec
        t_rows, n = score.shape
        out = {key: np.zeros(t_rows) for key in ("gross", "net", "cost", "turnover", "exposure")}
        out["long"] = np.zeros(t_rows, np.int32)
        out["short"] = np.zeros(t_rows, np.int32)
        w = self.weights
        bps = s.cost_bps / 1e4
        for t in range(t_rows):
            cost = 0.0
            if self.periods % s.rebalance == 0:
                target = self._target(score[t], eligible[t])
                frozen = ~eligible[t] & (w != 0)                  # no price now: cannot be traded
                target[frozen] = w[frozen]
                trade = np.abs(target - w)
                traded = trade > 1e-15
                turnover = float(trade.sum())
                if bps or s.min_cost:
                    cost = float(np.maximum(bps * trade[traded], s.min_cost / self.value).sum())
                out["turnover"][t] = turnover
                w = target
            self.periods += 1
            r = np.where(np.isfinite(returns[t]), returns[t], 0.0)        # a name with no next price earns 0
            gross = float(w @ r)
            out["gross"][t] = gross
            out["cost"][t] = cost
            out["net"][t] = (1.0 - cost) * (1.0 + gross) - 1.0
            self.value *= 1.0 + out["net"][t]
            out["long"][t] = int((w > 0).sum())
            out["short"][t] = int((w < 0).sum())
            out["exposure"][t] = float(np.abs(w).sum())
            w = w * (1.0 + r) / (1.0 + gross) if gross != -1.0 else np.zeros(n)
        self.weights = w
        return out


def benchmark_returns(eligible, returns):
    """Equal weight over the names with a price at t, rebalanced every period, no costs: (T,)."""
    r = np.where(eligible & np.isfinite(returns), returns, np.nan)
    with np.errstate(invalid="ignore"):
        count = np.isfinite(r).sum(axis=1)
        return np.where(count > 0, np.nansum(r, axis=1) / np.maximum(count, 1), 0.0)
