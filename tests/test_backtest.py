"""`backtest`: numbers equal to independent references (alphalens-reloaded, empyrical-reloaded, plain
pandas written here), no look-ahead, exact costs, and results that do not depend on the block size."""

import math

import numpy as np
import pandas as pd
import pytest

from analysis.backtest.run import BacktestConfig, run_backtest
from tests.helpers.market import random_prices, read_periods, report, write_predictions, write_prices

al = pytest.importorskip("alphalens")
ep = pytest.importorskip("empyrical")


def backtest(tmp_path, prices, predicted=None, name="out", **kw):
    """Run a backtest of `predicted` (dates x sessions, written as a prediction file) or of kw's signal."""
    price_path = write_prices(tmp_path / "prices.h5", prices)
    if predicted is not None:
        kw["predictions"] = str(write_predictions(tmp_path / "pred.h5", predicted))
    out = tmp_path / name
    cfg = BacktestConfig(prices=[str(price_path)], price_column="close", out=str(out), progress=False,
                         overwrite=True, tensorboard=False, plots=False, **kw)
    return run_backtest(cfg), out


def alphalens_data(prices, signal, periods):
    factor = signal.stack()
    factor.index.names = ["date", "asset"]
    return al.utils.get_clean_factor_and_forward_returns(factor, prices, quantiles=5, periods=periods,
                                                         max_loss=1.0)


@pytest.fixture
def market():
    prices = random_prices(n_dates=90, n_assets=15, seed=3)
    signal = pd.DataFrame(np.random.default_rng(4).normal(size=prices.shape), index=prices.index,
                          columns=prices.columns)
    # a signal that predicts a little, so the numbers are not all noise
    signal += 30 * prices.pct_change().shift(-1).fillna(0)
    # prediction files hold float32: the references get the values the backtest reads
    return prices, signal.astype(np.float32).astype(np.float64)


def test_signal_analysis_equals_alphalens(tmp_path, market):
    prices, signal = market
    result, out = backtest(tmp_path, prices, signal, decay=3, strategies=("topk",))
    periods = read_periods(out)
    for j in (1, 2, 3):
        data = alphalens_data(prices, signal, (j,))
        col = data.columns[0]
        rank_ic = al.performance.factor_information_coefficient(data)[col]
        mean_q, _ = al.performance.mean_return_by_quantile(data, by_date=False, demeaned=False)
        ours = result["signal_analysis"]
        assert ours["ic_decay"][str(j)]["rank_ic"] == pytest.approx(rank_ic.mean(), abs=1e-9)
        np.testing.assert_allclose(ours["quantile_mean_return"][str(j)], mean_q[col].to_numpy(), rtol=0, atol=1e-9)
        pearson = data.groupby(level="date").apply(lambda g: g["factor"].corr(g[col]))
        assert ours["ic_decay"][str(j)]["ic"] == pytest.approx(pearson.mean(), abs=1e-9)
        if j == 1:     # the per-period series, date by date
            np.testing.assert_allclose(periods.loc[rank_ic.index, "rank_ic"], rank_ic, atol=1e-9)
            np.testing.assert_allclose(periods.loc[pearson.index, "ic"], pearson, atol=1e-9)
            ic = ours["rank_ic"]
            assert ic["mean"] == pytest.approx(rank_ic.mean(), abs=1e-9)
            assert ic["std"] == pytest.approx(rank_ic.std(ddof=1), abs=1e-9)
            assert ic["t_stat"] == pytest.approx(rank_ic.mean() / rank_ic.std(ddof=1) * math.sqrt(len(rank_ic)), rel=1e-9)
            assert ic["positive_share"] == pytest.approx((rank_ic > 0).mean(), abs=1e-12)
            turnover = [al.performance.quantile_turnover(data["factor_quantile"], q).mean() for q in range(1, 6)]
            np.testing.assert_allclose(ours["quantile_turnover"], turnover, atol=1e-9)


