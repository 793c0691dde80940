"""How long opening a dataset of many sessions takes (target: 10,000 sessions < 2 s).

    python benchmarks/catalog.py [--sessions 10000] [--rows 1000] [--json out.json]

Writes the sessions once (one file, and the same split over 100 files; each with
the session index that convert/make-demo write, and without it, as files from
other tools come) under bench_data/, then times open_catalog (metadata only, no
rows read) from a warm page cache, best of --repeat runs.
"""

import argparse
import time
from pathlib import Path

import h5py
import numpy as np

from common import ROOT, machine, save_json, table
from data.catalog import open_catalog, write_index
from data.layout import write_session


def write(path, names, rows, features, indexed):
    if path.exists():
        return
    tmp = path.with_suffix(".tmp")
    rng = np.random.default_rng(0)
    block = rng.normal(size=(rows, features)).astype(np.float32)
    with h5py.File(tmp, "w") as f:
        for name in names:
            write_session(f, name, block, feature_names=[f"f{i}" for i in range(features)])
    if indexed:
        write_index(tmp)
    tmp.rename(path)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--features", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default=str(ROOT / "bench_data" / "catalog"))
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    root = Path(args.dir)
    root.mkdir(parents=True, exist_ok=True)
    names = [f"s{i:05d}" for i in range(args.sessions)]
    cases = []
    for indexed in (True, False):
        tag = "indexed" if indexed else "plain"
        one = root / f"one_{tag}_{args.sessions}x{args.rows}.h5"
        write(one, names, args.rows, args.features, indexed)
        many = root / f"many_{tag}_{args.sessions}x{args.rows}"
        many.mkdir(exist_ok=True)
        per_file = max(1, args.sessions // 100)
        for k in range(0, args.sessions, per_file):
            write(many / f"part{k // per_file:03d}.h5", names[k:k + per_file], args.rows, args.features, indexed)
        cases += [(f"1 file, {tag}", one), (f"100 files, {tag}", many)]

    results = []
    for label, target in cases:
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            catalog = open_catalog(target)
            times.append(time.perf_counter() - t0)
        assert len(catalog.sessions) == args.sessions
        results.append({"layout": label, "sessions": args.sessions, "seconds": min(times),
                        "us_per_session": 1e6 * min(times) / args.sessions})
    print(table(results, ["layout", "sessions", "seconds", "us_per_session"]))
    save_json(args.json, {"rows": results, "config": vars(args), "machine": machine()})


if __name__ == "__main__":
    main()
