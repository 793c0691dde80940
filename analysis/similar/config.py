"""The settings of `similar index` (IndexConfig) and `similar query` (QueryConfig), each option also
its flag (options.py). Light on purpose (no numpy, FAISS or torch): the command line builds its parser
from them on every start."""

import dataclasses

from options import REQUIRED, option

SPLIT_CHOICES = ("train", "val", "test")


@dataclasses.dataclass
class IndexConfig:
    """`similar index`: which windows become vectors, and where the index goes."""

    out: str = option(REQUIRED, "index folder")
    data: list = option(None, "session HDF5 files (default: data.paths, or the run's data with --run)",
                        metavar="PATH")
    run: str = option(None, "a trained run: vectors are its model's embed(x) of its windows")
    checkpoint: str = option(None, "with --run (default: best)", choices=("best", "last"))
    columns: list = option(None, "columns a window is made of (raw windows)")
    lookback: int = option(None, "rows per window (default: data.lookback)")
    stride: int = option(None, "rows between indexed window ends (default: data.stride)")
    split: str = option("all", "index the windows of one split only (borders: data.split, or the run's)",
                        choices=("all",) + SPLIT_CHOICES)
    train_until: str = option(None, "IVF-PQ: learn the clusters from windows ending before TIME only, so queries "
                              "from TIME on are point-in-time (default: the train split's end with --split; with "
                              "--split all the whole history, and the index says it is not point-in-time)",
                              metavar="TIME")
    overwrite: bool = option(False, "replace --out if it exists")


@dataclasses.dataclass
class QueryConfig:
    """`similar query`: the queries, what followed a window, and the outputs."""

    index: str = option(REQUIRED, "index folder (similar index --out)")
    session: str = option(None, "one query: this session's window ...")
    time: str = option(None, "... ending at this time (the last bar at or before it)")
    queries: str = option(None, "many queries: a CSV with columns session,time", metavar="FILE.csv")
    split: str = option(None, "or every window of a split", choices=SPLIT_CHOICES)
    k: int = option(10, "neighbours per query")
    ahead: int = option(1, "rows after a window whose return is reported")
    price_column: str = option(None, "what followed: the return of this price column ...")
    return_column: str = option(None, "... or of this log-return column")
    past_only: bool = option(True, "also neighbours after the query (not past-only: for study, never for a "
                             "forecast)", flag="--all-times")
    random: bool = option(False, "k random windows under the same rules: the null an analog forecast must beat")
    seed: int = option(0, "--random's draws")
    columns: list = option(None, "checked against the index's columns")
    lookback: int = option(None, "checked against the index's lookback")
    nprobe: int = option(0, "IVF-PQ clusters searched (default: the index's)")
    batch: int = 4096               # queries per FAISS call
    out: str = option(None, "results: FILE.h5 or FILE.csv")
    forecast: str = option(None, "the neighbours' mean as a prediction file (backtest --predictions takes it)",
                           metavar="PRED.h5")
    plot: str = option(None, "draw the first queries with their neighbours", metavar="PNG")
    overwrite: bool = option(False, "replace outputs that exist")
    progress: bool = True           # a bar / log lines on long work (the API's switch)
    strict: bool = option(False, "--queries: a row that cannot be answered (unknown session, bad time, no full "
                          "window) refuses the run (default: listed and left out)")
