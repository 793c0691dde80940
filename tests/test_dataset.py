import numpy as np
import pytest
import torch

from config import DataConfig
from data.dataset import prepare_data
from data.splits import SplitSpec
from errors import InputError


def config(path, **kwargs):
    kwargs.setdefault("split", SplitSpec(fractions=(0.6, 0.2, 0.2)))
    kwargs.setdefault("normalize", "none")
    return DataConfig(paths=[path], **kwargs)


def test_windows_hold_the_right_rows(ramp_file):
    prepared = prepare_data(config(ramp_file, lookback=5, horizon=2, block_rows=40), progress=False)
    ds = prepared.dataset("val", return_ids=True)
    assert len(ds) == prepared.n_windows("val") > 0
    for i in (0, len(ds) // 2, len(ds) - 1):
        x, y, session, row = ds[i]
        assert x.shape == (5, 3) and y.shape == (2, 3)
        # ramp: value = 1000 * session + row + column / 10
        np.testing.assert_allclose(x[:, 0].numpy(), 1000 * session + np.arange(row, row + 5))
        np.testing.assert_allclose(y[:, 2].numpy(), 1000 * session + np.arange(row + 5, row + 7) + 0.2, rtol=1e-6)


def test_labels_belong_to_their_own_row(make_file):
    t = np.arange(200, dtype=np.float32)
    path = make_file({"a": (np.stack([t, -t], 1), (t * 10)[:, None])})
    prepared = prepare_data(config(path, lookback=4, horizon=2), progress=False)
    assert prepared.window.target_offset == 0
    x, y, _, row = prepared.dataset("train", return_ids=True)[7]
    np.testing.assert_array_equal(x[:, 0].numpy(), np.arange(row, row + 4))
    np.testing.assert_array_equal(y[:, 0].numpy(), 10 * np.arange(row + 3, row + 5))


def test_feature_and_target_column_choice(ramp_file):
    prepared = prepare_data(config(ramp_file, lookback=3, feature_columns=["c", "a"], target_columns=["b"]),
                            progress=False)
    x, y = prepared.dataset("train")[0]
    np.testing.assert_allclose(x[0].numpy(), [0.2, 0.0], atol=1e-6)
    np.testing.assert_allclose(y[0].numpy(), [3.1], rtol=1e-6)


def test_normalization_applied_to_items(ramp_file):
    prepared = prepare_data(config(ramp_file, lookback=3, normalize="global", normalize_exact=True), progress=False)
    x, _ = prepared.dataset("train")[0]
    stats = prepared.normalizer.features
    raw = prepared.catalog.sessions[0].read_rows(0, 3)
    np.testing.assert_allclose(x.numpy(), (raw - stats.mean) / stats.std, rtol=1e-5)


def test_dataloader_with_workers_reads_lazily(ramp_file):
    prepared = prepare_data(config(ramp_file, lookback=4), progress=False)
    ds = prepared.dataset("train", return_ids=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=64, shuffle=True, num_workers=2,
                                         generator=torch.Generator().manual_seed(0))
    seen = []
    for x, _, session, row in loader:
        np.testing.assert_allclose(x[:, 0, 0].numpy(), (1000 * session + row).numpy())
        seen.extend(zip(session.tolist(), row.tolist()))
    assert len(seen) == len(set(seen)) == len(ds)


def _nan_file(make_file):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 2)).astype(np.float32)
    x[50, 0] = np.nan
    x[51, 1] = np.inf
    x[:3, 1] = np.nan   # leading NaN: nothing to carry forward
    return make_file({"a": x}, feature_names=["p", "q"]), x


def test_nan_policy_error_names_session_and_row(make_file):
    path, _ = _nan_file(make_file)
    # Found while sampling the normalization statistics, before any training ...
    with pytest.raises(InputError, match=r"session 'a' features row 0 column 'q' is nan; .*nan_policy"):
        prepare_data(config(path, lookback=8, normalize="global", split=SplitSpec(fractions=(1.0, 0, 0))),
                     progress=False)
    # ... or by the check on every read.
    prepared = prepare_data(config(path, lookback=8, split=SplitSpec(fractions=(1.0, 0, 0))), progress=False)
    ds = prepared.dataset("train")
    with pytest.raises(InputError, match=r"session 'a' features row 50 column 'p' is nan"):
        ds[45]


