"""`similar` measured: the S&P 500 daily index and queries, the analog forecast's rank IC, minute scale.

    python benchmarks/similar.py --stage stocks [--json docs/results/similar_stocks.json]
    python benchmarks/similar.py --stage minute [--json docs/results/similar_minute.json]

stocks (505 stocks x 2013-2018 daily closes, benchmarks/backtest.py's session file), each command in a
child process (time and peak PSS sampled every 0.2 s, as a user runs it):
  - `similar index` of every 20-day window of close (z-normalized), and of the train period only
  - 600 queries (the users' old run: 20-30 minutes in a 16-thread pool) from a CSV of random
    (stock, test-period day) rows, past-only, k 10: search time (the summary's) and the whole command
  - recall@10 of those 600 queries (all times) against numpy brute force over the index's own vectors
  - the analog forecast: test-period windows, past-only neighbours from train-period windows, their
    mean next-day return as a prediction file, backtested (`backtest --predictions`): daily rank IC and
    t-stat, next to the GRU of benchmarks/stocks.py and to k random past windows (the null)
minute (`make-demo --preset market-500x3y`, 500 x 181,440 bars): every 5th 30-bar window of `ret`
(~18M windows, IVF-PQ): build time and peak PSS, 600 queries, recall@10 of 100 of them against
numpy brute force streamed over the stored vectors.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from backtest import WORK, gru_predictions, measured, stock_prices
from common import machine, save_json, table

SPLIT = ["data.split.method=timestamps", "data.split.val_start=2016-07-01", "data.split.test_start=2017-04-01",
         "data.split.inputs_before_border=true"]        # benchmarks/stocks.py's split: the GRU's test days
OUT = WORK / "similar"


def cli(*args):
    return [sys.executable, "main.py", "similar", *map(str, args)]


def run(cmd, what, rows):
    row, out = measured(cmd)
    row["what"] = what
    if row["exit"] != 0:
        raise SystemExit(f"{what} failed (exit {row['exit']})")
    rows.append(row)
    print(f"{what}: {row['seconds']} s, peak PSS {row['peak_pss_mb']} MB", flush=True)
    return row, out


def random_queries(index_dir, n, seed, after=None):
    """n random indexed windows (optionally ending at or after `after`): a CSV of (session, time) and ids."""
    with h5py.File(Path(index_dir) / "windows.h5", "r") as f:
        count = int(f.attrs["windows"])
        times = f["end_time"][:count]
        allowed = np.flatnonzero(times >= after) if after is not None else np.arange(count)
        ids = np.sort(np.random.default_rng(seed).choice(allowed, n, replace=False))
        sessions = f["session"][:count][ids]
    names = json.loads((Path(index_dir) / "settings.json").read_text())["sessions"]
    frame = pd.DataFrame({"session": [names[s] for s in sessions],
                          "time": pd.to_datetime(times[ids]).strftime("%Y-%m-%dT%H:%M:%S")})
    return frame, ids


def brute_force_recall(index_dir, results, ids, k=10, piece=1 << 16):
    """recall@k of results (all-times queries of the indexed windows `ids`) against exact numpy search
    over the stored vectors, same rule (no window of the query's session sharing a row)."""
    with h5py.File(Path(index_dir) / "windows.h5", "r") as f:
        n = int(f.attrs["windows"])
        lookback = json.loads((Path(index_dir) / "settings.json").read_text())["lookback"]
        q = f["vectors"][ids].astype(np.float64)
        qs, qe = f["session"][ids], f["end_row"][ids]
        best_d = np.full((len(ids), k), np.inf)
        best_i = np.full((len(ids), k), -1)
        for a in range(0, n, piece):
            v = f["vectors"][a:a + piece].astype(np.float64)
            s, e = f["session"][a:a + piece], f["end_row"][a:a + piece]
            d = (q * q).sum(1)[:, None] + (v * v).sum(1)[None] - 2 * q @ v.T
            d[(qs[:, None] == s[None]) & (np.abs(qe[:, None] - e[None]) < lookback)] = np.inf
            part = np.argpartition(d, k, axis=1)[:, :k]
            cand_d = np.concatenate([best_d, np.take_along_axis(d, part, 1)], 1)
            cand_i = np.concatenate([best_i, part + a], 1)
            order = np.argsort(cand_d, 1)[:, :k]
            best_d, best_i = np.take_along_axis(cand_d, order, 1), np.take_along_axis(cand_i, order, 1)
        sessions, ends = f["session"][:n], f["end_row"][:n]
        exact = [set(zip(sessions[b], ends[b])) for b in best_i]
    with h5py.File(results, "r") as r:
        got = [set(zip(s, e)) for s, e in zip(r["neighbour_session"][:], r["neighbour_end_row"][:])]
        q_rows = list(zip(r["query_session"][:], r["query_end_row"][:]))
    want = {(int(s), int(e)): j for j, (s, e) in enumerate(zip(qs, qe))}
    hits = [len(got[i] & exact[want[(int(s), int(e))]]) / k for i, (s, e) in enumerate(q_rows)
            if (int(s), int(e)) in want]
    return float(np.mean(hits))


def queries_best_of_3(query, out, what, rows):
    """The query command 3 times: best times (the summary's and the whole command's), peak PSS."""
    summaries, runs = [], []
    for attempt in range(3):
        row, text = run(cli(*query, "--out", out), f"{what} (run {attempt + 1})", rows)
        summaries.append(json.loads(text))
        runs.append(row)
    best = {f"{name}_seconds_best": min(s["timings"][key] for s in summaries)
            for name, key in (("search", "search_s"), ("faiss", "faiss_s"), ("query", "total_s"))}
    fastest = min(summaries, key=lambda s: s["timings"]["total_s"])
    return {**best, "query_seconds_runs": [s["timings"]["total_s"] for s in summaries],
            "timings_of_fastest": fastest["timings"], "command_seconds_best": min(r["seconds"] for r in runs),
            "peak_pss_mb": max(r["peak_pss_mb"] for r in runs),
            "neighbours_found": summaries[-1]["neighbours_found"], "queries_short_of_k": summaries[-1]["queries_short_of_k"]}


def rank_ic(report_dir):
    r = json.loads((Path(report_dir) / "report.json").read_text())["signal_analysis"]["rank_ic"]
    return {"rank_ic_mean": r["mean"], "rank_ic_t": r["t_stat"], "days": r["periods"],
            "positive_share": r["positive_share"]}


def backtest(prices, predictions, out, rows, what):
    run([sys.executable, "main.py", "backtest", "--prices", prices, "--price-column", "close", "--predictions",
         predictions, "--out", out, "--no-plots", "--no-tensorboard", "--overwrite"], what, rows)
    return rank_ic(out)


def stage_stocks(args):
    OUT.mkdir(parents=True, exist_ok=True)
    prices = stock_prices(WORK / "sp500_close.h5")
    rows, result = [], {"machine": machine()}
    full = OUT / "stocks_all"
    index = ["index", "--data", prices, "--columns", "close", "--lookback", 20, "--stride", 1, "--overwrite"]
    for attempt in range(3):                     # best of 3: this machine's timings vary ~30% run to run
        run(cli(*index, "--out", full), f"index all windows (run {attempt + 1})", rows)
    settings = json.loads((full / "settings.json").read_text())
    result["index_all"] = {k: settings[k] for k in ("windows", "kind", "nlist", "pq_m", "pq_bits", "nprobe",
                                                    "build_seconds", "trained_on")}
    builds = [r for r in rows if r["what"].startswith("index all")]
    result["index_all"]["command_seconds_best"] = min(r["seconds"] for r in builds)
    result["index_all"]["peak_pss_mb_max"] = max(r["peak_pss_mb"] for r in builds)
    # 600 queries from the test period, past only
    frame, ids = random_queries(full, 600, seed=0, after=np.datetime64("2017-04-01", "ns").astype(np.int64))
    frame.to_csv(OUT / "queries_600.csv", index=False)
    query = ["query", "--index", full, "--queries", OUT / "queries_600.csv", "--price-column", "close", "--k", 10,
             "--json", "--overwrite"]
    result["queries_600"] = queries_best_of_3(query, OUT / "q600.h5", "600 queries past-only", rows)
    result["queries_600"]["old_thread_pool_seconds"] = "1200-1800 (users' report)"
    result["queries_600"]["speedup_vs_20_min"] = round(1200 / result["queries_600"]["query_seconds_best"])
    _, out = run(cli(*query[:-2], "--all-times", "--json", "--overwrite", "--out", OUT / "q600_all.h5"),
                 "600 queries all times (recall)", rows)
    result["recall_at_10"] = brute_force_recall(full, OUT / "q600_all.h5", ids)
    print(f"recall@10 (IVF-PQ, 600 queries): {result['recall_at_10']:.4f}", flush=True)
    # the analog forecast: train-period index, test-period queries
    train = OUT / "stocks_train"
    run(cli("index", "--data", prices, "--columns", "close", "--lookback", 20, "--split", "train", "--out", train,
            "--overwrite", *SPLIT), "index train windows", rows)
    forecasts = {}
    for name, extra in (("analog", []), ("random", ["--random"])):
        pred = OUT / f"{name}_test.h5"
        run(cli("query", "--index", train, "--split", "test", "--price-column", "close", "--k", 10, "--forecast", pred,
                "--overwrite", *extra), f"{name} forecast of the test period", rows)
        forecasts[name] = backtest(prices, pred, OUT / f"bt_{name}", rows, f"backtest {name}")
    # the same from the GRU's own embeddings (benchmarks/stocks.py's run: its features, its statistics)
    gru_pred = gru_predictions(WORK)
    runs = sorted((WORK / "stocks" / "runs").glob("*/checkpoints"))
    if runs:
        emb = OUT / "stocks_gru_train"
        run(cli("index", "--run", runs[-1].parent, "--split", "train", "--out", emb, "--overwrite"),
            "index GRU embeddings (train windows)", rows)
        pred = OUT / "gru_embedding_test.h5"
        run(cli("query", "--index", emb, "--split", "test", "--return-column", "log_return", "--k", 10, "--forecast", pred,
                "--overwrite"), "GRU-embedding analog forecast of the test period", rows)
        forecasts["analog_gru_embedding"] = backtest(prices, pred, OUT / "bt_gru_embedding", rows,
                                                     "backtest GRU-embedding analog")
    forecasts["gru"] = backtest(prices, gru_pred, OUT / "bt_gru", rows, "backtest GRU")
    result["analog_forecast"] = forecasts
    for name, f in forecasts.items():
        print(f"{name}: rank IC {f['rank_ic_mean']:+.4f} (t {f['rank_ic_t']:+.2f}) over {f['days']} days", flush=True)
    result["runs"] = rows
    print(table(rows, ["what", "seconds", "peak_pss_mb", "exit"]))
    if args.json:
        save_json(args.json, result)


def stage_minute(args):
    from backtest import minute_file
    OUT.mkdir(parents=True, exist_ok=True)
    data = minute_file(1)
    rows, result = [], {"machine": machine()}
    index = OUT / "minute"
    run(cli("index", "--data", data, "--columns", "ret", "--lookback", 30, "--stride", 5, "--out", index,
            "--overwrite"), "index minute (stride 5)", rows)
    settings = json.loads((index / "settings.json").read_text())
    result["index"] = {k: settings[k] for k in ("windows", "kind", "nlist", "pq_m", "pq_bits", "nprobe", "dim",
                                                "padded_dim", "build_seconds", "trained_on", "train_seconds",
                                                "file_sizes")}
    result["index"].update(command_seconds=rows[-1]["seconds"], peak_pss_mb=rows[-1]["peak_pss_mb"])
    frame, ids = random_queries(index, 600, seed=0)
    frame.to_csv(OUT / "minute_queries.csv", index=False)
    query = ["query", "--index", index, "--queries", OUT / "minute_queries.csv", "--return-column", "next_log_return",
             "--k", 10, "--json", "--overwrite"]
    result["queries_600"] = queries_best_of_3(query, OUT / "minute_q600.h5", "600 queries", rows)
    sample = frame.iloc[:100]
    sample.to_csv(OUT / "minute_queries_100.csv", index=False)
    run(cli("query", "--index", index, "--queries", OUT / "minute_queries_100.csv", "--return-column",
            "next_log_return", "--k", 10, "--all-times", "--overwrite", "--out", OUT / "minute_q100_all.h5"),
        "100 queries all times (recall)", rows)
    t0 = time.perf_counter()
    result["recall_at_10"] = brute_force_recall(index, OUT / "minute_q100_all.h5", ids[:100])
    result["brute_force_seconds"] = round(time.perf_counter() - t0, 1)
    print(f"recall@10: {result['recall_at_10']:.4f} (numpy brute force {result['brute_force_seconds']} s)", flush=True)
    # recall against search time: fewer and more clusters probed per query than the default
    result["recall_by_nprobe"] = {settings["nprobe"]: result["recall_at_10"]}
    result["query_seconds_by_nprobe"] = {}           # whole query runs (all times): what each setting costs
    for nprobe in (32, 64, 512):
        _, out = run(cli("query", "--index", index, "--queries", OUT / "minute_queries.csv", "--return-column",
                         "next_log_return", "--k", 10, "--all-times", "--nprobe", nprobe, "--json", "--overwrite",
                         "--out", OUT / f"minute_q600_nprobe{nprobe}.h5"), f"600 queries all times, nprobe {nprobe}", rows)
        summary = json.loads(out)
        result["recall_by_nprobe"][nprobe] = brute_force_recall(index, OUT / f"minute_q600_nprobe{nprobe}.h5", ids[:100])
        result[f"faiss_seconds_nprobe{nprobe}"] = summary["timings"]["faiss_s"]
        result["query_seconds_by_nprobe"][nprobe] = summary["timings"]["total_s"]
        print(f"nprobe {nprobe}: recall@10 {result['recall_by_nprobe'][nprobe]:.4f}, FAISS {summary['timings']['faiss_s']:.2f} s, "
              f"query run {summary['timings']['total_s']:.2f} s", flush=True)
    result["runs"] = rows
    print(table(rows, ["what", "seconds", "peak_pss_mb", "exit"]))
    if args.json:
        save_json(args.json, result)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=("stocks", "minute"), default="stocks")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    {"stocks": stage_stocks, "minute": stage_minute}[args.stage](args)


if __name__ == "__main__":
    sys.exit(main())
