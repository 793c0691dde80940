"""Is the analog search point-in-time on the 505 S&P 500 stocks? Proven by garbling:

    python benchmarks/similar_pit.py [--json docs/results/similar_pit.json]

Every close after D (2016-06-30) is replaced, in a copy of the file, by another random walk. Both
files get the default IVF-PQ index (609k windows of 20 days) built two ways: trained on every window
(as before --train-until), and trained until T (2016-01-04). 100 random windows ending in [T, D] are
queried past-only (k 10) with an analog forecast on each file; the script counts the forecasts and
neighbours that differ between the clean and the garbled file. Point-in-time means zero.
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np

from backtest import WORK, stock_prices
from common import ROOT, machine, save_json, table

OUT = WORK / "similar_pit"
D, T = "2016-06-30", "2016-01-04"


def garbled_copy(clean, path, after_ns, seed=0):
    """The prices with every close after `after_ns` replaced by a random walk (same rows and times)."""
    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    with h5py.File(clean, "r") as src, h5py.File(path, "w") as dst:
        for name in src:
            if name.startswith("_"):
                continue
            src.copy(src[name], dst, name=name)
            stamps = dst[name]["timestamps"][:]
            later = stamps > after_ns
            if later.any():
                feats = dst[name]["features"][:]
                feats[later, 0] = 50 * np.exp(np.cumsum(rng.normal(0, 0.05, int(later.sum()))))
                dst[name]["features"][...] = feats
    from data.catalog import write_index
    write_index(path)
    return path


def queries(index_dir, n, first, last, seed=1):
    """n random indexed windows ending in [first, last]: a (session, time) frame."""
    import json

    import pandas as pd
    with h5py.File(Path(index_dir) / "windows.h5", "r") as f:
        count = int(f.attrs["windows"])
        times, sessions = f["end_time"][:count], f["session"][:count]
    lo, hi = (np.datetime64(t, "ns").astype(np.int64) for t in (first, last))
    ids = np.sort(np.random.default_rng(seed).choice(np.flatnonzero((times >= lo) & (times <= hi)), n, replace=False))
    names = json.loads((Path(index_dir) / "settings.json").read_text())["sessions"]
    return pd.DataFrame({"session": [names[s] for s in sessions[ids]],
                         "time": pd.to_datetime(times[ids]).strftime("%Y-%m-%d")})


def similar(*args):
    cmd = [sys.executable, "main.py", "similar", *map(str, args)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return round(time.perf_counter() - t0, 1)


def results(path):
    with h5py.File(path, "r") as f:
        return {name: f[name][:] for name in ("neighbour_session", "neighbour_end_row", "distance", "mean")}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    clean = stock_prices(WORK / "sp500_close.h5")
    d_ns = int(np.datetime64(D, "ns").astype(np.int64))
    dirty = garbled_copy(clean, OUT / "sp500_close_garbled.h5", d_ns)
    rows, out = [], {"machine": machine(), "garbled_after": D, "train_until": T, "queries": 100, "k": 10}
    for mode, extra in (("trained on every window", []), (f"--train-until {T}", ["--train-until", T])):
        got = {}
        for name, data in (("clean", clean), ("garbled", dirty)):
            index = OUT / f"index_{name}_{len(extra)}"
            seconds = similar("index", "--data", data, "--columns", "close", "--lookback", 20, "--out", index,
                              "--overwrite", *extra)
            if name == "clean" and not (OUT / "queries.csv").exists():
                queries(index, 100, T, D).to_csv(OUT / "queries.csv", index=False)
            similar("query", "--index", index, "--queries", OUT / "queries.csv", "--price-column", "close", "--k", 10,
                    "--out", OUT / f"res_{name}.h5", "--forecast", OUT / f"fc_{name}.h5", "--overwrite")
            got[name] = results(OUT / f"res_{name}.h5")
            print(f"{mode}, {name}: index built in {seconds} s", flush=True)
        a, b = got["clean"], got["garbled"]
        same_nb = (a["neighbour_session"] == b["neighbour_session"]) & (a["neighbour_end_row"] == b["neighbour_end_row"])
        forecasts_changed = int((~((a["mean"] == b["mean"]) | (np.isnan(a["mean"]) & np.isnan(b["mean"])))).sum())
        row = {"index": mode, "queries": len(a["mean"]), "forecasts_changed": forecasts_changed,
               "neighbours": int(same_nb.size), "neighbours_changed": int((~same_nb).sum())}
        rows.append(row)
        print(row, flush=True)
    out["rows"] = rows
    print(table(rows, ["index", "queries", "forecasts_changed", "neighbours", "neighbours_changed"]))
    save_json(args.json, out)


if __name__ == "__main__":
    main()
