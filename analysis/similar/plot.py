"""`similar query --plot`: each of the first queries with its neighbours, aligned at their end row
(x = 0) and z-normalized by their own window, and the `ahead` rows that followed each (right of 0)."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _path(windows, name, end_row, ahead):
    """(x, z) of a window of the first column and what followed it, scaled by the window's mean and std."""
    session = windows.catalog.session(name)
    L = windows.window.lookback
    start, stop = end_row - L + 1, min(session.n_rows, end_row + ahead + 1)
    values = session.read_column(windows.columns[0], start, stop)
    window = values[:L]
    std = window.std()
    z = (values - window.mean()) / (std if std > 0 else 1.0)
    return np.arange(start, stop) - end_row, z


def draw(shown, windows, cfg, path):
    n = max(1, len(shown))
    fig, axes = plt.subplots(n, 1, figsize=(9, 3.2 * n), squeeze=False)
    for ax, query in zip(axes[:, 0], shown):
        for j, nb in enumerate(query["neighbours"]):
            x, z = _path(windows, nb["session"], nb["end_row"], cfg.ahead)
            ax.plot(x, z, lw=0.9, alpha=0.6, color=plt.cm.tab10(j % 10),
                    label=f"{nb['session']} {nb['end_time'][:16]} d={nb['distance']:.2f}" if j < 5 else None)
        x, z = _path(windows, query["session"], query["end_row"], cfg.ahead)
        ax.plot(x, z, lw=2.2, color="black", label=f"query {query['session']} {query['end_time'][:16]}")
        ax.axvline(0, color="grey", lw=0.8, ls="--")
        mean = query["mean"]
        followed = query["followed"]
        ax.set_title(f"{query['session']} to {query['end_time'][:19]}: {query['found']} neighbours; what followed "
                     f"({cfg.ahead} rows): neighbours' mean {mean if mean is None else f'{mean:+.4f}'}, query "
                     f"{followed if followed is None else f'{followed:+.4f}'}", fontsize=9)
        ax.set_xlabel("rows from the window's end")
        ax.set_ylabel(f"{windows.columns[0]} (z, window scale)")
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=90)
    plt.close(fig)
