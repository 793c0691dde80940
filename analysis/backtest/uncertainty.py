"""How sure a backtest's headline figures are: a t-statistic of the mean IC from Newey-West (HAC) standard
errors, 95% intervals of the annual return and the Sharpe ratio from a stationary block bootstrap, and the
probabilistic / deflated Sharpe ratios (Bailey and Lopez de Prado). Plain numpy and the standard library
(the backtest imports neither scipy nor pandas: its memory budget); tests/test_uncertainty.py checks each
against statsmodels, a simulation and the published formulas.

    Newey and West (1987), "A Simple, Positive Semi-Definite, Heteroskedasticity and Autocorrelation
        Consistent Covariance Matrix", Econometrica 55(3).
    Politis and Romano (1994), "The Stationary Bootstrap", JASA 89(428).
    Bailey and Lopez de Prado (2012), "The Sharpe Ratio Efficient Frontier", Journal of Risk 15(2) (PSR).
    Bailey and Lopez de Prado (2014), "The Deflated Sharpe Ratio", Journal of Portfolio Management 40(5).
"""

import math
from statistics import NormalDist

import h5py
import numpy as np

EULER_GAMMA = 0.5772156649015329
_NORMAL = NormalDist()
BOOTSTRAP_CELLS = 1 << 20        # resampled values held at once (8 MB of float64), whatever the history


def newey_west_lags(n, horizon=1):
    """The lag window: the usual rule floor(4 (n/100)^(2/9)), and at least the forecast horizon (forward
    returns over h periods overlap, so their errors are correlated up to h - 1 lags)."""
    return max(int(horizon), int(math.floor(4 * (max(n, 1) / 100) ** (2 / 9))))


def hac_t_stat(x, lags):
    """(mean, HAC standard error, t) of the mean of the series `x` (NaNs dropped) with Bartlett weights up to
    `lags`: the intercept-only regression statsmodels fits with cov_type="HAC" (no small-sample correction)."""
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    n = len(x)
    if n < 2:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    e = x - mean
    s = float(e @ e) / n
    for lag in range(1, min(lags, n - 1) + 1):
        s += 2 * (1 - lag / (lags + 1)) * float(e[lag:] @ e[:-lag]) / n
    se = math.sqrt(s / n) if s > 0 else math.nan
    return mean, se, mean / se if se and se > 0 else math.nan


def _annual(log_sum, n, periods_per_year):
    return np.expm1(np.minimum(log_sum * periods_per_year / n, 700.0))


def _resample(rng, n, mean_block):
    """One stationary-bootstrap draw of n indices: blocks start at random places and run on (wrapping at the
    end) for a geometric number of periods with mean `mean_block`. Each resample has its own random stream,
    so the draws do not depend on how many are made at once."""
    steps = np.arange(n)
    starts = rng.random(n) < 1.0 / mean_block
    starts[0] = True
    first = np.maximum.accumulate(np.where(starts, steps, 0))             # where each draw's block began
    origin = rng.integers(0, n, size=n)[np.cumsum(starts) - 1]            # each block's random start
    return (origin + steps - first) % n


