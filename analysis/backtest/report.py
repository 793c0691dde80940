"""The backtest's outputs: per-period HDF5 (appended block by block) and CSV, positions, the JSON
report, PNGs and TensorBoard. Pictures read the per-period file back in pieces and draw at
most MAX_POINTS points per line (block means), so they cost the same for 1,000 or 1,000,000
periods. TensorBoard events are written with tensorboard's own writer (no torch import: the
backtest runs in ~400 MB beside live processes)."""

import io
import json
import math
import time

import h5py
import numpy as np

from atomic import SpaceGuard

MAX_POINTS = 4000
CHUNK = 1 << 16


class PeriodWriter:
    """Appends per-period columns (decision time, end time, signal analysis, benchmark, each strategy)."""

    def __init__(self, path, strategies):
        self.path = path
        self.file = h5py.File(path, "w")
        self.guard = SpaceGuard(path, "backtest report")
        self.n = 0
        self.file.attrs["strategies"] = json.dumps(list(strategies))
        self.file.attrs["h5series_format"] = "h5series-backtest-periods"     # (a data folder's search skips it)

    def append(self, times, ends, columns):
        self.guard.check()
        m = len(times)
        for name, values in {"time": times, "end_time": ends, **columns}.items():
            values = np.asarray(values)[:m]
            if name not in self.file:
                self.file.create_dataset(name, (0,), maxshape=(None,), dtype=values.dtype, chunks=(CHUNK,))
            ds = self.file[name]
            ds.resize(self.n + m, axis=0)
            ds[self.n:self.n + m] = values
        self.n += m

    def close(self):
        if self.file:
            self.file.close()
            self.file = None


def _pieces(path, names):
    with h5py.File(path, "r") as f:
        n = f["time"].shape[0]
        for a in range(0, n, CHUNK):
            yield {name: f[name][a:a + CHUNK] for name in names if name in f}


