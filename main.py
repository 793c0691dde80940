"""h5series command line.

    python main.py                      train SELECTED_CONFIG end to end (demo data made if missing)
    python main.py train [--profile P] [--config FILE] [key=value ...] | train --resume RUN_DIR
    python main.py evaluate --run RUN_DIR [--split test] [--json]
    python main.py predict --run RUN_DIR --out PRED.h5 [--split test | --latest] [--data NEW.h5 ...]
    python main.py backtest --prices DATA.h5 --price-column close (--predictions PRED.h5 | --signal rsi:14:30:70) --out DIR
    python main.py similar index --data DATA.h5 --columns close --lookback 20 --out INDEX | --run RUN_DIR --out INDEX
    python main.py similar query --index INDEX (--session S --time T | --queries Q.csv | --split test) --price-column close
    python main.py prepare [--profile P] [--config FILE] [key=value ...]
    python main.py convert INPUT... --out OUT.h5
    python main.py make-demo --out PATH [--sessions N --rows N --features N | --preset NAME]
    python main.py inspect PATH... [--json]
    python main.py index PATH...
    python main.py config [--profile P] [--config FILE] [key=value ...]

Mistakes in files, data or config print one line and exit with code 2.
"""

import argparse
import json
import logging
import sys
from options import add_options, from_args

SELECTED_CONFIG = "quick_demo"   # profile used by a bare `python main.py`; see configs/

log = logging.getLogger("h5series")


def _config_args(parser):
    from profiles import PROFILES
    parser.add_argument("--profile", default=None, choices=PROFILES,
                        help=f"base profile (default: SELECTED_CONFIG = {SELECTED_CONFIG})")
    parser.add_argument("--config", dest="config_file", help="YAML file overriding the profile")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="overrides applied last, e.g. data.lookback=128")


def _train_flags(p):
    _config_args(p)
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    p.add_argument("--run-dir", help="run directory (default: runs/<profile>-<time>)")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --run-dir")


def _evaluate_flags(p):
    from trainers.options import EvaluateConfig
    add_options(p, EvaluateConfig)
    p.add_argument("--json", action="store_true", help="print JSON")


def _predict_flags(p):
    from trainers.options import PredictConfig
    add_options(p, PredictConfig)


def _backtest_flags(p):
    from analysis.backtest.config import BacktestConfig
    add_options(p, BacktestConfig)


def _similar_flags(p):
    from analysis.similar.config import IndexConfig, QueryConfig
    similar = p.add_subparsers(dest="similar_command", required=True)
    p = similar.add_parser("index", help="build the index of every window (raw z-normalized or a run's embeddings)")
    _config_args(p)
    add_options(p, IndexConfig)
    p = similar.add_parser("query", help="the nearest past windows of windows, and what followed them")
    _config_args(p)          # (similar.batch_windows and the like)
    add_options(p, QueryConfig)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def _prepare_flags(p):
    _config_args(p)
    p.add_argument("--run-dir", help="run directory (default: runs/<profile>-<time>)")


def _convert_flags(p):
    p.add_argument("inputs", nargs="+", help="files or directories")
    p.add_argument("--out", required=True, help="output HDF5 file")
    p.add_argument("--features", nargs="*", default=[], help="feature columns (default: all numeric)")
    p.add_argument("--targets", nargs="*", default=[], help="target columns (default: none)")
    p.add_argument("--time-column", default=None,
                   help="time column (default: one named timestamp/datetime/date/time; '' for none)")
    p.add_argument("--session-column", default=None,
                   help="column naming the session of each row (default: one session per file)")
    p.add_argument("--target-from", default=None, help="column a derived target is computed from")
    p.add_argument("--target-transform", default=None,
                   help="derived target: next_log_return, next_return or next_value")
    p.add_argument("--compression", default="none", help="none, lzf, gzip or blosc-lz4")
    p.add_argument("--hdf-key", default=None, help="pandas HDF5: convert only this key")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def _make_demo_flags(p):
    from config import DEMO_PATH
    p.add_argument("--out", default=DEMO_PATH)
    p.add_argument("--preset", default=None, help="demo (16 x 20,000 x 8) or market-500x3y "
                   "(500 sessions x 181,440 minute bars x 16 features, ~90M rows)")
    p.add_argument("--sessions", type=int, default=None)
    p.add_argument("--rows", type=int, default=None, help="rows per session")
    p.add_argument("--features", type=int, default=None)
    p.add_argument("--compression", default="none", help="none, lzf, gzip or blosc-lz4")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def _inspect_flags(p):
    p.add_argument("paths", nargs="+")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--allow-external-links", action="store_true")


def _index_flags(p):
    p.add_argument("paths", nargs="+")


