"""The settings of the commands on a trained run, each option also its flag (options.py): `evaluate`
(EvaluateConfig) and `predict` (PredictConfig). Light on purpose (no torch): the command line builds its
parser from them on every start."""

import dataclasses

from options import REQUIRED, option

CHECKPOINTS = ("best", "last")
SPLIT_CHOICES = ("train", "val", "test")


@dataclasses.dataclass
class EvaluateConfig:
    run: str = option(REQUIRED, "run directory")
    split: str = option("test", "the split to score", choices=SPLIT_CHOICES)
    checkpoint: str = option(None, "which checkpoint to score (default: best, or last where there is no best yet)",
                             choices=CHECKPOINTS)


@dataclasses.dataclass
class PredictConfig:
    run_dir: str = option(REQUIRED, "run directory", flag="--run")
    out: str = option(REQUIRED, "output file: PRED.h5 (read it with data.predictions.read_predictions; backtest "
                      "takes it) or PRED.csv (the same long table as CSV)")
    split: str = option(None, "every window of this split of the run's data (default: test)", choices=SPLIT_CHOICES)
    data: list = option(None, "predict on these HDF5 files (session format, the run's columns) instead of the "
                        "run's data", metavar="PATH")
    latest: bool = option(False, "one forecast per session from its last lookback rows (the step after the data)")
    plot: int = option(0, "also draw N sessions' forecasts vs truth to a PNG beside --out (quantile bands when "
                       "present)", metavar="N")
    fit_new_sessions: int = option(None, "per_session runs: fit statistics of --data sessions the run does not "
                                   "know on their first ROWS rows (only later targets are predicted)", metavar="ROWS")
    overwrite: bool = option(False, "replace --out if it exists")
    checkpoint: str = option(None, "which checkpoint predicts (default: best, or last where there is no best yet)",
                             choices=CHECKPOINTS)
    strict: bool = option(False, "--latest: refuse a session shorter than the lookback (default: skip it with a "
                          "warning naming it)")