def test_performance_equals_empyrical(tmp_path, market):
    prices, signal = market
    result, out = backtest(tmp_path, prices, signal, strategies=("topk", "longshort"), k=4, cost_bps=10)
    periods = read_periods(out)
    assert result["periods_per_year"] == 252
    for s in ("topk", "longshort"):
        for kind in ("net", "gross"):
            r = periods[f"{s}.{kind}"]
            got = result["portfolios"][s][kind]
            assert got["annual_return"] == pytest.approx(ep.annual_return(r, annualization=252), rel=1e-9)
            assert got["annual_volatility"] == pytest.approx(ep.annual_volatility(r, annualization=252), rel=1e-9)
            assert got["sharpe"] == pytest.approx(ep.sharpe_ratio(r, annualization=252), rel=1e-9)
            # our drawdown counts from the starting capital: empyrical's with a first period of 0
            with_start = pd.concat([pd.Series([0.0]), r.reset_index(drop=True)])
            assert got["max_drawdown"] == pytest.approx(ep.max_drawdown(with_start), rel=1e-9)
            assert got["total_return"] == pytest.approx(ep.cum_returns_final(r), rel=1e-9)
            assert got["calmar"] == pytest.approx(ep.calmar_ratio(with_start, annualization=252) *
                                                  (ep.annual_return(r, annualization=252) /
                                                   ep.annual_return(with_start, annualization=252)), rel=1e-9)
        active = periods[f"{s}.net"] - periods["benchmark"]
        assert result["portfolios"][s]["information_ratio"] == pytest.approx(
            active.mean() / active.std(ddof=1) * math.sqrt(252), rel=1e-9)
    bench = prices.pct_change().shift(-1).iloc[:-1].mean(axis=1)
    np.testing.assert_allclose(periods["benchmark"], bench, rtol=0, atol=1e-12)


def reference_topk(prices, signal, k, drop, rebalance, cost_bps):
    """Qlib's TopkDropout rule and a drifting, costed portfolio, written with pandas."""
    returns = prices.pct_change().shift(-1)
    held, weights, rows = [], pd.Series(0.0, index=prices.columns), []
    for i, t in enumerate(prices.index[:-1]):
        cost = 0.0
        if i % rebalance == 0:
            score = signal.loc[t]
            last = sorted(held, key=lambda a: -score[a])
            fresh = score.drop(held).sort_values(ascending=False, kind="stable")
            today = list(fresh.index[:drop + k - len(last)])
            comb = sorted(last + today, key=lambda a: -score[a])
            sell = [a for a in last if a in comb[-drop:]]
            buy = today[:len(sell) + k - len(last)]
            held = [a for a in last if a not in sell] + buy
            target = pd.Series(0.0, index=prices.columns)
            target[held] = 1.0 / k
            cost = (target - weights).abs().sum() * cost_bps / 1e4
            weights = target
        r = returns.loc[t]
        gross = float((weights * r).sum())
        rows.append({"gross": gross, "net": (1 - cost) * (1 + gross) - 1})
        weights = weights * (1 + r) / (1 + gross)
    return pd.DataFrame(rows, index=prices.index[:-1])


