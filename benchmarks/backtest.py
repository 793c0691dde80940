"""`backtest` measured: daily S&P 500 (reports, RSI rule, pools, vectorbt) and minute scale (time, peak PSS).

    python benchmarks/backtest.py --stage daily  [--json docs/results/backtest_daily.json]
    python benchmarks/backtest.py --stage minute [--json docs/results/backtest_minute.json] [--history 1 3]
    python benchmarks/backtest.py --stage pools [--json docs/results/backtest_pools.json]
    python benchmarks/backtest.py --stage minute-predict [--json docs/results/backtest_minute_predict.json]

daily (505 stocks, 2013-2018, ../shared/datasets/stocks): the close prices become a session file
(names as benchmarks/stocks.py's tickers); the GRU of benchmarks/stocks.py is trained (or reused) and
predicts its test period; then, in this process (imports done, as a user's second run):
  - the full report of those predictions: signal analysis + topk + longshort + PNGs + TensorBoard
  - the RSI 14 30/70 threshold rule on all 505 x 5 years (no signal analysis, no pictures), with the
    signal work in 1 process, a pool of 2 threads and a pool of 2 processes, side by side
  - vectorbt (if installed: pip install vectorbt) on the same orders: returns compared, time and
    peak memory of each, each in a child process measured the same way
minute (`make-demo --preset market-500x3y`, 500 sessions x 181,440 bars): RSI signals for all
sessions + top 50 over every bar, in a child process: wall time and peak PSS (sampled every 0.2 s),
inside a 500 MB cgroup where one can be made (benchmarks/memory.py's MemoryLimit); --history 3
repeats it on a 3x longer history (4 features: the backtest reads only timestamps and the target).
pools: the RSI signals of the minute preset alone, in 1 process, 2 threads and 2 processes.
minute-predict: a small DLinear run trained on the preset, `predict --split test` streamed to a file,
and that file backtested: time and peak PSS of each step.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from common import ROOT, machine, save_json, table
from memory import MemoryLimit, warm_page_cache

WORK = ROOT / "bench_data" / "backtest"
STOCKS = ROOT.parent / "shared" / "datasets" / "stocks" / "individual_stocks_5yr"
MINUTE_LIMIT_MB = 500
TARGET_PSS_MB = 400


def measured(cmd, limit_mb=None):
    """Run cmd in a child process: (exit code, seconds, peak PSS MB, cgroup stats, stdout)."""
    from trainers.memory import PeakSampler
    limit = MemoryLimit(limit_mb) if limit_mb else None
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=limit.enter if limit and limit.active else None)
    with PeakSampler(proc.pid, interval=0.2) as sampler:
        out, err = proc.communicate()
    row = {"exit": proc.returncode, "seconds": round(time.perf_counter() - t0, 1), "peak_pss_mb": round(sampler.peak_mb, 1)}
    if limit is not None:
        if limit.active:
            row.update({"limit_mb": limit_mb, **{k: round(v, 1) if isinstance(v, float) else v
                                                 for k, v in limit.stats().items()}})
        else:
            row["limit_note"] = limit.reason
        limit.close()
    if proc.returncode != 0:
        print(err[-3000:], file=sys.stderr)
    return row, out


# --- daily ------------------------------------------------------------------------------------------

def stock_prices(path):
    """Close prices of the 505 stocks, one session per ticker (benchmarks/stocks.py's names)."""
    if path.exists():
        return path
    from atomic import atomic_path
    from data.catalog import write_index
    from data.layout import write_session
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            for csv in sorted(STOCKS.glob("*_data.csv")):
                frame = pd.read_csv(csv, parse_dates=["date"]).sort_values("date").dropna(subset=["close"])
                write_session(f, csv.stem.replace("_data", ""), frame[["close"]].to_numpy(np.float64),
                              timestamps=frame["date"].to_numpy("datetime64[ns]").astype(np.int64),
                              feature_names=["close"])
        write_index(tmp)
    return path


def gru_predictions(work):
    """The test-period predictions of benchmarks/stocks.py's GRU (trained once, then reused)."""
    pred = work / "gru_test_predictions.h5"
    if pred.exists():
        return pred
    runs = sorted((work / "stocks" / "runs").glob("*/test_predictions.h5"), key=os.path.getmtime)
    if not runs:
        subprocess.run([sys.executable, "benchmarks/stocks.py", "--work", str(work / "stocks")], cwd=ROOT, check=True)
        runs = sorted((work / "stocks" / "runs").glob("*/test_predictions.h5"), key=os.path.getmtime)
    os.replace(runs[-1], pred)
    return pred


def in_process(repeat=3, **kw):
    """A backtest timed inside a fresh child process that imports only what `backtest` imports (this
    process has torch and more loaded, which slows its forks), after one warm-up run (a notebook's
    second run); the best of `repeat` runs, this machine's timings vary by ~30%: (result, seconds, times)."""
    out = subprocess.run([sys.executable, __file__, "--timing-child", json.dumps({"repeat": repeat, **kw})],
                         cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-3000:])
    times = json.loads(out.stdout.strip().splitlines()[-1])
    return json.loads(Path(kw["out"], "report.json").read_text()), min(times), times