# The commands in the order `--help` lists them: (name, help, its flags). Each option of evaluate, predict,
# backtest and similar is written once, as a field of its command's dataclass (options.py).
COMMANDS = (
    ("train", "train a model (the default command)", _train_flags),
    ("evaluate", "metrics of a run's best checkpoint on a split", _evaluate_flags),
    ("predict", "stream a run's forecasts to HDF5: a split, new files (--data), or the next step after each "
     "session's last rows (--latest)", _predict_flags),
    ("backtest", "signal analysis (IC, quantiles) and portfolio backtests (topk, longshort, threshold) of "
     "predictions or of an indicator, streamed over time (docs/backtest.md)", _backtest_flags),
    ("similar", "similar past windows: index every window with FAISS, then find the nearest past ones of a "
     "window and what followed them (docs/similar.md)", _similar_flags),
    ("prepare", "catalog, split and normalize the data of a config; print the memory plan; write the run "
     "directory (no training)", _prepare_flags),
    ("convert", "CSV / Parquet / pandas-HDF5 -> session HDF5", _convert_flags),
    ("make-demo", "write synthetic market-like sessions", _make_demo_flags),
    ("inspect", "sessions, rows, columns, dtypes, chunking, compression, size", _inspect_flags),
    ("index", "check every session of HDF5 files written by other tools and add a session index, so opening "
     "them takes milliseconds (modifies the files)", _index_flags),
    ("config", "print the resolved config", _config_args),
)


def build_parser():
    parser = argparse.ArgumentParser(prog="main.py", description="h5series: deep learning on time "
                                     "series too big for memory, from chunked HDF5.")
    sub = parser.add_subparsers(dest="command")
    for name, text, add_flags in COMMANDS:
        add_flags(sub.add_parser(name, help=text))
    return parser


def cmd_make_demo(args):
    from data.demo import make_demo
    summary = make_demo(args.out, args.preset, seed=args.seed, compression=args.compression, overwrite=args.overwrite,
                        sessions=args.sessions, rows=args.rows, features=args.features)
    print(f"wrote {summary['sessions']} sessions x {summary['rows']} rows x "
          f"{len(summary['features'])} features to {summary['out']}")


def cmd_convert(args):
    from data.convert import convert
    summary = convert(args.inputs, args.out, features=args.features, targets=args.targets,
                      time_column=args.time_column, session_column=args.session_column,
                      target_from=args.target_from, target_transform=args.target_transform,
                      compression=args.compression, overwrite=args.overwrite, hdf_key=args.hdf_key)
    n = len(summary["sessions"])
    print(f"wrote {n} sessions, {summary['rows']} rows, features {summary['features']}, "
          f"targets {summary['targets']} from {summary['inputs']} inputs to {summary['out']}")


def cmd_inspect(args):
    from data.catalog import describe
    info = describe(args.paths, allow_external_links=args.allow_external_links)
    if args.json:
        print(json.dumps(info, indent=2))
        return
    print(f"{info['n_sessions']} sessions, {info['n_rows']:,} rows "
          f"(per session {info['min_rows']:,} - {info['max_rows']:,}), "
          f"{info['total_size_bytes'] / 2**20:,.1f} MiB on disk")
    print(f"features ({info['feature_dtype']}): {', '.join(info['feature_names'])}")
    if info["target_names"]:
        print(f"targets ({info['target_dtype']}): {', '.join(info['target_names'])}")
    print(f"timestamps: {'yes' if info['has_timestamps'] else 'no'}")
    for f in info["files"]:
        for s in f["sessions"]:
            if s.get("time_order", "increasing") != "increasing":
                print(f"time order: session {s['session']}: {s['time_order']} (training refuses it; "
                      "see data.check_time_order)")
    print(f"{'session':<28} {'rows':>12} {'chunks':>14} {'compression':>12} {'stored MiB':>11}")
    shown = 0
    for f in info["files"]:
        for s in f["sessions"]:
            if shown == 20:
                print(f"... {info['n_sessions'] - shown} more (use --json for all)")
                return
            feats = s["features"]
            chunks = "x".join(map(str, feats["chunks"])) if feats["chunks"] else "contiguous"
            print(f"{s['session'][:28]:<28} {s['rows']:>12,} {chunks:>14} {feats['compression']:>12} "
                  f"{feats['stored_bytes'] / 2**20:>11.2f}")
            shown += 1


def cmd_index(args):
    from data.catalog import index_files
    for path, n_sessions in index_files(args.paths):
        print(f"indexed {n_sessions} sessions in {path}")


def cmd_config(args):
    import yaml
    from config import load_config, to_dict
    config = load_config(args.profile, args.config_file, args.overrides)
    print(yaml.safe_dump(to_dict(config), sort_keys=False), end="")


