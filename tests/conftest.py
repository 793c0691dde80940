"""Shared fixtures: real HDF5 files written to pytest's tmp_path, and the shared datasets."""

import logging
import os
import signal
from pathlib import Path

import h5py
import numpy as np
import pytest

from data.layout import write_session

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
ETTH1 = DATASETS / "ett" / "ETTh1.csv"
STOCKS = DATASETS / "stocks" / "individual_stocks_5yr"

needs_etth1 = pytest.mark.skipif(not ETTH1.exists(), reason=f"{ETTH1} not present")
needs_stocks = pytest.mark.skipif(not STOCKS.exists(), reason=f"{STOCKS} not present")


def write_file(path, sessions, **kwargs):
    """sessions: {name: features array} or {name: (features, targets)}; returns path."""
    with h5py.File(path, "w") as f:
        for name, value in sessions.items():
            feats, targs = value if isinstance(value, tuple) else (value, None)
            write_session(f, name, feats, targs, **kwargs)
    return str(path)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def make_file(tmp_path):
    """make_file(sessions, name="data.h5", **write_session kwargs) -> path."""
    def make(sessions, name="data.h5", **kwargs):
        return write_file(tmp_path / name, sessions, **kwargs)
    return make


@pytest.fixture
def ramp_file(make_file):
    """3 sessions whose feature values encode (session, row): x[t, j] = 1000 * s + t + j / 10."""
    sessions = {}
    for s, n in enumerate((500, 700, 300)):
        t = np.arange(n, dtype=np.float64)[:, None]
        sessions[f"s{s}"] = (1000 * s + t + np.arange(3)[None, :] / 10).astype(np.float32)
    return make_file(sessions, feature_names=["a", "b", "c"])


@pytest.fixture(autouse=True)
def _h5series_logs(caplog):
    caplog.set_level(logging.INFO, logger="h5series")


# --- small training runs (tests/test_trainer.py, tests/test_cuda.py) ------------------------------

@pytest.fixture(scope="module")
def demo_path(tmp_path_factory):
    from data.demo import generate
    path = tmp_path_factory.mktemp("demo") / "demo.h5"
    generate(path, sessions=4, rows=3000, features=4, progress=False)
    return path


def small_config(demo_path, tmp_path, *extra):
    """A GRU of 8 units, 2 epochs of 12 steps on the demo file: seconds on a CPU."""
    from config import load_config
    overrides = [f"data.paths=[{demo_path}]", "data.lookback=16", "data.block_rows=512",
                 "model.name=gru", "model.gru.hidden_size=8", "model.gru.num_layers=1",
                 "training.epochs=2", "training.max_steps_per_epoch=12", "training.batch_size=64",
                 "training.warmup_steps=2", "training.log_every_steps=4", "training.num_workers=0",
                 f"output.runs_dir={tmp_path}", *extra]
    return load_config("quick_demo", overrides=overrides)


def flat_metrics(metrics, prefix=""):
    """{"per_target/close/mse": ...}: a metrics dict with its nested parts as paths (pytest.approx
    compares flat mappings only)."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out.update(flat_metrics(value, f"{prefix}{key}/"))
        else:
            out[prefix + key] = value
    return out


def assert_metrics_close(got, want, rel):
    """Two metrics dicts: the same keys, numbers equal to `rel`, everything else ('best', epochs as
    text) exactly equal. pytest.approx over a mapping holding a string raises TypeError since pytest 9."""
    import numbers
    got, want = flat_metrics(got), flat_metrics(want)
    assert sorted(got) == sorted(want)
    is_number = lambda v: isinstance(v, numbers.Number) and not isinstance(v, bool)  # noqa: E731
    numeric = [k for k in want if is_number(want[k])]
    assert {k: got[k] for k in numeric} == pytest.approx({k: want[k] for k in numeric}, rel=rel)
    assert {k: got[k] for k in want if k not in numeric} == {k: want[k] for k in want if k not in numeric}


def at_step(step, action):
    """A Trainer._optimizer_step that calls `action()` right after the run reaches `step`."""
    from trainers.trainer import Trainer
    original = Trainer._optimizer_step

    def step_then_act(self, loss, batch):
        stepped = original(self, loss, batch)
        if self.step == step:
            action()
        return stepped
    return step_then_act


def interrupting(step, signum=signal.SIGTERM):
    """at_step sending this process `signum` (handled: the trainer finishes the step, saves `last`, returns)."""
    return at_step(step, lambda: os.kill(os.getpid(), signum))


def assert_same_weights(run_a, run_b):
    """The two runs' `last` checkpoints hold the same weights, bit for bit."""
    import torch
    a = torch.load(Path(run_a) / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(Path(run_b) / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
