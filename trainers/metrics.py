"""Streaming (online) metrics: exact, float64, O(1) memory, updated on the device.

Regression: MSE, RMSE, MAE, R2 (sklearn's uniform average over the H x K outputs),
Pearson correlation (over all values), direction accuracy (sign of prediction ==
sign of target); and MSE, MAE, R2 and direction accuracy per target (over its H steps)
and per horizon step (over the K targets), from per-output sums. Moments are merged batch by batch with Chan et al.'s parallel
update, which stays accurate where naive sums of squares lose digits.
Classification: accuracy, macro F1 (from a streaming confusion matrix), cross-entropy.

`collect=True` keeps every prediction instead (the old collect-everything path,
for comparison); both give the same numbers (tests/test_metrics.py).
Updates never sync with the host; `compute()` does, once.
"""

import numpy as np
import torch


class _Moments:
    """Count, means, centered second moments and co-moment of (target, prediction) per column."""

    def __init__(self, width, device):
        z = lambda: torch.zeros(width, dtype=torch.float64, device=device)  # noqa: E731
        self.n = torch.zeros((), dtype=torch.float64, device=device)
        self.mean_y, self.mean_p, self.m2_y, self.m2_p, self.c_py = z(), z(), z(), z(), z()

    def update(self, y, p):                     # (N, M) float64
        n_b = torch.tensor(float(y.shape[0]), dtype=torch.float64, device=y.device)
        mean_y, mean_p = y.mean(0), p.mean(0)
        dy, dp = y - mean_y, p - mean_p
        m2_y, m2_p, c_py = (dy * dy).sum(0), (dp * dp).sum(0), (dy * dp).sum(0)
        n = self.n + n_b
        delta_y, delta_p = mean_y - self.mean_y, mean_p - self.mean_p
        w = self.n * n_b / n
        self.m2_y += m2_y + delta_y * delta_y * w
        self.m2_p += m2_p + delta_p * delta_p * w
        self.c_py += c_py + delta_y * delta_p * w
        self.mean_y += delta_y * n_b / n
        self.mean_p += delta_p * n_b / n
        self.n = n

    def merge(self, other):
        """Fold in moments of other data (Chan et al.'s pairwise combination)."""
        n_a, n_b = self.n, other.n.to(self.n.device)
        n = n_a + n_b
        if float(n_b) == 0:
            return
        delta_y, delta_p = other.mean_y.to(n.device) - self.mean_y, other.mean_p.to(n.device) - self.mean_p
        w = n_a * n_b / n
        self.m2_y += other.m2_y.to(n.device) + delta_y * delta_y * w
        self.m2_p += other.m2_p.to(n.device) + delta_p * delta_p * w
        self.c_py += other.c_py.to(n.device) + delta_y * delta_p * w
        self.mean_y += delta_y * n_b / n
        self.mean_p += delta_p * n_b / n
        self.n = n


class RegressionMetrics:
    names = ("mse", "rmse", "mae", "r2", "pearson", "direction_acc")

    def __init__(self, device="cpu", collect=False, target_names=None):
        """target_names: the K names of the (B, H, K) targets, for the per-target and per-step metrics
        (None: pooled metrics only)."""
        self.device = torch.device(device)
        self.collect = collect
        self.target_names = list(target_names) if target_names is not None else None
        self.reset()

    def reset(self):
        self._cols = None
        self._flat = None
        self._sse = self._sae = self._hits = None
        self._kept = []

    def update(self, pred, target):
        """pred, target: (B, H, K) in the units to report."""
        if self.collect:
            self._kept.append((pred.detach().double().cpu(), target.detach().double().cpu()))
            return
        p = pred.detach().to(torch.float64).reshape(pred.shape[0], -1)   # (B, M)
        y = target.detach().to(torch.float64).reshape(target.shape[0], -1)
        if self._cols is None:
            self._start(y.shape[1], p.device)
        err = p - y
        # Per output (B, M) -> (M,): the pooled sums are their totals.
        self._sse += (err * err).sum(0)
        self._sae += err.abs().sum(0)
        self._hits += (torch.sign(p) == torch.sign(y)).sum(0)
        self._cols.update(y, p)
        self._flat.update(y.reshape(-1, 1), p.reshape(-1, 1))

    def merge(self, other):
        """Fold in another instance's data (another rank's): as if one had seen both."""
        if self.collect:
            self._kept.extend(other._kept)
            return
        if other._cols is None:
            return
        if self._cols is None:
            self._start(len(other._cols.mean_y), self.device)
        self._cols.merge(other._cols)
        self._flat.merge(other._flat)
        self._sse += other._sse.to(self._sse.device)
        self._sae += other._sae.to(self._sae.device)
        self._hits += other._hits.to(self._hits.device)

    def _start(self, width, device):
        self._cols = _Moments(width, device)
        self._flat = _Moments(1, device)
        zeros = lambda: torch.zeros(width, dtype=torch.float64, device=device)  # noqa: E731
        self._sse, self._sae, self._hits = zeros(), zeros(), zeros()

    def compute(self):
        if self.collect:
            return _regression_from_arrays(*self._gathered(), self.target_names)
        if self._cols is None:
            return {name: float("nan") for name in self.names}
        count = float(self._flat.n) * 1.0
        mse = float(self._sse.sum()) / count
        c = self._cols
        # Per-column squared error from the moments: centered parts plus the mean offset.
        sse_cols = c.m2_y - 2 * c.c_py + c.m2_p + c.n * (c.mean_p - c.mean_y) ** 2
        r2_cols = 1.0 - sse_cols / c.m2_y
        pearson = self._flat.c_py / torch.sqrt(self._flat.m2_y * self._flat.m2_p)
        out = {"mse": mse, "rmse": mse ** 0.5, "mae": float(self._sae.sum()) / count,
               "r2": float(r2_cols.mean()), "pearson": float(pearson[0]),
               "direction_acc": float(self._hits.sum()) / count}
        out.update(_by_target_and_step(float(c.n), self._sse.cpu().numpy(), self._sae.cpu().numpy(),
                                       self._hits.cpu().numpy(), r2_cols.cpu().numpy(), self.target_names))
        return out

    def _gathered(self):
        p = torch.cat([k[0] for k in self._kept]).reshape(-1, int(np.prod(self._kept[0][0].shape[1:])))
        y = torch.cat([k[1] for k in self._kept]).reshape(p.shape)
        return p.numpy(), y.numpy()


