import numpy as np

import data.demo as demo
from data.catalog import open_catalog


def test_demo_shapes_names_and_time(tmp_path):
    demo.generate(tmp_path / "d.h5", sessions=3, rows=1000, features=6, progress=False)
    catalog = open_catalog(tmp_path / "d.h5")
    assert [s.name for s in catalog.sessions] == ["stock_0000", "stock_0001", "stock_0002"]
    assert catalog.feature_names == ["ret", "abs_ret", "log_volume", "signal_0", "signal_1", "signal_2"]
    s = catalog.sessions[1]
    assert s.n_rows == 1000 and np.isfinite(s.read_rows(0, 1000)).all()
    assert (np.diff(s.read_timestamps(0, 1000)) == demo.MINUTE_NS).all()


def test_target_is_the_next_bars_return_across_pieces(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "PIECE_ROWS", 64)  # several pieces: the carry between them must hold
    demo.generate(tmp_path / "d.h5", sessions=1, rows=300, features=4, progress=False)
    s = open_catalog(tmp_path / "d.h5").sessions[0]
    ret = s.read_rows(0, 300)[:, 0].astype(np.float64)      # return / base_vol
    target = s.read_targets(0, 300)[:, 0].astype(np.float64)
    ratio = target[:-1] / ret[1:]
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-4)  # target[t] = base_vol * ret[t + 1]


def test_signal_features_predict_the_target(tmp_path):
    demo.generate(tmp_path / "d.h5", sessions=1, rows=50_000, features=4, progress=False)
    s = open_catalog(tmp_path / "d.h5").sessions[0]
    x, y = s.read_rows(0, 50_000), s.read_targets(0, 50_000)[:, 0]
    assert np.corrcoef(x[:, 3], y)[0, 1] > 0.02   # learnable, but small, as in markets
