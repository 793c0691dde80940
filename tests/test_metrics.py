"""Streaming metrics equal sklearn's on the full arrays (1e-6 relative)."""

import numpy as np
import pytest
import torch
from sklearn import metrics as sk

from trainers.metrics import ClassificationMetrics, RegressionMetrics


def batches(n, *shape, seed=0, offset=0.0):
    rng = np.random.default_rng(seed)
    y = rng.normal(offset, 2.0, (n,) + shape)
    p = 0.6 * y + rng.normal(0.3, 1.0, y.shape)
    return torch.tensor(p), torch.tensor(y)


@pytest.mark.parametrize("collect", [False, True])
@pytest.mark.parametrize("offset", [0.0, 1e4])   # a large mean: the moments must not lose digits
def test_regression_matches_sklearn(collect, offset):
    p, y = batches(5000, 3, 2, offset=offset)        # (N, H, K)
    m = RegressionMetrics(collect=collect)
    for i in range(0, 5000, 337):                   # uneven batches
        m.update(p[i:i + 337], y[i:i + 337])
    got = m.compute()
    P, Y = p.reshape(5000, -1).numpy(), y.reshape(5000, -1).numpy()
    want = {
        "mse": sk.mean_squared_error(Y, P), "mae": sk.mean_absolute_error(Y, P),
        "r2": sk.r2_score(Y, P), "pearson": np.corrcoef(P.ravel(), Y.ravel())[0, 1],
        "direction_acc": sk.accuracy_score(np.sign(Y.ravel()), np.sign(P.ravel())),
    }
    want["rmse"] = want["mse"] ** 0.5
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-6), key


@pytest.mark.parametrize("collect", [False, True])
def test_classification_matches_sklearn(collect):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 3000)
    logits = rng.normal(size=(3000, 4)) + np.eye(4)[labels] * 1.5
    m = ClassificationMetrics(4, collect=collect)
    for i in range(0, 3000, 250):
        m.update(torch.tensor(logits[i:i + 250]), torch.tensor(labels[i:i + 250]))
    got = m.compute()
    probs = torch.softmax(torch.tensor(logits), -1).numpy()
    assert got["accuracy"] == pytest.approx(sk.accuracy_score(labels, logits.argmax(1)), rel=1e-6)
    assert got["f1_macro"] == pytest.approx(sk.f1_score(labels, logits.argmax(1), average="macro"), rel=1e-6)
    assert got["cross_entropy"] == pytest.approx(sk.log_loss(labels, probs), rel=1e-6)


def test_online_metrics_hold_no_history():
    m = RegressionMetrics()
    p, y = batches(100, 1, 1)
    for _ in range(50):
        m.update(p, y)
    held = [v for v in vars(m).values() if isinstance(v, torch.Tensor)]
    assert m._kept == [] and all(t.numel() <= 1 for t in held)


@pytest.mark.parametrize("collect", [False, True])
def test_per_target_and_per_step_match_sklearn_on_their_slices(collect):
    p, y = batches(4000, 3, 2, seed=3, offset=50.0)        # (N, H=3, K=2)
    m = RegressionMetrics(collect=collect, target_names=["close", "volume"])
    for i in range(0, 4000, 611):
        m.update(p[i:i + 611], y[i:i + 611])
    got = m.compute()
    P, Y = p.numpy(), y.numpy()

    def want(pp, yy):
        return {"mse": sk.mean_squared_error(yy, pp), "mae": sk.mean_absolute_error(yy, pp), "r2": sk.r2_score(yy, pp),
                "direction_acc": float((np.sign(pp) == np.sign(yy)).mean())}
    for k, name in enumerate(["close", "volume"]):
        assert got["per_target"][name] == pytest.approx(want(P[:, :, k], Y[:, :, k]), rel=1e-6)
    for h in range(3):
        assert got["per_step"][str(h + 1)] == pytest.approx(want(P[:, h], Y[:, h]), rel=1e-6)


def test_quantile_metrics_and_loss_match_numpy():
    from trainers.quantiles import QuantileMetrics, pinball_loss
    rng = np.random.default_rng(5)
    levels = [0.1, 0.5, 0.9]
    y = rng.normal(3.0, 2.0, (3000, 2, 2))                                          # (N, H, K)
    center = y + rng.normal(0, 1.0, y.shape)
    q = np.stack([center - 1.28, center, center + 1.28], axis=-1)                    # (N, H, K, Q)
    halves = [QuantileMetrics(levels), QuantileMetrics(levels)]                     # two ranks' shares
    for i in range(0, 3000, 400):
        halves[(i // 400) % 2].update(torch.tensor(q[i:i + 400]), torch.tensor(y[i:i + 400]))
    halves[0].merge(halves[1])
    got = halves[0].compute()
    diff = y[..., None] - q
    pinball = np.maximum(np.array(levels) * diff, (np.array(levels) - 1) * diff)
    assert got["pinball"] == pytest.approx(pinball.mean(), rel=1e-6)
    assert got["coverage_0.1_0.9"] == pytest.approx(((y >= q[..., 0]) & (y <= q[..., 2])).mean(), rel=1e-6)
    for j, level in enumerate(levels):
        assert got["fraction_below"][f"{level:g}"] == pytest.approx((y <= q[..., j]).mean(), rel=1e-6)
    # The training loss is the same pinball, on (B, H, K * Q) outputs; `sum` / values = `mean`.
    out = torch.tensor(q.reshape(3000, 2, 6))
    assert float(pinball_loss(out, torch.tensor(y), levels)) == pytest.approx(pinball.mean(), rel=1e-9)
    assert float(pinball_loss(out, torch.tensor(y), levels, reduction="sum")) / y.size == pytest.approx(pinball.mean())