def _regression_from_arrays(p, y, target_names=None):
    """The same metrics from full arrays (the collect path): p, y (N, M) float64."""
    err = p - y
    sst = ((y - y.mean(0)) ** 2).sum(0)
    mse = float((err ** 2).mean())
    r2_cols = 1 - (err ** 2).sum(0) / sst
    out = {"mse": mse, "rmse": mse ** 0.5, "mae": float(np.abs(err).mean()),
           "r2": float(np.mean(r2_cols)),
           "pearson": float(np.corrcoef(p.ravel(), y.ravel())[0, 1]),
           "direction_acc": float((np.sign(p) == np.sign(y)).mean())}
    out.update(_by_target_and_step(len(p), (err ** 2).sum(0), np.abs(err).sum(0),
                                   (np.sign(p) == np.sign(y)).sum(0), r2_cols, target_names))
    return out


def _by_target_and_step(n, sse, sae, hits, r2, target_names):
    """{"per_target": {name: metrics}, "per_step": {"1": metrics, ...}} from per-output sums (M = H x K,
    outputs in (H, K) order) over n windows; R2 the uniform average of the group's outputs."""
    if target_names is None:
        return {}
    k = len(target_names)
    shape = (len(sse) // k, k)                                   # (H, K)
    sse, sae, hits, r2 = (np.asarray(a, np.float64).reshape(shape) for a in (sse, sae, hits, r2))

    def group(axis, i):
        pick = (slice(None), i) if axis == 1 else (i, slice(None))
        count = n * (shape[0] if axis == 1 else shape[1])
        return {"mse": float(sse[pick].sum()) / count, "mae": float(sae[pick].sum()) / count,
                "r2": float(r2[pick].mean()), "direction_acc": float(hits[pick].sum()) / count}
    return {"per_target": {name: group(1, j) for j, name in enumerate(target_names)},
            "per_step": {str(h + 1): group(0, h) for h in range(shape[0])}}


class ClassificationMetrics:
    names = ("accuracy", "f1_macro", "cross_entropy")

    def __init__(self, n_classes, device="cpu", collect=False):
        self.n_classes = n_classes
        self.device = torch.device(device)
        self.collect = collect
        self.reset()

    def reset(self):
        self._confusion = torch.zeros((self.n_classes, self.n_classes), dtype=torch.float64, device=self.device)
        self._nll = torch.zeros((), dtype=torch.float64, device=self.device)
        self._kept = []

    def update(self, logits, labels):
        """logits (B, C), labels (B,) int."""
        logits, labels = logits.detach(), labels.detach().reshape(-1).long()
        if self.collect:
            self._kept.append((logits.double().cpu(), labels.cpu()))
            return
        self._nll += torch.nn.functional.cross_entropy(logits.double(), labels, reduction="sum")
        pred = logits.argmax(-1)
        flat = labels * self.n_classes + pred
        self._confusion += torch.bincount(flat, minlength=self.n_classes ** 2).reshape(
            self.n_classes, self.n_classes).to(torch.float64)

    def merge(self, other):
        """Fold in another instance's data (another rank's)."""
        self._kept.extend(other._kept)
        self._confusion += other._confusion.to(self._confusion.device)
        self._nll += other._nll.to(self._nll.device)

    def compute(self):
        if self.collect:
            logits = torch.cat([k[0] for k in self._kept])
            labels = torch.cat([k[1] for k in self._kept])
            self.collect = False
            self.reset()
            self.update(logits, labels)
            self.collect = True
        conf = self._confusion.cpu().numpy()
        total = conf.sum()
        tp = np.diag(conf)
        predicted, actual = conf.sum(0), conf.sum(1)
        present = (predicted + actual) > 0   # sklearn's macro F1 averages the labels that occur
        f1 = np.where(predicted + actual > 0, 2 * tp / np.maximum(predicted + actual, 1), 0.0)
        return {"accuracy": float(tp.sum() / total), "f1_macro": float(f1[present].mean()),
                "cross_entropy": float(self._nll) / total}
