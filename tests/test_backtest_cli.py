"""`python main.py backtest` from the command line: the report it writes, and one line with exit code 2
(nothing written) for each bad input a tired user or a broken file produces."""

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

import main
from data.catalog import write_index
from data.layout import write_session
from tests.helpers.market import random_prices, report, write_predictions, write_prices

ROOT = Path(main.__file__).resolve().parent


@pytest.fixture
def files(tmp_path):
    prices = random_prices(n_dates=80, n_assets=10, seed=1)
    signal = pd.DataFrame(np.random.default_rng(2).normal(size=prices.shape), index=prices.index,
                          columns=prices.columns)
    return (write_prices(tmp_path / "prices.h5", prices), write_predictions(tmp_path / "pred.h5", signal),
            prices, signal)


def run(argv, capsys):
    code = main.main(["backtest", *map(str, argv)])
    err = capsys.readouterr().err.strip().splitlines()
    return code, (err[-1] if err else "")


def test_full_report_from_the_command_line(tmp_path, files, capsys):
    price_path, pred, *_ = files
    out = tmp_path / "report"
    code = main.main(["backtest", "--prices", str(price_path), "--price-column", "close", "--predictions", str(pred),
                      "--out", str(out), "--k", "3", "--cost-bps", "5"])
    text = capsys.readouterr().out
    assert code == 0 and "rank IC" in text and "topk" in text and "longshort" in text
    for name in ("report.json", "periods.h5", "periods.csv", "positions.csv", "equity.png", "ic.png",
                 "quantile_returns.png"):
        assert (out / name).stat().st_size > 0, name
    result = report(out)
    assert set(result["portfolios"]) == {"topk", "longshort"}
    csv = pd.read_csv(out / "periods.csv")
    assert len(csv) == 79 and {"time", "end_time", "ic", "rank_ic", "topk.net", "longshort.gross"} <= set(csv.columns)
    positions = pd.read_csv(out / "positions.csv")
    assert len(positions) == 10 and positions["topk_weight"].gt(0).sum() == 3
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert {"backtest/equity", "backtest/ic", "backtest/quantile_returns"} <= set(events.Tags()["images"])
    assert "backtest/topk/sharpe" in events.Tags()["scalars"]


def test_signal_pools_give_the_same_report(tmp_path, files, capsys):
    price_path, *_ = files
    results = {}
    for pool in ("process", "thread", "serial"):
        out = tmp_path / pool
        assert main.main(["backtest", "--prices", str(price_path), "--price-column", "close", "--signal",
                          "rsi:14:30:70", "--pool", pool, "--out", str(out), "--no-plots", "--no-tensorboard"]) == 0
        results[pool] = report(out)
    for pool in ("thread", "serial"):
        assert results[pool]["portfolios"] == results["process"]["portfolios"]
        assert results[pool]["signal_analysis"] == results["process"]["signal_analysis"]


def test_rsi_equals_wilders_definition(tmp_path, files):
    from analysis.backtest.signals import RSI
    _, _, prices, _ = files
    close = prices["A00"].to_numpy()
    change = np.diff(close)
    gain, loss = np.maximum(change, 0), np.maximum(-change, 0)
    n, expected = 14, np.full(len(close), np.nan)
    avg_g, avg_l = gain[:n].mean(), loss[:n].mean()
    expected[n] = 100 - 100 / (1 + avg_g / avg_l)
    for i in range(n, len(change)):
        avg_g = (avg_g * (n - 1) + gain[i]) / n
        avg_l = (avg_l * (n - 1) + loss[i]) / n
        expected[i + 1] = 100 - 100 / (1 + avg_g / avg_l)
    rsi = RSI(n)
    got = np.concatenate([rsi(close[:20]), rsi(close[20:21]), rsi(close[21:])])   # streamed in pieces
    np.testing.assert_allclose(50 - got, expected, rtol=1e-12, equal_nan=True)


def write_raw(path, name, close, stamps):
    with h5py.File(path, "w") as f:
        write_session(f, name, np.asarray(close, np.float64)[:, None], timestamps=np.asarray(stamps, np.int64),
                      feature_names=["close"])
    write_index(path)
    return path


DAY = 86_400 * 10**9


