"""Prices -> returns for a panel block, the one place that defines a period's return.

Prices are carried forward from the past only (a halted or missing bar keeps its last
traded price, as alphalens-reloaded and vectorbt value it); nothing is filled from the
future, and a session has no price before its first bar. The forward return of row t over
j periods is carried(t + j) / carried(t) - 1: what a position set with information up to
t earns by t + j (alphalens' cumulative forward return).
"""

import numpy as np


class ForwardFill:
    """Carries each session's last price from block to block."""

    def __init__(self, n):
        self.last = np.full(n, np.nan)

    def __call__(self, price, own):
        """(T, N) prices with NaN gaps -> carried prices; remembers row own - 1 for the next block."""
        rows = np.arange(len(price))[:, None]
        source = np.where(np.isfinite(price), rows, -1)
        np.maximum.accumulate(source, axis=0, out=source)
        carried = np.take_along_axis(price, np.maximum(source, 0), axis=0)
        carried = np.where(source >= 0, carried, self.last)            # before the block's first bar
        if own:
            self.last = carried[own - 1].copy()
        return carried


def forward_returns(carried, own, periods):
    """{j: (own, N) return from row t to row t + j} for each j in `periods`; NaN where t + j is past
    the rows given (the end of the data) or a session has no price at t yet."""
    out = {}
    for j in periods:
        ret = np.full((own, carried.shape[1]), np.nan)
        m = min(own, len(carried) - j)
        if m > 0:
            with np.errstate(invalid="ignore", divide="ignore"):
                ret[:m] = carried[j:j + m] / carried[:m] - 1.0
        out[j] = ret
    return out
