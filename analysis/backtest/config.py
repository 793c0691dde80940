"""BacktestConfig: one backtest's settings, each also its `backtest` flag (options.py). Light on
purpose (no numpy): the command line builds its parser from it on every start."""

import dataclasses

from options import REQUIRED, option

STRATEGIES = ("topk", "longshort", "threshold")


@dataclasses.dataclass
class BacktestConfig:
    """One backtest; each option is also its `backtest` flag (options.py)."""

    prices: list = option(REQUIRED, "session HDF5 files with prices and timestamps", metavar="PATH")
    out: str = option(REQUIRED, "report folder (report.json, periods.h5/.csv, positions.csv, PNGs)")
    price_column: str = option(None, "the column holding prices (a feature or target)")
    return_column: str = option(None, "or a column of log returns (e.g. convert's next_log_return): prices are "
                                "rebuilt from it")
    predictions: str = option(None, "the signal: a file from `predict`", metavar="PRED.h5")
    signal: str = option(None, "or an indicator of the prices: rsi:N:LOW:HIGH, momentum:N, reversal:N",
                         metavar="SPEC")
    step: int = option(1, "which forecast step of the predictions is the signal")
    target: str = option(None, "which predicted target is the signal (when there are several)")
    strategies: tuple = option((), "default: threshold for rsi, else topk and longshort", flag="--strategy",
                               choices=STRATEGIES)
    k: int = option(0, "topk: names held (default: a tenth of the sessions)")
    drop: int = option(0, "topk: at most this many names replaced per rebalance (Qlib's TopkDropout; default k = "
                       "plain top k)")
    quantiles: int = option(5, "signal bins (longshort: top vs bottom)")
    decay: int = option(5, "IC decay over 1..N periods ahead")
    analysis: bool = option(True, "portfolios only: no IC / quantile analysis", flag="--no-analysis")
    long_above: float = option(None, "threshold: long where the signal is above")
    short_below: float = option(None, "threshold: short where the signal is below")
    long_only: bool = option(False, "threshold / longshort: no short positions")
    rebalance: int = option(1, "periods between rebalances")
    cost_bps: float = option(0.0, "cost per side on the traded value, in bps")
    min_cost: float = option(0.0, "minimum cost per traded name, in money (see --capital)")
    capital: float = option(1_000_000.0, "starting value in money")
    periods_per_year: float = option(None, "to annualize (default: from the bars' spacing: daily 252, weekly 52, "
                                     "monthly 12)")
    block_rows: int = option(0, "time rows per block (default: from --memory-mb)")
    memory_mb: float = option(64.0, "memory for the time blocks (default 64)")
    workers: int = option(2, "signal processes")
    pool: str = option("process", "how the signal work is spread (process: past the GIL)",
                       choices=("process", "thread", "serial"))
    plots: bool = option(True, "no PNGs", flag="--no-plots")
    tensorboard: bool = option(True, "no TensorBoard events", flag="--no-tensorboard")
    trials: int = option(None, "configurations tried to find this one (parameter searches, sweeps, walk-forward "
                         "variants): the deflated Sharpe ratio discounts the best of that many by chance")
    bootstrap: int = option(1000, "stationary-bootstrap resamples behind the 95%% intervals of annual return and "
                            "Sharpe")
    overwrite: bool = option(False, "replace --out if it exists")
    progress: bool = True                  # a bar / log lines on long work (not a flag: the API's switch)
