"""`backtest`: signal analysis and portfolio backtests of a signal, streamed over time blocks.

    signal  a prediction file (`predict`), or an indicator computed from the prices (analysis/backtest/signals.py)
    prices  a session file's price column (or a log-return column), aligned by time across sessions
    walk    analysis.backtest.panel.Panel: (T_block, N) blocks; forward returns look `decay` rows ahead
    per block: signal analysis (analysis/backtest/factor.py), each strategy (analysis/backtest/portfolio.py), the
            equal-weight benchmark; per-period rows appended to periods.h5
    end     report.json, periods.csv, positions.csv, PNGs and TensorBoard (analysis/backtest/report.py)
Everything is written into a temporary folder renamed to --out at the end: a failure leaves
nothing half-written, and an existing --out is replaced only with --overwrite.
"""

import dataclasses
import math
import shutil
import time
from pathlib import Path

import numpy as np

import progress
from analysis.backtest import inputs, report, signals
from atomic import atomic_dir, check_output_dir
from analysis.backtest.factor import SignalAnalysis
from analysis.backtest.panel import Panel
from analysis.backtest.portfolio import STRATEGIES, Portfolio, StrategySpec, benchmark_returns
from analysis.backtest.returns import ForwardFill, forward_returns
from analysis.backtest.config import BacktestConfig  # noqa: F401  (run_backtest's argument; re-exported)
from analysis.backtest.stats import Moments, Performance, iso
from analysis.backtest.uncertainty import add_uncertainty
from errors import InputError

NS_PER_DAY = 86_400 * 10**9
CELL_BYTES = 240          # panel bytes per (row, session): price, carried, signal, decay returns, bins, masks


def _check(cfg):
    if bool(cfg.predictions) == bool(cfg.signal):
        raise InputError("give the signal: --predictions PRED.h5 (from `predict`) or --signal SPEC "
                         "(rsi:14:30:70, momentum:20, reversal:1)")
    if bool(cfg.price_column) == bool(cfg.return_column):
        raise InputError("give the prices: --price-column NAME (a price) or --return-column NAME (log returns)")
    for name, value, low in (("--cost-bps", cfg.cost_bps, 0), ("--min-cost", cfg.min_cost, 0)):
        if not math.isfinite(value):
            raise InputError(f"{name} {value:g}: not a number; give a cost of 0 or more")
        if value < low:
            raise InputError(f"{name} {value:g}: costs cannot be negative; give 0 or more")
    if cfg.trials is not None and cfg.trials < 1:
        raise InputError(f"--trials {cfg.trials}: give the number of configurations tried (1 or more)")
    for name, value, low in (("--k", cfg.k, 0), ("--drop", cfg.drop, 0), ("--rebalance", cfg.rebalance, 1),
                             ("--bootstrap", cfg.bootstrap, 10),
                             ("--quantiles", cfg.quantiles, 2), ("--decay", cfg.decay, 1),
                             ("--workers", cfg.workers, 1)):
        if value < low:
            raise InputError(f"{name} {value}: must be at least {low}")
    if cfg.capital <= 0 or not math.isfinite(cfg.capital):
        raise InputError(f"--capital {cfg.capital:g}: give a positive starting value")
    if cfg.periods_per_year is not None and not 0 < cfg.periods_per_year < math.inf:
        raise InputError(f"--periods-per-year {cfg.periods_per_year:g}: give a positive number (252 for days)")
    if cfg.block_rows < 0:
        raise InputError(f"--block-rows {cfg.block_rows}: give the time rows per block (0: from --memory-mb)")
    if not 0 < cfg.memory_mb < math.inf:
        raise InputError(f"--memory-mb {cfg.memory_mb:g}: give the memory for the time blocks in MB (e.g. 64)")
    for name, value in (("--long-above", cfg.long_above), ("--short-below", cfg.short_below)):
        if value is not None and not math.isfinite(value):
            raise InputError(f"{name} {value:g}: give a finite signal level")
    unknown = [s for s in cfg.strategies if s not in STRATEGIES]
    if unknown:
        raise InputError(f"--strategy {unknown[0]!r} is unknown; choose from {', '.join(STRATEGIES)}")
    check_output_dir(cfg.out, cfg.overwrite, "report", reads=list(cfg.prices) + ([cfg.predictions] if cfg.predictions else []),
                     owns=report.OWNS)