def write_csv(work):
    """periods.csv from periods.h5, a piece at a time (the csv module: pandas costs ~70 MB of memory)."""
    import csv
    path = work / "periods.h5"
    with h5py.File(path, "r") as f:
        names = list(f.keys())
    names = ["time", "end_time"] + [k for k in names if k not in ("time", "end_time")]
    # A strategy's long/short columns count the names held (periods.h5 keeps the short names).
    header = [k.rsplit(".", 1)[0] + f".names_{k.rsplit('.', 1)[1]}" if k.endswith((".long", ".short")) else k
              for k in names]
    with open(work / "periods.csv", "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(header)
        for piece in _pieces(path, names):
            # times as short ISO text: 2020-01-02, 2020-01-02T09:30 (was 2020-01-02T00:00:00.000000000)
            columns = [np.datetime_as_string(piece[k].astype("datetime64[ns]"), unit="auto") if k in ("time", "end_time")
                       else [f"{v:.10g}" for v in piece[k].tolist()] for k in names]
            writer.writerows(zip(*columns))


def write_positions(work, result):
    import csv
    books = result["portfolios"]
    with open(work / "positions.csv", "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["session"] + [f"{s}_weight" for s in books])
        weights = [books[s].pop("final_weights") for s in books]
        for i, name in enumerate(result["names"]):
            writer.writerow([name] + [f"{w[i]:.10g}" for w in weights])


def _downsampled(path, names):
    """Columns averaged over groups of rows so at most MAX_POINTS remain; times: each group's last."""
    with h5py.File(path, "r") as f:
        n = f["time"].shape[0]
    group = max(1, math.ceil(n / MAX_POINTS))
    out = {k: [] for k in names}
    for piece in _pieces(path, names):
        m = len(piece["end_time"])
        usable = m - m % group if m > group else m
        for k in names:
            v = piece[k]
            if k == "end_time":
                picked = v[group - 1:usable:group] if m > group else v[-1:]
            else:
                with np.errstate(invalid="ignore"):
                    picked = np.nanmean(v[:usable].reshape(-1, group), axis=1) if m > group else \
                        np.array([np.nanmean(v)])
            out[k].append(picked)
    return {k: np.concatenate(v) if v else np.empty(0) for k, v in out.items()}, group


def figures(work, result):
    """{name: matplotlib Figure}: equity with drawdown, IC per period, quantile returns."""
    import warnings

    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    strategies = list(result["portfolios"])
    figs = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)        # nanmean of all-NaN groups
        cols = ["end_time", "benchmark"] + (["ic", "rank_ic"] if "ic" in result["signal_analysis"] else []) + \
            [f"{s}.{k}" for s in strategies for k in ("net", "gross")]
        d, group = _downsampled(work / "periods.h5", cols)
    colors = {s: f"C{i}" for i, s in enumerate(strategies)}
    # Equity curves need every period's return: compound each group's mean return over its length.
    when = d["end_time"].astype("datetime64[ns]")
    fig = Figure(figsize=(10, 6))
    ax, ax_dd = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    curves = [(f"{s} (net)", f"{s}.net", colors[s], "-") for s in strategies] + \
        [(f"{s} (gross, before costs)", f"{s}.gross", colors[s], ":") for s in strategies] + \
        [("benchmark (equal weight)", "benchmark", "black", "-")]
    for label, key, color, style in curves:
        r = np.nan_to_num(d[key])
        with np.errstate(invalid="ignore", divide="ignore"):            # (a period losing 100% or more)
            equity = np.exp(np.cumsum(group * np.log1p(r)))
        ax.plot(when, equity, label=label, color=color, linestyle=style, lw=1.0 if style == ":" else 1.5)
        if style == "-":
            ax_dd.plot(when, equity / np.maximum.accumulate(np.maximum(equity, 1.0)) - 1, label=label, color=color)
    ax.set_ylabel("value of 1")
    ax.set_title(f"{result['signal']}: equity\n{_headline(result)}", fontsize=9)
    ax.legend(loc="best", fontsize=8)
    ax_dd.set_ylabel("drawdown")
    figs["equity"] = fig
    if "ic" not in result["signal_analysis"]:
        return figs                                            # --no-analysis: no IC, no quantiles
    fig = Figure(figsize=(10, 4))
    ax = fig.subplots()
    ic = d["rank_ic"]
    ax.plot(when, ic, lw=0.6, alpha=0.6, label="rank IC" + (f" (mean of {group} periods)" if group > 1 else ""))
    window = max(1, min(20, len(ic) // 10))
    rolling = np.convolve(np.nan_to_num(ic), np.ones(window) / window, mode="same")
    ax.plot(when, rolling, lw=1.5, label=f"rolling mean ({window} points)")
    ax.axhline(0, color="black", lw=0.5)
    ax.set_ylabel("rank IC (Spearman, per period)")
    summary = result["signal_analysis"]["rank_ic"]
    ax.set_title(f"rank IC one period ahead: mean {summary['mean']:.4f}, HAC t {_f(summary.get('hac_t'), 2)} "
                 f"({summary.get('hac_lags')} lags), {summary['periods']:,} periods")
    ax.legend(loc="best", fontsize=8)
    figs["ic"] = fig
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    q = result["signal_analysis"]["quantile_mean_return"]["1"]
    ax.bar(range(1, len(q) + 1), [v * 1e4 for v in q])
    ax.set_xlabel("signal quantile (1 = lowest)")
    ax.set_ylabel("mean next-period return (bps)")
    ax.set_title("mean return per quantile")
    figs["quantile_returns"] = fig
    return figs


def png_bytes(fig):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def write_tensorboard(directory, result, pictures):
    """Scalars of the report and the pictures as TensorBoard events (tensorboard's own writer)."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.summary.writer.event_file_writer import EventFileWriter
    writer = EventFileWriter(str(directory))
    values = []
    for s, book in result["portfolios"].items():
        for k in ("annual_return", "sharpe", "max_drawdown", "annual_volatility"):
            values.append(Summary.Value(tag=f"backtest/{s}/{k}", simple_value=_finite(book["net"][k])))
    for k in ("ic", "rank_ic") if "ic" in result["signal_analysis"] else ():
        values.append(Summary.Value(tag=f"signal/{k}_mean", simple_value=_finite(result["signal_analysis"][k]["mean"])))
    for name, data in pictures.items():
        from PIL import Image
        width, height = Image.open(io.BytesIO(data)).size
        values.append(Summary.Value(tag=f"backtest/{name}", image=Summary.Image(
            height=height, width=width, colorspace=4, encoded_image_string=data)))
    writer.add_event(Event(wall_time=time.time(), step=0, summary=Summary(value=values)))
    writer.close()


def _finite(v):
    return float(v) if v is not None and math.isfinite(v) else float("nan")


# What a backtest writes into its report folder: --overwrite replaces a folder holding only these.
OWNS = ("report.json", "periods.h5", "periods.csv", "positions.csv", "*.png", "tensorboard", "signals")


def write_all(work, result, *, plots=True, tensorboard=True):
    write_csv(work)
    write_positions(work, result)
    pictures = {}
    if plots or tensorboard:
        for name, fig in figures(work, result).items():
            pictures[name] = png_bytes(fig)
    if plots:
        for name, data in pictures.items():
            (work / f"{name}.png").write_bytes(data)
    if tensorboard:
        write_tensorboard(work / "tensorboard", result, pictures)
    result["outputs"] = sorted(p.name for p in work.iterdir() if p.name != "signals")


def _clean(obj):
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def write_json(path, result):
    clean = {k: v for k, v in result.items() if k != "names"}
    path.write_text(json.dumps(_clean(clean), indent=2) + "\n")


def _interval(pair, fmt):
    return "n/a" if not pair or any(v is None or not math.isfinite(v) for v in pair) else \
        f"[{fmt(pair[0])}, {fmt(pair[1])}]"


def _headline(result):
    """The first strategy's figures with their sample size and intervals (the PNG titles)."""
    name, book = next(iter(result["portfolios"].items()))
    net = book["net"]
    return (f"{name} net: annual {_pct(net['annual_return'])} {_interval(net.get('annual_return_ci95'), _pct)}, "
            f"Sharpe {_f(net['sharpe'], 2)} {_interval(net.get('sharpe_ci95'), lambda v: _f(v, 2))}, "
            f"PSR {_f(net.get('psr'), 2)}; {net['periods']:,} periods ({_f(net.get('years'), 2)} years)")


def summary_lines(result):
    """The report in a few lines for the terminal: every annualized figure with its periods and its 95%
    interval, the IC's t from HAC standard errors, and a warning when the record is under a year."""
    sa = result["signal_analysis"]
    lines = [f"signal {result['signal']}: {result['sessions']} sessions, periods {result['first_period']} .. "
             f"{result['last_period_end']} ({result['periods_per_year']:g} a year)"]
    lines += [f"  warning: {w}" for w in result.get("warnings", [])]
    scope = result.get("predictions_scope")
    if scope in ("train", "val"):
        lines.append(f"  note: these are predictions of the run's {scope} split, which "
                     + ("it was fitted on" if scope == "train" else "chose its best checkpoint")
                     + ": in-sample, not a test of the signal (predict --split test)")
    for name, b in result.get("portfolios", {}).items():
        if b["net"].get("ruined_at"):
            lines.append(f"  note: {name} lost everything on {b['net']['ruined_at'][:19]} (total return "
                         f"{b['net']['total_return']:.1%}); later periods are not compounded")
    if result.get("predictions_point_in_time") is False:
        lines.append("  note: an analog forecast from an IVF-PQ index trained on data after some of its queries: "
                     "not point-in-time (similar index --train-until, then query after that time)")
    if "ic" in sa:
        ic, rank = sa["ic"], sa["rank_ic"]
        lines.append(f"  IC {_f(ic['mean'])} (HAC t {_f(ic.get('hac_t'), 2)}), rank IC {_f(rank['mean'])} "
                     f"(HAC t {_f(rank.get('hac_t'), 2)}, {rank.get('hac_lags')} lags; ICIR {_f(rank['ir'], 3)}, positive "
                     f"{_f(rank['positive_share'], 3)}, {rank['periods']:,} periods), top-bottom "
                     f"{_f(sa['top_minus_bottom']['mean'] * 1e4, 2)} bps")
    rows = [(s, b["net"], b.get("information_ratio"), b.get("turnover_per_period")) for s, b in result["portfolios"].items()]
    rows += [(f"{s} (gross)", b["gross"], None, None) for s, b in result["portfolios"].items()]
    rows.append(("benchmark", result["benchmark"], None, None))
    width = max(len("strategy"), *(len(name) for name, *_ in rows))      # ("longshort (gross)" broke a fixed 12)
    cells = [(name, _pct(p["annual_return"]), _interval(p.get("annual_return_ci95"), _pct), _pct(p["annual_volatility"]),
              _f(p["sharpe"], 2), _interval(p.get("sharpe_ci95"), lambda v: _f(v, 2)), _f(p.get("psr"), 2),
              _pct(p["max_drawdown"]), _f(ir, 2), _f(turn, 3), f"{p['periods']:,}") for name, p, ir, turn in rows]
    header = ("strategy", "annual", "95% CI", "vol", "sharpe", "95% CI", "PSR", "max dd", "IR", "turnover", "periods")
    widths = [width] + [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header[1:], start=1)]
    for row in [header] + cells:
        lines.append("  " + " ".join(f"{row[0]:<{widths[0]}}" if i == 0 else f"{row[i]:>{widths[i]}}"
                                     for i in range(len(row))))
    dsr = {s: b["net"].get("dsr") for s, b in result["portfolios"].items()}
    if any(v is not None for v in dsr.values()):
        lines.append(f"  deflated Sharpe ({result['uncertainty']['trials']} configurations tried): "
                     + ", ".join(f"{s} {_f(v, 2)}" for s, v in dsr.items()))
    return lines


def _f(v, digits=4):
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def _pct(v):
    return "n/a" if v is None or not math.isfinite(v) else f"{100 * v:.2f}%"
