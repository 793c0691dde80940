"""Shared fixtures: real HDF5 files written to pytest's tmp_path, and the shared datasets."""

import logging
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