def cmd_train(args):
    from config import load_config, resume_config
    from errors import InputError
    from trainers.run import launch, load_run_config
    if args.resume:
        given = [flag for flag, value in (("--profile", args.profile_given), ("--config", args.config_file),
                                          ("--run-dir", args.run_dir)) if value]
        if given:
            raise InputError(f"{given[0]} cannot be combined with --resume: a resumed run keeps its own config "
                             f"and directory ({args.resume}); start a new run to change them")
        config = resume_config(load_run_config(args.resume), args.overrides)
    else:
        config = load_config(args.profile, args.config_file, args.overrides)
    source = "from --profile" if args.profile_given else "main.py's SELECTED_CONFIG, no --profile given" + (
        "; for your own data choose --profile default" if args.profile == "quick_demo" else "")
    result, is_main = launch(config, args.resume or args.run_dir, resume=bool(args.resume), overwrite=args.overwrite,
                             profile_source=source)
    if not is_main:
        return 0 if "test" in result else 143
    if "test" in result:
        test = result["test"]
        shown = ", ".join(f"{k} {v:.4g}" for k, v in test.items() if isinstance(v, float))
        print(f"test ({test['checkpoint']} checkpoint, after epoch {test['epoch_of_checkpoint']}): {shown}")
        print(f"run directory: {result['run_dir']}  (checkpoints/, metrics_test.json, config.yaml)")
        print(f"TensorBoard:   tensorboard --logdir {result['run_dir']}/tensorboard")
        return 0
    return 130 if result.get("stopped_by") == "SIGINT" else 143


def cmd_evaluate(args):
    from trainers.options import EvaluateConfig
    from trainers.run import evaluate
    cfg = from_args(EvaluateConfig, args)
    result = evaluate(cfg.run, cfg.split, checkpoint=cfg.checkpoint)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.split} ({result['checkpoint']} checkpoint, after epoch {result['epoch_of_checkpoint']}): " +
              ", ".join(f"{k} {v:.5g}" for k, v in result.items() if isinstance(v, float)))


def cmd_predict(args):
    import dataclasses
    from trainers.options import PredictConfig
    from trainers.predict import predict
    result = predict(**dataclasses.asdict(from_args(PredictConfig, args)))
    print(f"wrote {result['windows']:,} predictions of {result['sessions']:,} sessions to {result['out']}"
          + ("" if result["out"].lower().endswith(".csv") else " (read with data.predictions.read_predictions)"))
    if "plot" in result:
        print(f"drew {min(args.plot, result['sessions'])} sessions' forecasts vs truth to {result['plot']}")


def cmd_backtest(args):
    from analysis.backtest.config import BacktestConfig
    from analysis.backtest.run import run_backtest
    from analysis.backtest.report import summary_lines
    cfg = from_args(BacktestConfig, args)
    result = run_backtest(cfg)
    print("\n".join(summary_lines(result)))
    print(f"report: {args.out}/report.json  (periods.csv, positions.csv, PNGs; "
          f"tensorboard --logdir {args.out}/tensorboard)")


