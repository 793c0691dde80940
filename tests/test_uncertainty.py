"""The uncertainty of a backtest's headline figures (analysis/backtest/uncertainty.py) against references:
statsmodels' HAC t-statistic, the bootstrap interval's coverage on simulated series with a known Sharpe
ratio, and the published PSR / DSR formulas evaluated here."""

import math

import numpy as np
import pytest

from analysis.backtest.uncertainty import (annualized_note, bootstrap_intervals, deflated_sharpe, expected_max_sharpe,
                                           hac_t_stat, newey_west_lags, probabilistic_sharpe)


def _autocorrelated(rng, n, mean=0.001):
    e = rng.normal(size=n + 2)
    return mean + 0.02 * (e[2:] + 0.6 * e[1:-1] + 0.3 * e[:-2])          # MA(2): correlated two lags deep


@pytest.mark.parametrize("lags", [1, 3, 8, 20])
def test_hac_t_equals_statsmodels(lags):
    sm = pytest.importorskip("statsmodels.api")
    x = _autocorrelated(np.random.default_rng(lags), 700)
    mean, se, t = hac_t_stat(x, lags)
    fit = sm.OLS(x, np.ones(len(x))).fit(cov_type="HAC", cov_kwds={"maxlags": lags})
    assert mean == pytest.approx(fit.params[0], abs=1e-12)
    assert se == pytest.approx(fit.bse[0], rel=1e-9)
    assert t == pytest.approx(fit.tvalues[0], rel=1e-9)


def test_hac_lags_cover_the_horizon():
    assert newey_west_lags(63, horizon=1) == 3                  # floor(4 (63/100)^(2/9))
    assert newey_west_lags(63, horizon=5) == 5                  # overlapping 5-period returns: at least 5
    assert newey_west_lags(100_000, horizon=1) == 18


def test_bootstrap_interval_covers_the_true_sharpe_about_95_percent():
    """200 simulated series of 500 periods (AR(1) 0.2, true annual Sharpe 1.0): the share of 95% intervals that
    hold the true value is near 0.95."""
    rng = np.random.default_rng(7)
    ppy, n, phi, sd_e = 252, 500, 0.2, 0.01
    sd = sd_e / math.sqrt(1 - phi ** 2)
    mu = 1.0 / math.sqrt(ppy) * sd                              # per period: annual Sharpe 1.0
    hits = 0
    for trial in range(200):
        e = rng.normal(0, sd_e, n + 100)
        x = np.empty(n + 100)
        x[0] = 0.0
        for t in range(1, n + 100):
            x[t] = phi * x[t - 1] + e[t]
        r = mu + x[100:]
        low, high = bootstrap_intervals(r, ppy, n_boot=300, seed=trial)["sharpe"]
        hits += low <= 1.0 <= high
    assert 0.88 <= hits / 200 <= 0.99, hits / 200


def test_bootstrap_memory_does_not_grow_with_history(monkeypatch):
    """Resamples are drawn in batches of BOOTSTRAP_CELLS values: with a tiny batch the interval is the same."""
    import analysis.backtest.uncertainty as u
    r = np.random.default_rng(3).normal(0.0005, 0.01, 2_000)
    whole = bootstrap_intervals(r, 252, n_boot=50, seed=1)
    monkeypatch.setattr(u, "BOOTSTRAP_CELLS", 2_000)               # one resample at a time
    assert bootstrap_intervals(r, 252, n_boot=50, seed=1) == whole


def test_psr_and_dsr_equal_the_published_formulas():
    """PSR = Phi((SR - SR*) sqrt(n - 1) / sqrt(1 - g3 SR + (g4 - 1)/4 SR^2)) (Bailey and Lopez de Prado 2012);
    DSR: SR* = sd(SR) ((1 - gamma) Phi^-1(1 - 1/N) + gamma Phi^-1(1 - 1/(N e))) (2014), written out here."""
    scipy_stats = pytest.importorskip("scipy.stats")
    r = np.random.default_rng(11).standard_t(5, 750) * 0.01 + 0.0008
    n = len(r)
    sr = r.mean() / r.std(ddof=1)
    g3 = scipy_stats.skew(r)
    g4 = scipy_stats.kurtosis(r, fisher=False)
    denominator = math.sqrt(1 - g3 * sr + (g4 - 1) / 4 * sr ** 2)
    assert probabilistic_sharpe(r) == pytest.approx(scipy_stats.norm.cdf(sr * math.sqrt(n - 1) / denominator), rel=1e-9)
    assert probabilistic_sharpe(r, 0.02) == pytest.approx(
        scipy_stats.norm.cdf((sr - 0.02) * math.sqrt(n - 1) / denominator), rel=1e-9)
    trials, gamma = 40, 0.5772156649015329
    sd_sr = denominator / math.sqrt(n - 1)
    sr_star = sd_sr * ((1 - gamma) * scipy_stats.norm.ppf(1 - 1 / trials)
                       + gamma * scipy_stats.norm.ppf(1 - 1 / (trials * math.e)))
    assert expected_max_sharpe(trials, sd_sr) == pytest.approx(sr_star, rel=1e-9)
    assert deflated_sharpe(r, trials) == pytest.approx(
        scipy_stats.norm.cdf((sr - sr_star) * math.sqrt(n - 1) / denominator), rel=1e-9)
    assert deflated_sharpe(r, trials) < probabilistic_sharpe(r)       # more configurations tried, less sure
    assert deflated_sharpe(r, 1) == pytest.approx(probabilistic_sharpe(r))


def test_under_a_year_is_said():
    assert annualized_note(63, 252).startswith("annualized from 63 periods (0.25 years")
    assert annualized_note(300, 252) is None