def timing_child(spec):
    from analysis.backtest.run import BacktestConfig, run_backtest
    kw = json.loads(spec)
    repeat = kw.pop("repeat")
    kw["strategies"] = tuple(kw.get("strategies", ()))
    cfg = BacktestConfig(overwrite=True, progress=False, **kw)
    run_backtest(cfg)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        run_backtest(cfg)
        times.append(round(time.perf_counter() - t0, 3))
    print(json.dumps(times))


def vectorbt_child(args):
    """Child: the RSI threshold orders of a finished backtest (weights per bar) through vectorbt."""
    import vectorbt as vbt
    with open(args.orders, "rb") as f:
        data = np.load(f)
        close, orders = data["close"], data["orders"]
    t0 = time.perf_counter()
    pf = vbt.Portfolio.from_orders(pd.DataFrame(close), size=pd.DataFrame(orders), size_type="targetpercent",
                                   group_by=True, cash_sharing=True, call_seq="auto", freq="1D",
                                   # a large cash: vectorbt skips orders below ~1e-8 shares, and
                                   # rebalancing 1.0 of cash over 505 names makes many that small
                                   init_cash=1e9)
    returns = pf.returns().to_numpy()
    print(json.dumps({"seconds": time.perf_counter() - t0, "returns": returns.tolist()}))


def threshold_orders(prices_path):
    """(close ffilled (T, N), the rule's target weights at each bar (NaN: no order)) from our run's inputs:
    recomputed here from the same RSI signal so vectorbt gets the very orders our engine followed."""
    from analysis.backtest.inputs import open_prices
    from analysis.backtest.portfolio import StrategySpec, _block_targets
    from analysis.backtest.signals import SignalSpec, indicator
    names, sources = open_prices([str(prices_path)], "close")
    spec = SignalSpec("rsi", 14, 30, 70)
    frames, signals = {}, {}
    for name in names:
        times, close = sources[name].read(0, sources[name].n_rows)
        idx = pd.to_datetime(times)
        frames[name] = pd.Series(close, idx)
        signals[name] = pd.Series(indicator(spec)(close), idx)
    close = pd.DataFrame(frames)
    score = pd.DataFrame(signals).reindex(close.index)
    eligible = close.notna().to_numpy()
    long_above, short_below = spec.thresholds
    target = _block_targets(StrategySpec(name="threshold", long_above=long_above, short_below=short_below),
                            score.to_numpy(), eligible)
    target[~eligible] = np.nan                 # no price: no order (the position is kept)
    return close.ffill().to_numpy(), target, close.index


