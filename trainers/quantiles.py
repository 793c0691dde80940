"""Quantile forecasts (`model.quantiles`, `training.loss=quantile`): the pinball loss, the point
forecast among the quantiles, and streaming exact quantile metrics.

A model asked for Q quantiles of K targets outputs (B, H, K * Q); `by_quantile` views it as
(B, H, K, Q). The point forecast (what mse, mae, r2 score, and predict's `prediction`) is the
quantile nearest 0.5, the median when it is asked for.
"""

import torch


def by_quantile(out, n_quantiles):
    """(B, H, K * Q) -> (B, H, K, Q)."""
    return out.reshape(*out.shape[:-1], out.shape[-1] // n_quantiles, n_quantiles)


def point_index(quantiles):
    """Index of the quantile nearest 0.5."""
    return min(range(len(quantiles)), key=lambda i: abs(quantiles[i] - 0.5))


def point_forecast(out, quantiles):
    """The forecast mse/mae score: `out` itself, or with quantiles (B, H, K * Q) the one nearest 0.5."""
    if not quantiles:
        return out
    return by_quantile(out, len(quantiles))[..., point_index(quantiles)]          # (B, H, K)


def denormalize_quantiles(out, quantiles, normalizer, session_ids):
    """(B, H, K * Q) normalized -> (B, H, K, Q) in original units (a positive affine map per target,
    so the quantiles keep their order)."""
    q = by_quantile(out, len(quantiles)).movedim(-1, 1)                          # (B, Q, H, K)
    return normalizer.denormalize_targets(q, session_ids).movedim(1, -1)


def pinball_loss(out, y, quantiles, reduction="mean"):
    """Pinball (quantile) loss of out (B, H, K * Q) against y (B, H, K): for each quantile q,
    max(q * (y - p), (q - 1) * (y - p)). `mean` averages over every value and quantile; `sum` sums
    over values and averages over quantiles (so sum / (B * H * K) is the mean, like mse's)."""
    q = torch.as_tensor(quantiles, dtype=out.dtype, device=out.device)          # (Q,)
    diff = y.unsqueeze(-1) - by_quantile(out, len(quantiles))                  # (B, H, K, Q)
    loss = torch.maximum(q * diff, (q - 1) * diff)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum() / len(quantiles)
    raise ValueError(f"reduction {reduction!r}")


class QuantileMetrics:
    """Pinball loss, the coverage of the band between the lowest and highest quantile, and per
    quantile the share of targets at or below it (calibration: ~q when the quantile is right).
    Float64 sums, merged across ranks; exact (tests/test_metrics.py compares with numpy)."""

    def __init__(self, quantiles, device="cpu"):
        self.quantiles = list(quantiles)
        self.device = torch.device(device)
        z = lambda *shape: torch.zeros(shape, dtype=torch.float64, device=self.device)  # noqa: E731
        self._pinball, self._below, self._inside, self._n = z(len(quantiles)), z(len(quantiles)), z(), z()

    def update(self, pred, target):
        """pred (B, H, K, Q), target (B, H, K), both in the units to report."""
        p, y = pred.detach().double(), target.detach().double().unsqueeze(-1)  # (B, H, K, Q), (B, H, K, 1)
        q = torch.as_tensor(self.quantiles, dtype=torch.float64, device=p.device)
        diff = y - p
        self._pinball += torch.maximum(q * diff, (q - 1) * diff).reshape(-1, len(q)).sum(0)
        self._below += (y <= p).reshape(-1, len(q)).sum(0)
        self._inside += ((y >= p[..., :1]) & (y <= p[..., -1:])).sum()
        self._n += y.numel()

    def merge(self, other):
        for name in ("_pinball", "_below", "_inside", "_n"):
            setattr(self, name, getattr(self, name) + getattr(other, name).to(self.device))

    def compute(self):
        n = float(self._n)
        lo, hi = self.quantiles[0], self.quantiles[-1]
        return {"pinball": float(self._pinball.sum()) / n / len(self.quantiles),
                f"coverage_{lo:g}_{hi:g}": float(self._inside) / n,
                "fraction_below": {f"{q:g}": float(b) / n for q, b in zip(self.quantiles, self._below.tolist())}}