def bootstrap_intervals(returns, periods_per_year, *, n_boot=1000, mean_block=None, level=0.95, seed=0):
    """95% (`level`) percentile intervals of the annual return (compounded) and the annualized Sharpe ratio
    of per-period `returns`, from a stationary bootstrap (blocks of geometric length with mean `mean_block`,
    default n^(1/3): it keeps the series' short-range dependence). `returns` (n,) one series, or (S, n) series
    of the same periods resampled together (one draw of periods serves them all; a period any of them lacks
    is left out). Resamples are drawn a batch at a time (BOOTSTRAP_CELLS values), so memory does not grow
    with the history. Returns a dict, or a list of S dicts for (S, n)."""
    r = np.asarray(returns, np.float64)
    single = r.ndim == 1
    r = np.atleast_2d(r)
    r = r[:, np.isfinite(r).all(axis=0)]
    s, n = r.shape
    empty = {"n_boot": n_boot, "level": level, "mean_block": None, "annual_return": [math.nan, math.nan],
             "sharpe": [math.nan, math.nan]}
    if n < 3:
        return dict(empty) if single else [dict(empty) for _ in range(s)]
    block = float(mean_block or max(1.0, round(n ** (1 / 3))))
    with np.errstate(invalid="ignore", divide="ignore"):
        logs = np.log1p(r)                    # (a period losing 100% or more: -inf / NaN, an interval of n/a)
    annual, sharpe = np.empty((s, n_boot)), np.empty((s, n_boot))
    batch = max(1, BOOTSTRAP_CELLS // n)
    for a in range(0, n_boot, batch):
        index = np.stack([_resample(np.random.default_rng([seed, i]), n, block) for i in range(a, min(n_boot, a + batch))])
        for row in range(s):
            sample = r[row][index]                                        # (b, n)
            mean, sd = sample.mean(axis=1), sample.std(axis=1, ddof=1)
            with np.errstate(divide="ignore", invalid="ignore"):
                sharpe[row, a:a + len(index)] = np.where(sd > 0, mean / sd * math.sqrt(periods_per_year), np.nan)
                annual[row, a:a + len(index)] = _annual(logs[row][index].sum(axis=1), n, periods_per_year)
    tail = (1 - level) / 2 * 100
    results = []
    for row in range(s):
        out = dict(empty, mean_block=block)
        for name, values in (("annual_return", annual[row]), ("sharpe", sharpe[row])):
            values = values[np.isfinite(values)]
            if len(values) == n_boot:
                out[name] = [float(v) for v in np.percentile(values, [tail, 100 - tail])]
        results.append(out)
    return results[0] if single else results


def moments(returns):
    """(n, mean, sd, skewness, kurtosis (not excess)) of a series, NaNs dropped."""
    r = np.asarray(returns, np.float64)
    r = r[np.isfinite(r)]
    n = len(r)
    if n < 2:
        return n, math.nan, math.nan, math.nan, math.nan
    mean, sd = float(r.mean()), float(r.std(ddof=1))
    z = (r - mean) / r.std() if r.std() > 0 else np.zeros_like(r)
    return n, mean, sd, float((z ** 3).mean()), float((z ** 4).mean())


def sharpe_ratio_sd(sharpe, n, skew, kurt):
    """The standard deviation of a per-period Sharpe estimate from n periods of returns with this skewness and
    kurtosis (Mertens 2002; Bailey and Lopez de Prado 2012, eq. 5)."""
    return math.sqrt(max(1 - skew * sharpe + (kurt - 1) / 4 * sharpe ** 2, 0.0) / (n - 1))


def _psr(m, benchmark_sharpe):
    n, mean, sd, skew, kurt = m
    if n < 3 or not sd > 0:
        return math.nan
    spread = sharpe_ratio_sd(mean / sd, n, skew, kurt)
    return _NORMAL.cdf((mean / sd - benchmark_sharpe) / spread) if spread > 0 else math.nan


def _dsr(m, trials):
    n, mean, sd, skew, kurt = m
    if n < 3 or not sd > 0:
        return math.nan
    return _psr(m, expected_max_sharpe(trials, sharpe_ratio_sd(mean / sd, n, skew, kurt)))


def probabilistic_sharpe(returns, benchmark_sharpe=0.0):
    """PSR: the probability that the true per-period Sharpe ratio exceeds `benchmark_sharpe` (per period),
    given the sample's length, skewness and kurtosis."""
    return _psr(moments(returns), benchmark_sharpe)


def expected_max_sharpe(trials, sharpe_sd):
    """The largest per-period Sharpe ratio expected among `trials` independent configurations with no skill,
    each estimated with standard deviation `sharpe_sd` (Bailey and Lopez de Prado 2014, eq. 2)."""
    if trials < 2:
        return 0.0
    return sharpe_sd * ((1 - EULER_GAMMA) * _NORMAL.inv_cdf(1 - 1 / trials)
                        + EULER_GAMMA * _NORMAL.inv_cdf(1 - 1 / (trials * math.e)))


def deflated_sharpe(returns, trials):
    """DSR: the PSR against the best Sharpe ratio `trials` skill-less configurations would show by chance. The
    spread of the trials' Sharpe ratios is taken as this estimate's own standard deviation (the trials are
    not at hand: only their number)."""
    return _dsr(moments(returns), trials)


def annualized_note(periods, periods_per_year):
    """The warning an annualized figure from under a year of periods carries, or None."""
    if periods_per_year and periods < periods_per_year:
        return (f"annualized from {periods:,} periods ({periods / periods_per_year:.2f} years at "
                f"{periods_per_year:g} a year): under one year, the annual figures extrapolate")
    return None


def _with_uncertainty(summary, returns, boot, periods_per_year, trials):
    """A performance summary (stats.Performance) with its intervals, PSR / DSR and its length in years."""
    m = moments(returns)
    summary.update(annual_return_ci95=boot["annual_return"], sharpe_ci95=boot["sharpe"], psr=_psr(m, 0.0),
                   dsr=_dsr(m, trials) if trials else None,
                   years=summary["periods"] / periods_per_year if periods_per_year else math.nan)


def add_uncertainty(result, periods_path, *, horizon=1, trials=None, n_boot=1000):
    """Adds to a backtest's result, from its per-period series (periods.h5): the HAC t of the mean IC and rank
    IC (`hac_t`, `hac_se`, `hac_lags`), each portfolio's and the benchmark's intervals, PSR and DSR (with
    `trials`), `uncertainty` (the methods and their settings) and `warnings` (annualized from under a year)."""
    ppy = result["periods_per_year"]
    sa = result["signal_analysis"]
    with h5py.File(periods_path, "r") as f:
        lags = newey_west_lags(f["time"].shape[0] if "time" in f else 0, horizon)
        for key in ("ic", "rank_ic"):
            if key in sa and key in f:
                _, se, t = hac_t_stat(f[key][:], lags)
                sa[key].update(hac_t=t, hac_se=se, hac_lags=lags)
        # the strategies and the benchmark over the same periods: one draw of periods for all of them
        books = [(book["net"], f[f"{name}.net"][:]) for name, book in result["portfolios"].items()]
        books += [(result["benchmark"], f["benchmark"][:])] if "benchmark" in f else []
    boots = bootstrap_intervals(np.stack([r for _, r in books]), ppy, n_boot=n_boot) if books else []
    for (summary, returns), boot in zip(books, boots):
        _with_uncertainty(summary, returns, boot, ppy, trials)
    boot = boots[0] if boots else {}
    result["uncertainty"] = {
        "ic_t": f"Newey-West (HAC) standard errors, Bartlett weights, {lags} lags (at least the horizon, {horizon})",
        "intervals": f"95% percentile intervals from a stationary block bootstrap ({n_boot} resamples, mean block "
                     f"{boot.get('mean_block')} periods)",
        "psr": "probabilistic Sharpe ratio against 0 (Bailey and Lopez de Prado 2012)",
        "dsr": (f"deflated Sharpe ratio for {trials} configurations tried (Bailey and Lopez de Prado 2014)"
                if trials else "not computed: give --trials N, the configurations tried"),
        "trials": trials}
    periods = result["benchmark"].get("periods", 0)
    note = annualized_note(periods, ppy)
    result["warnings"] = [note] if note else []
    return result
