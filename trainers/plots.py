"""Forecasts against truth, as a picture: `predict --plot N` writes it as a PNG, and training adds
it to TensorBoard at each validation (output.plot_sessions). One panel per session: the first
target's true values and its step-1 forecasts, with the band of the lowest and highest quantile
when the run forecasts quantiles. matplotlib (Agg, no display) draws it.
"""

import collections
import dataclasses

import numpy as np

MAX_POINTS = 300            # windows per panel: the latest ones (a picture, not the data)


@dataclasses.dataclass
class Panel:
    session: str
    target: str
    x: np.ndarray           # (n,) times (datetime64) or row numbers
    truth: np.ndarray       # (n,) NaN where not known yet
    prediction: np.ndarray  # (n,)
    low: np.ndarray = None  # (n,) lowest quantile, or None
    high: np.ndarray = None
    band: str = ""          # e.g. "q0.1-q0.9"


def figure(panels, title=""):
    """A matplotlib Figure with one row per panel."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 2.4 * len(panels)), squeeze=False)
    for ax, p in zip(axes[:, 0], panels):
        if p.low is not None:
            ax.fill_between(p.x, p.low, p.high, color="tab:orange", alpha=0.25, linewidth=0, label=p.band)
        ax.plot(p.x, p.truth, color="black", linewidth=1.0, label="truth")
        ax.plot(p.x, p.prediction, color="tab:orange", linewidth=1.0, label="forecast",
                marker="o" if len(p.x) < 20 else None, markersize=3)
        ax.set_title(f"{p.session}: {p.target}", fontsize=9, loc="left")
        ax.tick_params(labelsize=8)
    axes[0, 0].legend(fontsize=8, loc="upper right")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def save_png(panels, path, title="", format="png"):
    from matplotlib import pyplot as plt
    fig = figure(panels, title)
    fig.savefig(path, dpi=100, format=format)
    plt.close(fig)


class ForecastSample:
    """The latest windows of a few sessions seen during one evaluation, for the figure: step 1 of
    the first target, by target row. A batch is copied to the host only when it holds one of them."""

    def __init__(self, sessions, names, target, levels=()):
        self.names = {int(i): names[int(i)] for i in sessions}
        self.target = target
        self.levels = list(levels)
        self.kept = {i: collections.deque(maxlen=MAX_POINTS) for i in self.names}

    @classmethod
    def for_split(cls, prepared, split, n_sessions, levels=()):
        """The first n_sessions sessions of `split` (block order), or None when there are none to draw."""
        ids = list(dict.fromkeys(prepared.blocks[split][:, 0].tolist()))[:n_sessions]
        if not ids:
            return None
        return cls(ids, [s.name for s in prepared.catalog.sessions], prepared.columns.target_names[0], levels)

    def add(self, session_ids, target_rows, point, truth, quantiles=None):
        """session_ids, target_rows (B,) numpy; point, truth (B, H, K) and quantiles (B, H, K, Q) tensors
        in original units, on any device."""
        picked = np.flatnonzero(np.isin(session_ids, list(self.kept)))
        if len(picked) == 0:
            return
        take = lambda t: t[picked, 0, 0].double().cpu().numpy()                   # noqa: E731
        low = high = None
        if quantiles is not None:
            low = quantiles[picked, 0, 0, 0].double().cpu().numpy()
            high = quantiles[picked, 0, 0, -1].double().cpu().numpy()
        values = [take(point), take(truth)]
        for j, i in enumerate(picked):
            self.kept[int(session_ids[i])].append(
                (int(target_rows[i]), values[0][j], values[1][j], None if low is None else low[j],
                 None if high is None else high[j]))

    def panels(self):
        out = []
        for i, kept in self.kept.items():
            if not kept:
                continue
            rows, pred, truth, low, high = (np.array(col, dtype=object) for col in zip(*kept))
            band = f"q{self.levels[0]:g}-q{self.levels[-1]:g}" if self.levels else ""
            out.append(Panel(self.names[i], self.target, rows.astype(np.int64), truth.astype(float),
                             pred.astype(float), low.astype(float) if self.levels else None,
                             high.astype(float) if self.levels else None, band))
        return out


def panels_from_file(path, n_sessions):
    """Panels of the first n_sessions sessions of a prediction file (data.predictions): each
    session's latest windows, step 1 of its first target; a file of one window per session
    (predict --latest) shows that window's H steps instead."""
    from data.predictions import read_attrs, read_predictions
    attrs = read_attrs(path)
    names = attrs["session_names"][:n_sessions]
    target = attrs["target_names"][0]
    levels = attrs.get("quantiles") or []
    frame = read_predictions(path, sessions=names)
    frame = frame[frame["target"] == target]
    panels = []
    for name in names:
        rows = frame[frame["session"] == name]
        if rows.empty:
            continue
        per_window = rows["input_end_row"].nunique() > 1
        if per_window:
            rows = rows[rows["horizon_step"] == 1].tail(MAX_POINTS)
        x = rows["target_time"] if "target_time" in rows and rows["target_time"].notna().all() else \
            (rows["input_end_row"] if per_window else rows["horizon_step"])
        low = high = None
        if levels:
            low, high = rows[f"q{levels[0]:g}"].to_numpy(), rows[f"q{levels[-1]:g}"].to_numpy()
        panels.append(Panel(name, target, x.to_numpy(), rows["truth"].to_numpy(), rows["prediction"].to_numpy(),
                            low, high, f"q{levels[0]:g}-q{levels[-1]:g}" if levels else ""))
    return panels