def stage_daily(args):
    WORK.mkdir(parents=True, exist_ok=True)
    prices = stock_prices(WORK / "sp500_close.h5")
    pred = gru_predictions(WORK)
    warm_page_cache(prices)
    rows = []
    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        result, seconds, times = in_process(prices=[str(prices)], price_column="close", predictions=str(pred),
                                     out=f"{tmp}/gru", strategies=("topk", "longshort"), k=50, cost_bps=5)
        rows.append({"run": "GRU predictions: full report (analysis + topk + longshort + PNGs + TensorBoard)",
                     "seconds": round(seconds, 2), "runs_s": times, "periods": result["portfolios"]["topk"]["net"]["periods"],
                     "rank_ic": round(result["signal_analysis"]["rank_ic"]["mean"], 4),
                     "rank_ic_t": round(result["signal_analysis"]["rank_ic"]["t_stat"], 2),
                     "topk_sharpe": round(result["portfolios"]["topk"]["net"]["sharpe"], 2),
                     "longshort_sharpe": round(result["portfolios"]["longshort"]["net"]["sharpe"], 2),
                     "benchmark_sharpe": round(result["benchmark"]["sharpe"], 2)})
        print(json.dumps(_plain(result)))
        gru = result
        for pool, workers in (("serial", 1), ("thread", 2), ("process", 2)):
            result, seconds, times = in_process(prices=[str(prices)], price_column="close", signal="rsi:14:30:70",
                                            out=f"{tmp}/rsi_{pool}", strategies=("threshold",), decay=1,
                                            pool=pool, workers=workers, plots=False, tensorboard=False,
                                            analysis=False)
            rows.append({"run": f"RSI 14 30/70 threshold rule, signals: {pool} x{workers}", "seconds": round(seconds, 2),
                         "runs_s": times,
                         "signal_s": round(result["timings"]["signal_s"], 2),
                         "periods": result["portfolios"]["threshold"]["net"]["periods"],
                         "threshold_sharpe": round(result["portfolios"]["threshold"]["net"]["sharpe"], 3)})
        rsi_dir = Path(f"{tmp}/rsi_process")
        with h5py.File(rsi_dir / "periods.h5", "r") as f:
            ours = f["threshold.gross"][()]
        cli, _ = measured([sys.executable, "main.py", "backtest", "--prices", str(prices), "--price-column", "close",
                           "--signal", "rsi:14:30:70", "--strategy", "threshold", "--decay", "1", "--no-analysis",
                           "--no-plots", "--no-tensorboard", "--out", f"{tmp}/rsi_cli"])
        rows.append({"run": "the same rule as a command (python start-up and imports included)", **cli})
        vbt = compare_vectorbt(prices, ours, cli, tmp)   # the command above is ours, measured the same way
    print(table(rows, ["run", "seconds", "signal_s", "periods", "peak_pss_mb", "rank_ic", "rank_ic_t", "topk_sharpe",
                       "longshort_sharpe", "benchmark_sharpe", "threshold_sharpe"]))
    if vbt:
        print(json.dumps(vbt))
    save_json(args.json, {"rows": rows, "vectorbt": vbt, "gru_report": _plain(gru), "machine": machine()})


def _plain(result):
    from analysis.backtest.report import _clean
    return _clean({k: v for k, v in result.items() if k in ("signal_analysis", "portfolios", "benchmark",
                                                              "periods_per_year", "first_period", "last_period_end")})


def compare_vectorbt(prices, ours, ours_cli, tmp):
    try:
        import vectorbt  # noqa: F401
    except ImportError:
        print("vectorbt is not installed (pip install vectorbt): comparison skipped")
        return None
    close, orders, _ = threshold_orders(prices)
    path = Path(tmp) / "orders.npz"
    np.savez(path, close=close, orders=orders)
    row, out = measured([sys.executable, __file__, "--vectorbt-child", "--orders", str(path)])
    theirs = np.asarray(json.loads(out.strip().splitlines()[-1])["returns"])
    seconds = json.loads(out.strip().splitlines()[-1])["seconds"]
    # vectorbt labels a return with the bar it ends at; ours with the bar the position was set at
    diff = np.abs(theirs[1:len(ours) + 1] - ours)
    return {"max_abs_return_difference": float(np.nanmax(diff)), "periods_compared": int(np.isfinite(diff).sum()),
            "vectorbt_portfolio_s": round(seconds, 3), "vectorbt_child": row, "ours_child": ours_cli}


# --- minute -----------------------------------------------------------------------------------------

def minute_file(history):
    rows = 181_440 * history
    path = WORK / ("market-500x3y.h5" if history == 1 else f"market-500x{3 * history}y-4f.h5")
    if not path.exists():
        extra = ["--preset", "market-500x3y"] if history == 1 else ["--sessions", "500", "--rows", str(rows),
                                                                   "--features", "4"]
        subprocess.run([sys.executable, "main.py", "make-demo", "--out", str(path), *extra], cwd=ROOT, check=True)
    return path


def stage_minute(args):
    WORK.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        for history in args.history:
            path = minute_file(history)
            warm_page_cache(path)
            cmd = [sys.executable, "main.py", "backtest", "--prices", str(path), "--return-column", "next_log_return",
                   "--signal", "rsi:14:30:70", "--strategy", "topk", "--k", "50", "--periods-per-year", "60480",
                   "--out", f"{tmp}/minute_{history}", *args.extra]
            row, _ = measured(cmd, None if args.no_limit else MINUTE_LIMIT_MB)
            report = json.loads(Path(f"{tmp}/minute_{history}/report.json").read_text()) if row["exit"] == 0 else {}
            row.update({"history_x": history, "bars": 181_440 * history, "sessions": 500,
                        **{k: round(v, 1) for k, v in report.get("timings", {}).items()},
                        "block_rows": report.get("block_rows")})
            print(json.dumps(row), flush=True)
            rows.append(row)
    print(table(rows, ["history_x", "bars", "exit", "seconds", "signal_s", "walk_s", "report_s", "peak_pss_mb",
                       "cgroup_peak_mb", "limit_mb", "limit_hits", "oom_kills"]))
    if len(rows) > 1:
        growth = rows[-1]["peak_pss_mb"] / rows[0]["peak_pss_mb"] - 1
        print(f"peak PSS, {rows[-1]['history_x']}x history vs 1x: {100 * growth:+.1f}% (target within 10%)")
    save_json(args.json, {"rows": rows, "target_s": 180, "target_pss_mb": TARGET_PSS_MB, "machine": machine()})


