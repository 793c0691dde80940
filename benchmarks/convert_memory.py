"""Peak memory of `main.py convert` against the number of sessions (issue 10, case 25).

    python benchmarks/convert_memory.py [--sessions 100 1000] [--rows 50000] [--features 4]
                                        [--formats csv parquet] [--json OUT]

For each session count it writes (or reuses, under --dir) two inputs holding the same rows:
- csv: a folder of one CSV file per session (date + features);
- parquet: one Parquet file in long format with a `ticker` column, rows sorted by date then
  ticker, so every chunk read holds rows of every session (the case that buffers most),
and converts each with `python main.py convert` in a child process, sampling the peak PSS of
that process. Convert streams: its peak must not grow with the number of sessions (target:
the largest session count within 10% of the smallest, per format). Rows per session stay the
same, so the larger count also has ten times the rows.
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import ROOT, machine, save_json, table

TARGET_GROWTH = 0.10


def session_frame(index, rows, features, start="2015-01-01"):
    import pandas as pd
    rng = np.random.default_rng(index)
    values = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, (rows, features)), axis=0))
    frame = pd.DataFrame(values.astype(np.float32), columns=[f"f{j}" for j in range(features)])
    frame.insert(0, "date", pd.date_range(start, periods=rows, freq="min"))
    return frame


def csv_folder(directory, sessions, rows, features):
    folder = Path(directory) / f"csv_{sessions}x{rows}x{features}"
    if not (folder / "done").exists():
        folder.mkdir(parents=True, exist_ok=True)
        print(f"writing {folder} ...", flush=True)
        for i in range(sessions):
            session_frame(i, rows, features).to_csv(folder / f"s{i:05d}.csv", index=False, float_format="%.5f")
        (folder / "done").write_text("")
    return folder


def parquet_file(directory, sessions, rows, features, block=5_000):
    """Long format, sorted by date then ticker, written a block of dates at a time."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq
    path = Path(directory) / f"long_{sessions}x{rows}x{features}.parquet"
    if path.exists():
        return path
    print(f"writing {path} ...", flush=True)
    tmp = path.with_suffix(".tmp")
    writer = None
    dates = pd.date_range("2015-01-01", periods=rows, freq="min")
    level = np.full((sessions, features), 100.0)
    rng = np.random.default_rng(0)
    for a in range(0, rows, block):
        n = min(block, rows - a)
        steps = np.exp(np.cumsum(rng.normal(0, 0.01, (n, sessions, features)), axis=0))
        values = level[None] * steps                                              # (n, S, F)
        level = values[-1]
        frame = pd.DataFrame(values.reshape(n * sessions, features).astype(np.float32),
                             columns=[f"f{j}" for j in range(features)])
        frame.insert(0, "ticker", np.tile([f"s{i:05d}" for i in range(sessions)], n))
        frame.insert(0, "date", np.repeat(dates[a:a + n].to_numpy(), sessions))
        table_ = pa.Table.from_pandas(frame, preserve_index=False)
        writer = writer or pq.ParquetWriter(tmp, table_.schema)
        writer.write_table(table_, row_group_size=200_000)
    writer.close()
    tmp.rename(path)
    return path


def measure(fmt, source, sessions, args):
    from trainers.memory import PeakSampler
    with tempfile.TemporaryDirectory(dir=args.dir) as out_dir:
        out = Path(out_dir) / "out.h5"
        cmd = [sys.executable, "main.py", "convert", str(source), "--out", str(out)]
        if fmt == "parquet":
            cmd += ["--session-column", "ticker"]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        with PeakSampler(proc.pid, interval=0.1) as sampler:
            _, err = proc.communicate()
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"convert of {source} failed (exit {proc.returncode}): {err.strip()[-500:]}")
        out_mb = out.stat().st_size / 2**20
    row = {"format": fmt, "sessions": sessions, "rows_per_session": args.rows, "rows": sessions * args.rows,
           "peak_pss_mb": sampler.peak_mb, "seconds": seconds, "output_mb": out_mb}
    print(f"  {fmt} {sessions} sessions: peak PSS {row['peak_pss_mb']:,.0f} MB, {seconds:,.1f} s", flush=True)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--rows", type=int, default=50_000, help="rows per session")
    parser.add_argument("--features", type=int, default=4)
    parser.add_argument("--formats", nargs="+", default=["csv", "parquet"], choices=["csv", "parquet"])
    parser.add_argument("--dir", default=str(ROOT / "bench_data" / "convert"))
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    rows = []
    for fmt in args.formats:
        for sessions in args.sessions:
            make = csv_folder if fmt == "csv" else parquet_file
            rows.append(measure(fmt, make(args.dir, sessions, args.rows, args.features), sessions, args))
    checks = []
    for fmt in args.formats:
        mine = sorted((r for r in rows if r["format"] == fmt), key=lambda r: r["sessions"])
        growth = mine[-1]["peak_pss_mb"] / mine[0]["peak_pss_mb"] - 1
        checks.append({"format": fmt, "sessions": f"{mine[0]['sessions']} -> {mine[-1]['sessions']}",
                       "peak_growth": growth, "met": "yes" if growth <= TARGET_GROWTH else "no"})
    print(table(rows, ["format", "sessions", "rows", "peak_pss_mb", "seconds", "output_mb"]))
    print(table(checks, ["format", "sessions", "peak_growth", "met"]))
    save_json(args.json, {"rows": rows, "checks": checks, "target_growth": TARGET_GROWTH,
                          "config": vars(args), "machine": machine()})


if __name__ == "__main__":
    main()
