"""h5series from Python: what a script or notebook inside the repository uses (docs/api.md).

    import h5series
    catalog = h5series.open_catalog("data/")                  # sessions, names, rows; no data read
    config = h5series.load_config("default", overrides=["data.paths=[data/]"])
    prepared = h5series.prepare_data(config.data)              # splits, block plans, train statistics
    loader = h5series.build_loader(prepared, "train", h5series.LoaderConfig(batch_size=64))
    result = h5series.train(config)                            # the whole run, as `python main.py train`
    run = h5series.load_run(result["run_dir"])                 # its config, data and model, to forecast
    h5series.predict(result["run_dir"], "next.h5", latest=True)
    frame = h5series.read_predictions("next.h5")
    report = h5series.run_backtest(h5series.BacktestConfig(prices=["data/"], price_column="close",
                                                           predictions="test.h5", out="report/"))
    settings = h5series.build_index(h5series.open_windows(config, columns=["close"]), config.similar, "index/")
    summary = h5series.run_query(h5series.QueryConfig(index="index/", split="test", price_column="close",
                                                      forecast="analog.h5"), config.similar)

Each name is the function the command line itself uses; this module only gathers them.
"""

from analysis.backtest.run import BacktestConfig, run_backtest
from analysis.similar.index import build_index
from analysis.similar.query import QueryConfig, run_query
from analysis.similar.source import open_windows
from config import load_config as _load_config
from data.catalog import open_catalog
from data.dataloader import LoaderConfig, build_loader
from data.dataset import prepare_data
from data.demo import generate as make_demo
from data.predictions import read_predictions
from trainers.predict import predict
from trainers.forecaster import load_run
from trainers.run import evaluate, train
from trainers.trainer import Trainer



def load_config(profile=None, config_file=None, overrides=()):
    """config.load_config with main.py's SELECTED_CONFIG when no profile is named (as `python main.py`)."""
    if profile is None:
        from main import SELECTED_CONFIG
        profile = SELECTED_CONFIG
    return _load_config(profile, config_file, overrides)


__all__ = ["load_config", "open_catalog", "prepare_data", "LoaderConfig", "build_loader", "make_demo", "Trainer",
           "train", "evaluate", "load_run", "predict", "read_predictions",
           "BacktestConfig", "run_backtest", "open_windows", "build_index", "QueryConfig", "run_query"]