def cmd_similar(args):
    if args.similar_command == "index":
        from analysis.similar.config import IndexConfig
        from analysis.similar.source import index_command
        from config import load_config
        s = index_command(from_args(IndexConfig, args), load_config(args.profile, args.config_file, args.overrides))
        what = f"{s['model']} embeddings ({s['dim']} dims)" if s["vectors"] == "model" else \
            f"z-normalized {s['columns']} ({s['dim']} dims)"
        print(f"indexed {s['windows']:,} windows of {s['lookback']} rows (stride {s['stride']}, split {s['split']}) as "
              f"{what} in {s['build_seconds']:.1f} s: {s['kind']}"
              + (f" (nlist {s['nlist']}, PQ {s['pq_m']}x{s['pq_bits']}, trained on {s['trained_on']:,})"
                 if s["kind"] == "ivfpq" else "")
              + (f"; {s['skipped_nonfinite']:,} windows with NaN/Inf left out" if s["skipped_nonfinite"] else "")
              + f" -> {args.out}")
        if s["kind"] == "ivfpq":
            print(f"point-in-time: queries ending at or after {s['train_until']} (IVF-PQ trained on windows before it)"
                  if s["point_in_time"] else "not point-in-time: IVF-PQ trained on windows from the whole history; "
                  "for analog forecasts a backtest can trust, build with --train-until TIME (or --split)")
        return
    from analysis.similar.config import QueryConfig
    from analysis.similar.query import run_query
    from config import load_config
    similar_cfg = load_config(args.profile, args.config_file, args.overrides).similar
    cfg = from_args(QueryConfig, args)
    summary = run_query(cfg, similar_cfg)
    if summary["bad_queries"]:
        print(f"warning: {summary['bad_queries']:,} row(s) of {args.queries} left out (--strict refuses them): "
              + "; ".join(summary["bad_examples"][:3]) + (" ..." if summary["bad_queries"] > 3 else ""), file=sys.stderr)
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    t = summary["timings"]
    print(f"{summary['queries']:,} queries, {summary['k']} neighbours each ({'past only' if summary['past_only'] else 'all times'}"
          f"{', random' if summary['random'] else ''}) from {summary['windows']:,} windows ({summary['kind']}): "
          f"windows read {t['vectors_s']:.2f} s, search {t['search_s']:.2f} s, total {t['total_s']:.2f} s"
          + (f"; {summary['queries_short_of_k']:,} with fewer than k" if summary["queries_short_of_k"] else ""))
    if summary["queries"] == 1:
        q = summary["first"][0]
        fmt = lambda x: "n/a" if x is None else f"{x:+.4f}"  # noqa: E731
        print(f"query {q['session']} window ending {q['end_time'][:19]}: followed by {fmt(q['followed'])}; neighbours' "
              f"mean {fmt(q['mean'])}, median {fmt(q['median'])}, positive "
              f"{'n/a' if q['share_positive'] is None else format(q['share_positive'], '.0%')}")
        print(f"{'rank':>4}  {'session':<20} {'window end':<20} {'distance':>9} {'followed':>9}")
        for i, nb in enumerate(q["neighbours"], start=1):
            print(f"{i:>4}  {nb['session'][:20]:<20} {nb['end_time'][:19]:<20} {nb['distance']:>9.4f} "
                  f"{fmt(nb['followed']):>9}")
    if summary["point_in_time_note"]:
        print(f"note: {summary['point_in_time_note']}")
    for path in summary["outputs"]:
        print(f"wrote {path}")


def cmd_prepare(args):
    from config import load_config
    from data.memory_plan import format_plan
    from trainers.run import describe_splits, prepare
    config = load_config(args.profile, args.config_file, args.overrides)
    prepared, run_dir = prepare(config, args.run_dir, show_plan=lambda plan: print(format_plan(plan, config.memory_budget_mb)))
    catalog = prepared.catalog
    print(f"data: {len(catalog.sessions)} sessions, {catalog.n_rows:,} rows, "
          f"{len(prepared.columns.feature_names)} features -> {len(prepared.columns.target_names)} "
          f"targets ({prepared.columns.target_source}), window {prepared.window.lookback}+"
          f"{prepared.window.horizon}")
    print("\n".join(describe_splits(prepared)))
    info = prepared.normalizer.info
    if info:
        print(f"normalization: {prepared.normalizer.mode}, from {info['rows_used']:,} of "
              f"{info['train_rows']:,} train rows ({'exact' if info['exact'] else 'sampled'})")
    print(f"run directory: {run_dir} (config.yaml, normalizer.json)")


def _one_line(exc):
    """The message of an InputError, also when a DataLoader worker raised it (PyTorch
    re-raises it with the worker's traceback folded into the message)."""
    text = str(exc).strip()
    if "Traceback" in text:
        text = text.splitlines()[-1].split("InputError: ", 1)[-1]
    return text


def parse_args(parser, argv):
    """argparse, with key=value overrides accepted anywhere on the line (`train --profile P a=1
    --run-dir X b=2`): argparse takes only the ones before the first option (issue 10, case 23)."""
    args, extra = parser.parse_known_args(argv)
    overrides = [t for t in extra if "=" in t and not t.startswith("-")]
    unknown = [t for t in extra if t not in overrides]
    if unknown or (overrides and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or overrides)}")
    if overrides:
        args.overrides = list(args.overrides) + overrides
    if hasattr(args, "profile"):
        args.profile_given, args.profile = args.profile is not None, args.profile or SELECTED_CONFIG
    return args


def main(argv=None):
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    log.setLevel(logging.INFO)
    from errors import InputError
    parser = build_parser()
    args = parse_args(parser, argv)
    commands = {"convert": cmd_convert, "make-demo": cmd_make_demo, "inspect": cmd_inspect,
                "config": cmd_config, "prepare": cmd_prepare, "index": cmd_index, "train": cmd_train,
                "evaluate": cmd_evaluate, "predict": cmd_predict, "backtest": cmd_backtest,
                "similar": cmd_similar}
    try:
        if args.command is None:
            args = parse_args(parser, ["train"])
        return commands[args.command](args) or 0
    except InputError as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except RuntimeError as exc:
        from data.dataloader import worker_death_message
        message = worker_death_message(exc)
        if message is None:
            raise           # a bug: keep the traceback
        print(f"error: {message}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # output piped into `head` and cut off: not an error
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