@pytest.mark.parametrize("case,expect", [
    ("no_times", "have no times"),
    ("unknown_sessions", "2 predicted session(s) are not in the price file"),
    ("all_nan", "every prediction of step 1 is NaN"),
    ("k_too_large", "--k 11: larger than the universe (10 sessions"),
    ("negative_cost", "--cost-bps -1: costs cannot be negative"),
    ("step_beyond", "--step 3: the predictions forecast steps 1 .. 1"),
    ("no_signal", "give the signal"),
    ("two_prices", "give the prices"),
    ("bad_column", "--price-column 'price' is not a column of the price file"),
    ("bad_spec", "--signal 'rsi:x:30:70'"),
    ("bad_rsi", "RSI thresholds need 0 <= LOW < HIGH <= 100"),
    ("exists", "already exists; pass --overwrite"),
    ("negative_block_rows", "--block-rows -5: give the time rows per block"),
    ("zero_memory", "--memory-mb 0: give the memory"),
    ("infinite_year", "--periods-per-year inf: give a positive number"),
    ("nan_threshold", "--long-above nan: give a finite signal level"),
    ("decay_beyond_data", "--decay 1000: the longest session has"),
    ("out_under_a_file", "is not a writable folder"),
    ("decay_beyond_memory", "a block must span 52 periods of 10 names"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, files, capsys, case, expect):
    price_path, pred, prices, signal = files
    out = tmp_path / "out"
    base = ["--prices", price_path, "--price-column", "close", "--out", out]
    argv = {
        "no_times": base + ["--predictions", write_predictions(tmp_path / "p2.h5", signal, stamped=False)],
        "unknown_sessions": base + ["--predictions", write_predictions(
            tmp_path / "p3.h5", signal.rename(columns={"A00": "ZZZ", "A01": "YYY"}))],
        "all_nan": base + ["--predictions", write_predictions(tmp_path / "p4.h5", signal * np.nan)],
        "k_too_large": base + ["--predictions", pred, "--k", "11"],
        "negative_cost": base + ["--predictions", pred, "--cost-bps", "-1"],
        "step_beyond": base + ["--predictions", pred, "--step", "3"],
        "no_signal": base,
        "two_prices": base + ["--return-column", "close", "--predictions", pred],
        "bad_column": ["--prices", price_path, "--price-column", "price", "--out", out, "--predictions", pred],
        "bad_spec": base + ["--signal", "rsi:x:30:70"],
        "bad_rsi": base + ["--signal", "rsi:14:70:30"],
        "exists": base + ["--predictions", pred],
        "negative_block_rows": base + ["--predictions", pred, "--block-rows", "-5"],
        "zero_memory": base + ["--predictions", pred, "--memory-mb", "0"],
        "infinite_year": base + ["--predictions", pred, "--periods-per-year", "inf"],
        "nan_threshold": base + ["--predictions", pred, "--strategy", "threshold", "--long-above", "nan"],
        "decay_beyond_data": base + ["--predictions", pred, "--decay", "1000"],
        "out_under_a_file": ["--prices", price_path, "--price-column", "close", "--predictions", pred, "--out",
                             tmp_path / "prices.h5" / "report"],
        "decay_beyond_memory": base + ["--predictions", pred, "--decay", "50", "--memory-mb", "0.1"],
    }[case]
    if case == "exists":
        out.mkdir()
        (out / "mine.txt").write_text("keep")
    code, line = run(argv, capsys)
    assert code == 2 and expect in line, line
    if case == "exists":
        assert (out / "mine.txt").read_text() == "keep"
    else:
        assert not out.exists()
    assert not list(tmp_path.glob(".out.tmp-*"))


@pytest.mark.parametrize("case,expect", [
    ("duplicate", "row 3 time 2020-01-04 repeats the previous row's"),
    ("backward", "row 3 time 2020-01-03 is before the previous row's"),
    ("nonpositive", "price 0 at 2020-01-04 is <= 0"),
    ("nonpositive_signal", "row 2 has price -1 (<= 0)"),
])
def test_bad_prices_are_named_by_session_and_time(tmp_path, capsys, case, expect):
    start = int(np.datetime64("2020-01-02", "ns").astype(np.int64))
    stamps = start + DAY * np.arange(30)
    close = 10 + np.arange(30.0)
    if case == "duplicate":
        stamps[3] = stamps[2]
    if case == "backward":
        stamps[3] = stamps[1]
    if case == "nonpositive":
        close[2] = 0.0
    if case == "nonpositive_signal":
        close[2] = -1.0
    path = write_raw(tmp_path / "bad.h5", "S0", close, stamps)
    # (its own prices: sharing `close` gave S1 the bad price too, and which session the signal pool named
    # first depended on which worker finished first)
    write_raw(tmp_path / "good.h5", "S1", 10 + np.arange(30.0), start + DAY * np.arange(30))
    out = tmp_path / "out"
    argv = ["--prices", path, tmp_path / "good.h5", "--price-column", "close", "--out", out, "--k", "1"]
    if case == "nonpositive_signal":
        argv += ["--signal", "momentum:2"]
    else:
        signal = pd.DataFrame({"bad/S0": 1.0, "good/S1": 0.0}, index=pd.to_datetime(start + DAY * np.arange(30)))
        argv += ["--predictions", write_predictions(tmp_path / "p.h5", signal)]
    code, line = run(argv, capsys)
    assert code == 2 and expect in line and "S0" in line, line
    assert not out.exists()


def test_intraday_bars_need_periods_per_year(tmp_path, capsys):
    start = int(np.datetime64("2020-01-02T09:30", "ns").astype(np.int64))
    path = write_raw(tmp_path / "m.h5", "S0", 10 + np.arange(50.0), start + 60 * 10**9 * np.arange(50))
    code, line = run(["--prices", path, "--price-column", "close", "--signal", "momentum:2", "--out", tmp_path / "o",
                      "--strategy", "threshold"], capsys)
    assert code == 2 and "bars are 60 s apart: give --periods-per-year" in line
    code, _ = run(["--prices", path, "--price-column", "close", "--signal", "momentum:2", "--out", tmp_path / "o",
                   "--strategy", "threshold", "--periods-per-year", "60480"], capsys)
    assert code == 0


def test_the_backtest_process_imports_no_pandas_scipy_or_torch(tmp_path, files):
    """Each costs 60-200 MB of memory; the backtest runs beside live processes in ~400 MB."""
    price_path, *_ = files
    code = (f"import sys, main; code = main.main(['backtest', '--prices', {str(price_path)!r}, '--price-column', "
            f"'close', '--signal', 'rsi:5:30:70', '--out', {str(tmp_path / 'o')!r}, '--no-plots', '--no-tensorboard']); "
            "print(code, sorted(m for m in ('pandas', 'scipy', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip().splitlines()[-1] == "0 []", out.stdout + out.stderr


def test_the_report_reads_plainly(tmp_path, files, capsys):
    """Times printed as 2017-11-06, table rows out of line, long/short counts unnamed,
    ic.png without a y-label, the equity chart without the gross curve."""
    import main
    from analysis.backtest.report import figures
    price_path, *_ = files
    out = tmp_path / "bt"
    assert main.main(["backtest", "--prices", str(price_path), "--price-column", "close", "--signal", "momentum:5",
                      "--out", str(out), "--no-tensorboard", "--cost-bps", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    table = lines[lines.index(next(line for line in lines if line.strip().startswith("strategy"))):][:6]
    ends = {len(line) for line in table}
    assert len(ends) == 1, table                                       # every row ends in the same column
    assert "T00:00:00" not in "\n".join(lines) and ".000000000" not in (out / "periods.csv").read_text()
    header = (out / "periods.csv").read_text().splitlines()[0].split(",")
    assert "topk.names_long" in header and "topk.long" not in header
    figs = figures(out, report(out))
    assert figs["ic"].axes[0].get_ylabel().startswith("rank IC")
    labels = [line.get_label() for line in figs["equity"].axes[0].get_lines()]
    assert "topk (gross, before costs)" in labels and "topk (net)" in labels


def test_every_headline_figure_carries_its_sample_and_interval(tmp_path, files, capsys):
    """80 daily periods: the annual figures say they come from under a year, each carries its periods, a
    95% bootstrap interval and the PSR, the IC its HAC t (checked against the periods' own series), and the
    DSR appears with --trials."""
    import h5py
    from analysis.backtest.uncertainty import hac_t_stat, newey_west_lags
    price_path, pred, *_ = files
    out = tmp_path / "bt"
    assert main.main(["backtest", "--prices", str(price_path), "--price-column", "close", "--predictions", str(pred),
                      "--out", str(out), "--no-tensorboard", "--no-plots", "--k", "3", "--trials", "20"]) == 0
    text = capsys.readouterr().out
    result = report(out)
    assert result["warnings"] == ["annualized from 79 periods (0.31 years at 252 a year): under one year, the annual "
                                  "figures extrapolate"]
    assert "warning: annualized from 79 periods" in text and "95% CI" in text and "HAC t" in text
    assert "deflated Sharpe (20 configurations tried)" in text
    for book in [result["benchmark"]] + [b["net"] for b in result["portfolios"].values()]:
        low, high = book["annual_return_ci95"]
        assert low < high and book["periods"] == 79 and book["years"] == pytest.approx(79 / 252)
        assert book["sharpe_ci95"][0] < book["sharpe_ci95"][1] and 0 <= book["psr"] <= 1
    assert 0 <= result["portfolios"]["topk"]["net"]["dsr"] <= result["portfolios"]["topk"]["net"]["psr"]
    rank = result["signal_analysis"]["rank_ic"]
    with h5py.File(out / "periods.h5") as f:
        series = f["rank_ic"][:]
    assert rank["hac_lags"] == newey_west_lags(79, 1)
    assert rank["hac_t"] == pytest.approx(hac_t_stat(series, rank["hac_lags"])[2], rel=1e-12)
    assert result["uncertainty"]["trials"] == 20