def run_backtest(cfg):
    """Run the backtest `cfg` describes; returns the report dict (also in cfg.out/report.json)."""
    _check(cfg)
    t_start = time.perf_counter()
    kind = "price" if cfg.price_column else "log_return"
    column = cfg.price_column or cfg.return_column
    names, prices = inputs.open_prices(cfg.prices, column, kind)
    n = len(names)
    spec = signals.parse_signal(cfg.signal) if cfg.signal else None
    strategies = list(cfg.strategies) or (["threshold"] if spec and spec.kind == "rsi" else ["topk", "longshort"])
    k = cfg.k or max(1, n // 10)
    if "topk" in strategies and k > n:
        raise InputError(f"--k {k}: larger than the universe ({n} sessions in {', '.join(map(str, cfg.prices))})")
    if cfg.analysis:
        _check_analysis_fits(cfg, n, max(p.n_rows for p in prices.values()))
    predictions = None
    if cfg.predictions:
        predictions = inputs.Predictions(cfg.predictions, cfg.step, cfg.target)
        predictions.check_sessions(names, cfg.prices[0])
        nan, total = predictions.nan, predictions.total
        if nan == total:
            predictions.close()
            raise InputError(f"{cfg.predictions}: every prediction of step {cfg.step} is NaN; the run that wrote "
                             "them diverged: check its metrics and predict again")
    long_above, short_below = spec.thresholds if spec else (0.0, 0.0)
    base = StrategySpec(k=k, drop=cfg.drop, quantiles=cfg.quantiles, long_only=cfg.long_only,
                        long_above=long_above if cfg.long_above is None else cfg.long_above,
                        short_below=short_below if cfg.short_below is None else cfg.short_below,
                        rebalance=cfg.rebalance, cost_bps=cfg.cost_bps, min_cost=cfg.min_cost, capital=cfg.capital)
    with atomic_dir(cfg.out, replace=cfg.overwrite, owns=report.OWNS, what="report") as work:
        try:
            return _run(cfg, work, t_start, names, prices, spec, strategies, base, predictions, column, kind, n)
        finally:
            if predictions is not None:
                predictions.close()


def _run(cfg, work, t_start, names, prices, spec, strategies, base, predictions, column, kind, n):
    """The signal, the walk and the report, written into `work` (renamed to --out by the caller)."""
    timings = {}
    if spec is not None:
        t0 = time.perf_counter()
        bar = progress.bar(total=n, desc=f"signal {spec}", unit="session", enabled=cfg.progress)
        # Signals come back as arrays while they fit in half the block memory, else go to files.
        rows = sum(src.n_rows for src in prices.values())
        spill = work / "signals" if rows * 20 > cfg.memory_mb * 2**20 / 2 else None   # signal, time, price
        if spill:
            spill.mkdir()
        aligned, in_memory = signals.compute_signals(cfg.prices, column, kind, names, spec, spill and str(spill),
                                                     workers=cfg.workers, pool=cfg.pool, progress=bar.update)
        prices = in_memory or prices
        bar.close()
        fields = {"aligned": {"signal": aligned}}
        span = None
        timings["signal_s"] = time.perf_counter() - t0
        signal_name, nan_info = str(spec), None
    else:
        fields = {"matched": {"signal": predictions.sources()}}
        # the walk covers the predictions' span only: periods without any signal would count as cash
        span = predictions.span
        signal_name = f"{predictions.target_name} step {cfg.step} ({Path(cfg.predictions).name})"
        nan_info = {"nan_predictions": predictions.nan, "predictions": predictions.total,
                    "predictions_scope": predictions.scope,
                    "predictions_point_in_time": predictions.point_in_time}
    t0 = time.perf_counter()
    try:
        result = _walk(cfg, names, prices, fields, strategies, base, work, span)
    finally:
        signals.FileRows.close_all()
    timings["walk_s"] = time.perf_counter() - t0
    result.update(signal=signal_name, sessions=n, strategy_settings=dataclasses.asdict(base),
                  strategies=strategies, prices=[str(p) for p in cfg.prices], price_column=column,
                  price_kind=kind, **(nan_info or {}))
    if not result["signal_analysis"]["coverage"]["periods_with_signal"]:
        raise InputError(f"{cfg.predictions or cfg.signal}: no period has a signal where a price is known; "
                         "check that the signal and price files cover the same sessions and times")
    t0 = time.perf_counter()
    add_uncertainty(result, work / "periods.h5", horizon=cfg.step if cfg.predictions else 1, trials=cfg.trials,
                    n_boot=cfg.bootstrap)
    timings["uncertainty_s"] = time.perf_counter() - t0
    shutil.rmtree(work / "signals", ignore_errors=True)
    t0 = time.perf_counter()
    report.write_all(work, result, plots=cfg.plots, tensorboard=cfg.tensorboard)
    timings["report_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start
    result["timings"] = timings
    report.write_json(work / "report.json", result)
    return result


def _check_analysis_fits(cfg, n, longest):
    """The signal analysis's settings against the data: IC decay over more periods than the prices hold,
    or than one block of the memory budget holds (a block spans the decay: --decay 100000 was killed for
    memory), are refused by name."""
    if cfg.decay >= longest:
        raise InputError(f"--decay {cfg.decay}: the longest session has {longest:,} periods; give fewer periods ahead")
    need_mb = (cfg.decay + 2) * n * CELL_BYTES / 2**20
    if need_mb > cfg.memory_mb:
        raise InputError(f"--decay {cfg.decay}: a block must span {cfg.decay + 2:,} periods of {n} names, "
                         f"{need_mb:,.0f} MB, over --memory-mb {cfg.memory_mb:g}; lower --decay or raise --memory-mb")


def block_rows_for(cfg, n):
    span = (cfg.decay if cfg.analysis else 1) + 2           # rows a block must hold: the periods looked ahead
    if cfg.block_rows:
        return max(cfg.block_rows, span)
    return int(min(1 << 14, max(span, cfg.memory_mb * 2**20 // (CELL_BYTES * max(n, 1)))))


def infer_periods_per_year(times):
    """Bars a year from the bars' spacing: daily 252, weekly 52, monthly 12; else None (ask the user)."""
    if len(times) < 3:
        return None
    spacing = float(np.median(np.diff(times))) / NS_PER_DAY
    for low, high, per_year in ((0.7, 4.5, 252), (5, 9, 52), (27, 32, 12)):
        if low <= spacing <= high:
            return per_year
    return None


def _check_positive(block, names, prices):
    with np.errstate(invalid="ignore"):
        bad = np.argwhere(block.price <= 0)
    if len(bad):
        t, j = bad[0]
        raise InputError(f"{prices[names[j]].where}: price {block.price[t, j]:g} at {iso(block.times[t])} is "
                         "<= 0; prices must be positive: give a price column (--price-column), or log returns "
                         "with --return-column")


class _Accounts:
    """The bookkeeping of the walk: each strategy's portfolio with its net and gross performance, active
    return and turnover, and the equal-weight benchmark, stepped one block of periods at a time."""

    def __init__(self, strategies, base, n):
        self.books = {s: Portfolio(dataclasses.replace(base, name=s), n) for s in strategies}
        self.perf = {s: (Performance(None), Performance(None)) for s in strategies}     # (net, gross)
        self.bench, self.active = Performance(None), {s: Moments() for s in strategies}
        self.turnover = {s: Moments() for s in strategies}

    def _all(self):
        return [self.bench] + [x for pair in self.perf.values() for x in pair]

    def start(self, first_time):
        for p in self._all():
            p.peak_time = first_time                   # the starting capital is the first peak

    def step(self, signal, has_price, r1, ends, columns):
        """One block's periods: (m, N) signal, tradable names and next-period returns; adds the benchmark's
        and each strategy's per-period columns to `columns`."""
        columns["benchmark"] = benchmark_returns(has_price, r1)
        self.bench.update(columns["benchmark"], ends)
        for s, book in self.books.items():
            res = book.step(signal, has_price, r1)
            self.perf[s][0].update(res["net"], ends)
            self.perf[s][1].update(res["gross"], ends)
            self.active[s].update(res["net"] - columns["benchmark"])
            self.turnover[s].update(res["turnover"])
            columns.update({f"{s}.{key}": v for key, v in res.items()})

    def summary(self, ppy):
        """(benchmark summary, {strategy: its figures}) annualized with `ppy` periods a year."""
        for p in self._all():
            p.periods_per_year = ppy
        portfolios = {}
        for s, book in self.books.items():
            ir = self.active[s].summary()["ir"] * math.sqrt(ppy)
            portfolios[s] = {"net": self.perf[s][0].summary(), "gross": self.perf[s][1].summary(),
                             "information_ratio": ir, "turnover_per_period": self.turnover[s].mean,
                             "turnover_per_year": self.turnover[s].mean * ppy, "final_value": book.value,
                             "final_weights": book.weights, "settings": dataclasses.asdict(book.spec)}
        return self.bench.summary(), portfolios


def _periods_per_year(times):
    """infer_periods_per_year, or one line asking for --periods-per-year."""
    ppy = infer_periods_per_year(times)
    if ppy is None:
        spacing = np.median(np.diff(times)) / 1e9 if len(times) > 1 else float("nan")
        raise InputError(f"bars are {spacing:g} s apart: give --periods-per-year (e.g. 252 x bars a day) "
                         "to annualize returns")
    return ppy


def _walk(cfg, names, prices, fields, strategies, base, work, span=None):
    """The walk over time blocks: the signal analysis and the accounts stepped block by block, per-period
    rows appended to periods.h5; returns the result's figures."""
    n = len(names)
    rows = block_rows_for(cfg, n)
    # Each session is read ahead in pieces of this many rows (time, price, signal: 24 bytes a row),
    # half the memory the blocks get: fewer, larger reads (~30 us an h5py call).
    piece = int(cfg.memory_mb * 2**20 / 2 // (24 * max(n, 1)))
    panel = Panel(names, prices, block_rows=rows, piece_rows=piece, start_time=span and span[0], **fields)
    last_signal = span[1] if span else None
    ffill = ForwardFill(n)
    analysis = SignalAnalysis(n, cfg.quantiles, cfg.decay)
    accounts = _Accounts(strategies, base, n)
    ppy = cfg.periods_per_year
    bar = progress.bar(total=max(p.n_rows for p in prices.values()), desc="backtest", unit="bar", enabled=cfg.progress)
    periods = report.PeriodWriter(work / "periods.h5", strategies)
    first = last_time = None
    try:
        for block in panel.blocks(lookahead=cfg.decay if cfg.analysis else 1):
            ppy = ppy or _periods_per_year(block.times)
            if last_signal is not None and block.times[0] > last_signal:
                break                                    # past the last signal: no position is set any more
            if last_signal is not None:          # rows after the last signal only serve as look-ahead
                block.own = min(block.own, int(np.searchsorted(block.times, last_signal, "right")))
            own = block.own
            _check_positive(block, names, prices)
            carried = ffill(block.price, own)                                  # (T, N)
            has_price = np.isfinite(block.price[:own])                         # (own, N)
            signal = np.where(has_price, block.fields["signal"][:own], np.nan)
            forward = forward_returns(carried, own, range(1, (cfg.decay if cfg.analysis else 1) + 1))
            m = min(own, len(block.times) - 1)          # periods with a next bar: the data's last bar has none
            if cfg.analysis:
                columns = analysis.update(signal, forward, periods=max(m, 0))
            else:
                columns = {"coverage": analysis.count(signal)}
            if m <= 0:
                continue
            times, ends = block.times[:m], block.times[1:m + 1]
            if first is None:
                first = int(times[0])
                accounts.start(first)
            last_time = ends[-1]
            columns = {key: v[:m] for key, v in columns.items()}
            accounts.step(signal[:m], has_price[:m], forward[1][:m], ends, columns)
            periods.append(times, ends, columns)
            bar.update(own)
    finally:
        bar.close()
        periods.close()
    benchmark, portfolios = accounts.summary(ppy)
    summary = analysis.summary()
    return {"signal_analysis": summary if cfg.analysis else {"coverage": summary["coverage"]},
            "periods_per_year": ppy, "block_rows": rows, "first_period": iso(first), "last_period_end": iso(last_time),
            "signal_rows_without_price": panel.unmatched.get("signal", 0), "benchmark": benchmark,
            "portfolios": portfolios, "names": names}