def test_nan_policy_drop_leaves_out_windows_with_bad_rows(make_file):
    path, x = _nan_file(make_file)
    prepared = prepare_data(config(path, lookback=8, nan_policy="drop", split=SplitSpec(fractions=(1.0, 0, 0))),
                            progress=False)
    ds = prepared.dataset("train", return_ids=True)
    span = prepared.window.span
    bad = {0, 1, 2, 50, 51}
    expected = [r for r in range(0, 400 - span + 1) if not bad & set(range(r, r + span))]
    rows = [ds[i][3] for i in range(len(ds))]
    assert rows == expected
    assert all(torch.isfinite(ds[i][0]).all() for i in range(len(ds)))


def test_nan_policy_ffill_carries_last_value(make_file):
    path, x = _nan_file(make_file)
    prepared = prepare_data(config(path, lookback=8, nan_policy="ffill", split=SplitSpec(fractions=(1.0, 0, 0))),
                            progress=False)
    ds = prepared.dataset("train", return_ids=True)
    # Only windows touching the 3 leading rows (no earlier value) are dropped.
    assert [ds[i][3] for i in range(3)] == [3, 4, 5]
    # A window starting at 51 carries row 49's value into row 50 col 0... and row 50's into 51 col 1.
    i = [ds[j][3] for j in range(len(ds))].index(51)
    xw = ds[i][0].numpy()
    assert xw[0, 1] == x[50, 1]          # row 51 col q was inf -> row 50's value
    j = [ds[k][3] for k in range(len(ds))].index(50)
    xw = ds[j][0].numpy()
    assert xw[0, 0] == x[49, 0]          # row 50 col p was nan -> row 49's value (read from before the window)
    assert np.isfinite(xw).all()


def test_messages_say_what_the_data_really_is(tmp_path):
    """float64/string timestamps were 'not numeric; float32 is best'; 1e300 in float64 features 'is inf'."""
    import h5py

    from data.catalog import open_catalog
    from data.layout import write_session
    path = tmp_path / "t.h5"
    with h5py.File(path, "w") as f:
        write_session(f, "s", np.ones((10, 2)), feature_names=["a", "b"])
        f["s"].create_dataset("timestamps", data=np.arange(10, dtype=np.float64))
    with pytest.raises(InputError, match="store times as int64 nanoseconds since 1970"):
        open_catalog([str(path)])
    feats = np.ones((400, 2))
    feats[30, 1] = 1e300
    with h5py.File(tmp_path / "big.h5", "w") as f:
        write_session(f, "s", feats, feature_names=["a", "b"])
    from config import load_config
    from data.dataset import prepare_data
    config = load_config("quick_demo", overrides=[f"data.paths=[{tmp_path / 'big.h5'}]", "data.lookback=4",
                                                  "data.normalize=none", "data.target_columns=[a]"])
    with pytest.raises(InputError, match=r"column 'b' is 1e\+300 in the file, beyond float32's range"):
        prepared = prepare_data(config.data, progress=False)
        for _ in prepared.dataset("train"):
            pass


def test_bf16_on_a_cpu_without_it_is_refused(monkeypatch):
    import trainers.setup as trainer_module  # (device and AMP set-up moved out of trainer.py)
    monkeypatch.setattr(trainer_module, "cpu_has_bf16", lambda: False)
    with pytest.raises(InputError, match="this CPU has no native bf16"):
        trainer_module.amp_setup("bf16", torch.device("cpu"))
    assert trainer_module.amp_setup("auto", torch.device("cpu"))[2] == "off"


def test_unlabelled_last_rows_are_not_counted_as_gaps(tmp_path, caplog):
    """'515 rows with NaN/Inf in 504 sessions': 504 were the last rows whose next-day return is not known yet."""
    import logging

    import pandas as pd

    from data.convert import convert
    frames = []
    for i in range(5):
        close = np.linspace(10, 20, 60) + i
        if i == 2:
            close[20] = np.nan                           # one real gap
        frames.append(pd.DataFrame({"ticker": f"T{i}", "date": pd.bdate_range("2020-01-01", periods=60),
                                    "close": close}))
    pd.concat(frames).to_csv(tmp_path / "p.csv", index=False)
    convert([str(tmp_path / "p.csv")], str(tmp_path / "p.h5"), session_column="ticker", target_from="close",
            target_transform="next_log_return")
    with caplog.at_level(logging.WARNING, logger="h5series"):
        prepare_data(DataConfig(paths=[str(tmp_path / "p.h5")], lookback=5, nan_policy="drop",
                                split=SplitSpec(fractions=(0.6, 0.2, 0.2))), progress=False)
    lines = [r.getMessage() for r in caplog.records if "NaN/Inf" in r.getMessage()]
    # the NaN close (row 20) and the return into it (row 19): 2 rows, 1 session
    assert lines == ["nan_policy=drop: 2 rows with NaN/Inf in 1 sessions are kept out of every window"], lines