def stage_pools(args):
    """RSI 14 for every session of the minute preset (90M bars): 1 process, 2 threads, 2 processes."""
    from analysis.backtest.inputs import open_prices
    from analysis.backtest.signals import compute_signals, parse_signal
    path = minute_file(1)
    warm_page_cache(path)
    names, _ = open_prices([str(path)], "next_log_return", "log_return")
    rows = []
    for pool, workers in (("serial", 1), ("thread", 2), ("process", 2)):
        with tempfile.TemporaryDirectory(dir=WORK) as tmp:
            t0 = time.perf_counter()
            compute_signals([str(path)], "next_log_return", "log_return", names, parse_signal("rsi:14:30:70"), tmp,
                            workers=workers, pool=pool)
            seconds = time.perf_counter() - t0
        rows.append({"pool": pool, "workers": workers, "seconds": round(seconds, 1),
                     "bars_per_s": round(500 * 181_440 / seconds)})
        print(json.dumps(rows[-1]), flush=True)
    for row in rows:
        row["speedup_vs_serial"] = round(rows[0]["seconds"] / row["seconds"], 2)
    print(table(rows, ["pool", "workers", "seconds", "bars_per_s", "speedup_vs_serial"]))
    save_json(args.json, {"rows": rows, "machine": machine()})


def stage_minute_predict(args):
    path = minute_file(1)
    run = WORK / "minute_run"
    steps = []
    if not (run / "checkpoints" / "best.pt").exists():
        row, _ = measured([sys.executable, "main.py", "train", "--profile", "default", f"data.paths=[{path}]",
                           "data.lookback=64", "model.name=dlinear", "training.epochs=1",
                           # a small val part and a 5% test part (9,072 bars x 500 = 4.5M windows): the
                           # default 15% / 15% are 13.6M windows each to evaluate and predict on 2 cores
                           "data.split.fractions=[0.94,0.01,0.05]",
                           "training.max_steps_per_epoch=200", "output.tensorboard=false", "--run-dir", str(run),
                           "--overwrite"])
        steps.append({"step": "train DLinear (200 steps, then val and test evaluated)", **row})
    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        pred = Path(tmp) / "test_predictions.h5"
        row, _ = measured([sys.executable, "main.py", "predict", "--run", str(run), "--split", "test",
                           "--out", str(pred)])
        with h5py.File(pred, "r") as f:
            windows = f["session"].shape[0]
        steps.append({"step": f"predict --split test ({windows:,} windows)", **row,
                      "file_mb": round(pred.stat().st_size / 2**20)})
        row, _ = measured([sys.executable, "main.py", "backtest", "--prices", str(path), "--return-column",
                           "next_log_return", "--predictions", str(pred), "--strategy", "topk", "longshort",
                           "--k", "50", "--periods-per-year", "60480", "--out", f"{tmp}/report"])
        report = json.loads(Path(f"{tmp}/report/report.json").read_text()) if row["exit"] == 0 else {}
        steps.append({"step": "backtest the predictions (analysis + topk + longshort + PNGs)", **row,
                      "rank_ic": report.get("signal_analysis", {}).get("rank_ic", {}).get("mean")})
    print(table(steps, ["step", "exit", "seconds", "peak_pss_mb", "file_mb", "rank_ic"]))
    save_json(args.json, {"steps": steps, "machine": machine()})


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=("daily", "minute", "pools", "minute-predict"), default="daily")
    parser.add_argument("--history", type=int, nargs="+", default=[1, 3], help="minute: history lengths (x 3 years)")
    parser.add_argument("--no-limit", action="store_true", help="minute: no cgroup memory limit")
    parser.add_argument("--extra", nargs="*", default=[], help="minute: more backtest arguments")
    parser.add_argument("--json", default=None)
    parser.add_argument("--vectorbt-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--orders", help=argparse.SUPPRESS)
    parser.add_argument("--timing-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.timing_child:
        return timing_child(args.timing_child)
    if args.vectorbt_child:
        return vectorbt_child(args)
    {"daily": stage_daily, "minute": stage_minute, "pools": stage_pools,
     "minute-predict": stage_minute_predict}[args.stage](args)


if __name__ == "__main__":
    sys.exit(main())