@pytest.mark.parametrize("k,drop,rebalance,cost", [(3, 0, 1, 0.0), (4, 1, 1, 5.0), (5, 2, 3, 20.0)])
def test_topk_equals_a_pandas_reimplementation(tmp_path, market, k, drop, rebalance, cost):
    prices, signal = market
    _, out = backtest(tmp_path, prices, signal, strategies=("topk",), k=k, drop=drop, rebalance=rebalance,
                      cost_bps=cost, decay=1)
    periods = read_periods(out)
    expected = reference_topk(prices, signal, k, drop or k, rebalance, cost)
    np.testing.assert_allclose(periods["topk.gross"], expected["gross"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(periods["topk.net"], expected["net"], rtol=0, atol=1e-12)


def test_perfect_foresight_earns_exactly_the_best_topk_return(tmp_path):
    prices = random_prices(n_dates=60, n_assets=10, seed=5)
    future = prices.pct_change().shift(-1)             # known only to the test: the next period's return
    _, out = backtest(tmp_path, prices, future.fillna(0), strategies=("topk",), k=3, decay=1)
    periods = read_periods(out)
    best = future.iloc[:-1].apply(lambda row: row.nlargest(3).mean(), axis=1)
    np.testing.assert_allclose(periods["topk.gross"], best, rtol=0, atol=1e-12)


def test_a_past_return_signal_gives_the_hand_computed_momentum_and_reversal(tmp_path):
    prices = random_prices(n_dates=50, n_assets=8, seed=6)
    past = prices.pct_change()                           # known at t: the return from t-1 to t
    nxt = prices.pct_change().shift(-1)
    for spec, sign in (("momentum:1", 1), ("reversal:1", -1)):
        result, out = backtest(tmp_path, prices, name=spec.replace(":", "_"), signal=spec,
                               strategies=("topk",), k=2, decay=1)
        periods = read_periods(out)
        chosen = (sign * past).iloc[1:-1].apply(lambda row: list(row.nlargest(2).index), axis=1)
        expected = [nxt.loc[t, names].mean() for t, names in chosen.items()]
        np.testing.assert_allclose(periods["topk.gross"].iloc[1:], expected, rtol=0, atol=1e-12)
        assert periods["topk.gross"].iloc[0] == 0.0          # no signal at the first bar: nothing held


def test_costs_are_exactly_the_cost_on_the_traded_value(tmp_path):
    prices = random_prices(n_dates=40, n_assets=4, seed=7)
    flip = pd.DataFrame(0.0, index=prices.index, columns=prices.columns)
    flip.iloc[::2, 0] = 1.0
    flip.iloc[1::2, 1] = 1.0                             # hold A00, then A01, then A00 ...: trades every period
    c = 25.0
    _, out = backtest(tmp_path, prices, flip, strategies=("topk",), k=1, cost_bps=c, decay=1)
    periods = read_periods(out)
    value, free = 1.0, 1.0
    for _, row in periods.iterrows():
        traded = row["topk.turnover"] * value            # money traded at the rebalance
        value = (value - c / 1e4 * traded) * (1 + row["topk.gross"])
        free *= 1 + row["topk.gross"]
    assert periods["topk.turnover"].iloc[1:].eq(2.0).all() and periods["topk.turnover"].iloc[0] == 1.0
    result = report(out)
    assert result["portfolios"]["topk"]["net"]["total_return"] == pytest.approx(value - 1, rel=1e-12)
    assert result["portfolios"]["topk"]["gross"]["total_return"] == pytest.approx(free - 1, rel=1e-12)
    assert result["portfolios"]["topk"]["final_value"] == pytest.approx(1e6 * value, rel=1e-12)


def test_minimum_cost_per_traded_name(tmp_path):
    prices = random_prices(n_dates=20, n_assets=4, seed=8)
    flip = pd.DataFrame(0.0, index=prices.index, columns=prices.columns)
    flip.iloc[::2, 0] = 1.0
    flip.iloc[1::2, 1] = 1.0
    _, out = backtest(tmp_path, prices, flip, strategies=("topk",), k=1, cost_bps=1, min_cost=500, capital=100_000,
                      decay=1)
    periods = read_periods(out)
    value = 100_000.0
    for _, row in periods.iterrows():
        names = 1 if row["topk.turnover"] == 1.0 else 2
        cost = sum(max(1e-4 * value * (row["topk.turnover"] / names), 500.0) for _ in range(names))
        assert row["topk.cost"] == pytest.approx(cost / value, rel=1e-12)
        value = (value - cost) * (1 + row["topk.gross"])


def test_results_do_not_depend_on_the_block_size(tmp_path, market):
    prices, signal = market
    prices = prices.copy()
    prices.iloc[10:14, 2] = np.nan                       # a halt
    prices.iloc[:30, 5] = np.nan                         # a late listing
    prices.iloc[60:, 7] = np.nan                         # a delisting
    kw = dict(strategies=("topk", "longshort", "threshold"), k=3, drop=1, rebalance=2, cost_bps=3, decay=3)
    small, out_small = backtest(tmp_path, prices, signal, name="small", block_rows=5, **kw)
    large, out_large = backtest(tmp_path, prices, signal, name="large", block_rows=1000, **kw)
    a, b = read_periods(out_small), read_periods(out_large)
    pd.testing.assert_frame_equal(a, b, rtol=1e-12, atol=1e-14)
    for s in kw["strategies"]:
        for key, value in large["portfolios"][s]["net"].items():
            if isinstance(value, float):
                assert small["portfolios"][s]["net"][key] == pytest.approx(value, rel=1e-12), key
            else:
                assert small["portfolios"][s]["net"][key] == value, key
    sa, sb = small["signal_analysis"], large["signal_analysis"]
    assert sa["rank_ic"]["mean"] == pytest.approx(sb["rank_ic"]["mean"], rel=1e-12)
    np.testing.assert_allclose(sa["quantile_turnover"], sb["quantile_turnover"], rtol=1e-12)
    for j in ("1", "2", "3"):
        np.testing.assert_allclose(sa["quantile_mean_return"][j], sb["quantile_mean_return"][j], rtol=1e-12)


def test_missing_bars_are_never_filled_from_the_future(tmp_path):
    prices = random_prices(n_dates=30, n_assets=3, seed=9)
    prices.iloc[10:13, 0] = np.nan                       # A00 halted for 3 bars
    prices.iloc[:5, 1] = np.nan                          # A01 lists on the 6th bar
    signal = pd.DataFrame({"A00": 1.0, "A01": 0.0, "A02": -1.0}, index=prices.index)
    _, out = backtest(tmp_path, prices, signal, strategies=("topk",), k=1, decay=1)
    periods = read_periods(out)
    carried = prices.ffill()
    held = carried["A00"].pct_change().shift(-1)         # A00 is held throughout at its last traded price
    np.testing.assert_allclose(periods["topk.gross"], held.iloc[:-1], atol=1e-12)
    assert (periods["topk.gross"].iloc[10:12] == 0).all()       # no return while halted ...
    assert periods["topk.gross"].iloc[12] == pytest.approx(prices["A00"].iloc[13] / prices["A00"].iloc[9] - 1)
    # the benchmark counts A01 only from its first bar, and A00 not while halted
    r = carried.pct_change().shift(-1).where(prices.notna())
    np.testing.assert_allclose(periods["benchmark"], r.iloc[:-1].mean(axis=1), atol=1e-12)
    assert periods["coverage"].iloc[0] == 2 and periods["coverage"].iloc[11] == 2 and periods["coverage"].iloc[20] == 3


def test_sessions_with_different_calendars_align_on_the_union_of_times(tmp_path):
    weekdays = random_prices(n_dates=30, n_assets=2, seed=10, freq="B")
    daily = random_prices(n_dates=42, n_assets=1, seed=11, freq="D", start=str(weekdays.index[0].date()))
    daily.columns = ["D00"]
    prices = weekdays.join(daily, how="outer")
    signal = pd.DataFrame(np.random.default_rng(0).normal(size=prices.shape), index=prices.index,
                          columns=prices.columns).where(prices.notna())
    result, out = backtest(tmp_path, prices, signal, strategies=("threshold",), decay=1)
    periods = read_periods(out)
    assert list(periods.index) == list(prices.index[:-1])
    assert result["signal_rows_without_price"] == 0


def test_prediction_step_and_nan_predictions(tmp_path, market):
    prices, signal = market
    signal = signal.copy()
    signal.iloc[5:8, 2] = np.nan
    price_path = write_prices(tmp_path / "prices.h5", prices)
    steps = {2: -signal}
    pred = write_predictions(tmp_path / "pred.h5", signal, horizon=2, steps=steps)
    cfg = dict(prices=[str(price_path)], price_column="close", predictions=str(pred), progress=False,
               tensorboard=False, plots=False, strategies=("topk",), decay=1)
    one = run_backtest(BacktestConfig(out=str(tmp_path / "s1"), step=1, **cfg))
    two = run_backtest(BacktestConfig(out=str(tmp_path / "s2"), step=2, **cfg))
    assert one["nan_predictions"] == 3 and one["predictions"] == signal.size
    assert two["signal_analysis"]["rank_ic"]["mean"] == pytest.approx(-one["signal_analysis"]["rank_ic"]["mean"], rel=1e-9)
    assert read_periods(tmp_path / "s1")["coverage"].iloc[6] == prices.shape[1] - 1


def test_the_walk_covers_the_predictions_span_only(tmp_path, market):
    prices, signal = market
    part = signal.iloc[40:70]
    result, out = backtest(tmp_path, prices, part, name="part", strategies=("topk", "longshort"), k=3, decay=2)
    periods = read_periods(out)
    assert list(periods.index) == list(prices.index[40:70])
    assert periods["end_time"].iloc[-1] == prices.index[70]
    cut, out_cut = backtest(tmp_path, prices.iloc[40:72], part, name="cut", strategies=("topk", "longshort"), k=3,
                            decay=2)
    pd.testing.assert_frame_equal(periods, read_periods(out_cut), rtol=1e-12, atol=1e-14)


def test_prices_rebuilt_from_a_log_return_target_equal_the_prices(tmp_path, market):
    import h5py
    from data.catalog import write_index
    from data.layout import write_session
    prices, signal = market
    path = tmp_path / "returns.h5"
    with h5py.File(path, "w") as f:
        for name in prices.columns:
            close = prices[name].to_numpy()
            nxt = np.append(np.diff(np.log(close)), np.nan)          # row t: log return from t to t + 1
            write_session(f, name, close[:, None], nxt[:, None].astype(np.float64),
                          prices.index.to_numpy().astype("datetime64[ns]").astype(np.int64),
                          feature_names=["close"], target_names=["next_log_return"])
            f[name].attrs["target_lead_rows"] = 1
    write_index(path)
    pred = write_predictions(tmp_path / "p.h5", signal.iloc[20:])
    common = dict(predictions=str(pred), progress=False, plots=False, tensorboard=False, k=3, decay=2,
                  strategies=("topk", "longshort"))
    run_backtest(BacktestConfig(prices=[str(path)], price_column="close", out=str(tmp_path / "a"), **common))
    run_backtest(BacktestConfig(prices=[str(path)], return_column="next_log_return", out=str(tmp_path / "b"), **common))
    pd.testing.assert_frame_equal(read_periods(tmp_path / "a"), read_periods(tmp_path / "b"), rtol=1e-9, atol=1e-12)


def test_a_portfolio_that_loses_everything_reports_it():
    """A period losing more than 100% (a leveraged short): the drawdown is that loss, not 0.0 (log1p gave NaN)."""
    from analysis.backtest.stats import Performance
    day = 86_400 * 10**9
    times = np.arange(1, 7) * day
    perf = Performance(252, start_time=0)
    perf.update(np.array([0.10, -0.05]), times[:2])
    perf.update(np.array([0.02, -5.5, 0.3, 0.1]), times[2:])      # the value goes to 1.1 x 0.95 x 1.02 x -4.5
    s = perf.summary()
    value = 1.1 * 0.95 * 1.02 * (1 - 5.5)
    assert s["max_drawdown"] == pytest.approx(value / 1.1 - 1) and s["max_drawdown"] < -1
    assert s["total_return"] == pytest.approx(value - 1) and s["annual_return"] == -1.0
    assert s["ruined_at"].startswith("1970-01-05") and s["max_drawdown_trough"].startswith("1970-01-05")
    assert s["periods"] == 6 and math.isfinite(s["sharpe"])
    exact = Performance(252, start_time=0)
    exact.update(np.array([0.1, -1.0]), times[:2])                 # exactly everything
    assert exact.summary()["max_drawdown"] == pytest.approx(-1.0)
