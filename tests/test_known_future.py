"""Known-future inputs (data.known_future_columns; issue 11, part 4): read at the rows the targets
describe, and nothing else from after the input window reaches the model."""

import h5py
import numpy as np
import pytest
import torch

import main
from config import load_config
from data import layout
from data.catalog import open_catalog, write_index
from data.dataloader import LoaderConfig, build_loader
from data.dataset import prepare_data
from tests.conftest import small_config
from trainers import run as run_module
from trainers.predict import predict

ROWS = 400


def write(path, calendar, other, lead=1):
    """Two sessions: features [calendar (known ahead), other (not)], a target whose row t describes
    row t + lead (as convert's next_* targets), the last row without one."""
    with h5py.File(path, "w") as f:
        for s in range(2):
            feats = np.stack([calendar[s], other[s]], axis=1).astype(np.float32)
            y = np.sin(np.arange(ROWS) / 7.0 + s)[:, None].astype(np.float32)
            y[-1] = np.nan
            w = layout.SessionWriter(f, f"s{s}", ["calendar", "other"], ["y"], with_timestamps=True)
            w.append(feats, y, np.arange(ROWS, dtype=np.int64) * 60_000_000_000)
            w.set_attrs(**{layout.ATTR_LABELLED_ROWS: ROWS - 1, layout.ATTR_TARGET_LEAD: lead})
            w.close()
    write_index(path)
    return path


def base_arrays():
    t = np.arange(ROWS, dtype=np.float64)
    calendar = [1000 * s + t for s in range(2)]            # value = 1000 * session + row: where it was read
    other = [np.cos(t / 5 + s) for s in range(2)]
    return calendar, other


def batches(path, horizon=3):
    config = load_config("quick_demo", overrides=[
        f"data.paths=[{path}]", "data.lookback=8", f"data.horizon={horizon}", "data.normalize=none",
        "data.known_future_columns=[calendar]", "data.split.fractions=[0.6,0.2,0.2]"])
    prepared = prepare_data(config.data, progress=False)
    loader = build_loader(prepared, "train", LoaderConfig(batch_size=32), shuffle=False, return_ids=True)
    return prepared, list(loader)


def test_future_values_are_the_known_column_at_the_rows_the_targets_describe(tmp_path):
    prepared, got = batches(write(tmp_path / "a.h5", *base_arrays()))
    assert prepared.window.covariate_rows == 1
    for batch in got:
        rows = prepared.window.dated_rows(batch.row.numpy(), prepared.target_lead)       # (B, H)
        expected = 1000 * batch.session.numpy()[:, None] + rows                            # calendar value there
        np.testing.assert_array_equal(batch.future[:, :, 0].numpy(), expected)
        assert batch.future.shape[1:] == (3, 1)


def test_no_future_value_of_another_column_reaches_the_model(tmp_path):
    calendar, other = base_arrays()
    _, base = batches(write(tmp_path / "base.h5", calendar, other))
    # Every value of `other` changed: what the model gets (x, future) must not move past each input end.
    changed_other = [o + 100.0 for o in other]
    _, moved = batches(write(tmp_path / "other.h5", calendar, changed_other))
    for a, b in zip(base, moved):
        np.testing.assert_array_equal(a.future.numpy(), b.future.numpy())
        ends = a.row.numpy() + 7                      # last input row of each window
        # x differs only through rows the window may see (all of its inputs changed by +100 here)
        np.testing.assert_allclose(b.x[:, :, 1].numpy() - a.x[:, :, 1].numpy(), 100.0, rtol=1e-5)
        assert (ends < ROWS - 1).all()
    # The known column changed after some row: the futures that reach past it move, nothing else.
    shifted = [c + np.where(np.arange(ROWS) > 150, 5.0, 0.0) for c in calendar]
    prepared, late = batches(write(tmp_path / "late.h5", shifted, other))
    for a, b in zip(base, late):
        rows = prepared.window.dated_rows(a.row.numpy(), prepared.target_lead)
        np.testing.assert_array_equal(b.future[:, :, 0].numpy() - a.future[:, :, 0].numpy(), np.where(rows > 150, 5.0, 0.0))
        x_rows = a.row.numpy()[:, None] + np.arange(8)
        np.testing.assert_array_equal(b.x[:, :, 0].numpy() - a.x[:, :, 0].numpy(), np.where(x_rows > 150, 5.0, 0.0))


@pytest.mark.parametrize("model", ["gru", "dlinear"])
def test_a_run_with_known_future_inputs_trains_and_predicts(tmp_path, model):
    path = write(tmp_path / "a.h5", *base_arrays())
    config = small_config(path, tmp_path, "data.lookback=8", "data.horizon=2", f"model.name={model}",
                          "data.known_future_columns=[calendar]", "training.epochs=1", "output.tensorboard=false")
    result = run_module.train(config, tmp_path / "run")["test"]
    predict(tmp_path / "run", tmp_path / "p.h5", "test")
    from data.predictions import read_predictions
    frame = read_predictions(tmp_path / "p.h5")
    mse = np.mean((frame["prediction"].to_numpy(np.float64) - frame["truth"].to_numpy(np.float64)) ** 2)
    assert mse == pytest.approx(result["mse"], rel=1e-5)
    # The future values change the forecast (they reach the model).
    run = run_module.load_run(tmp_path / "run")
    x = torch.zeros(2, 8, 2)
    future = torch.tensor([[[0.0], [0.0]], [[3.0], [3.0]]])
    with torch.no_grad():
        out = run.model(x, future=future)
    assert not torch.allclose(out[0], out[1])


def test_known_future_mistakes_are_one_line(tmp_path, demo_path, capsys):
    path = write(tmp_path / "a.h5", *base_arrays())
    cases = [(["data.known_future_columns=[holiday]"], "data.known_future_columns: 'holiday' is not one of the "
                                                       "model's inputs"),
             (["data.known_future_columns=[calendar]", "model.name=patchtst"],
              "data.known_future_columns is not supported by patchtst")]
    for overrides, message in cases:
        args = ["train", "--profile", "quick_demo", f"data.paths=[{path}]", "data.lookback=8",
                "training.num_workers=0", *overrides, "--run-dir", str(tmp_path / "bad")]
        assert main.main(args) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    config = small_config(path, tmp_path, "data.lookback=8", "data.known_future_columns=[calendar]",
                          "training.epochs=1", "output.tensorboard=false")
    run_module.train(config, tmp_path / "run")
    assert main.main(["predict", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "p.h5"), "--latest"]) == 2
    # Its data ends at the file's end: the known values of the next rows are not there.
    assert "--latest needs the values of ['calendar'] for the 1 step(s) after its last complete row 399" \
        in capsys.readouterr().err


def test_latest_forecasts_from_the_last_complete_row_with_the_known_values_ahead(tmp_path):
    # A CSV whose last row is tomorrow: its weekday is known, its prices are not yet.
    import pandas as pd

    from data.convert import convert
    from data.predictions import read_predictions
    rng = np.random.default_rng(0)
    dates = pd.bdate_range("2018-01-02", periods=201)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, 201)))
    frame = pd.DataFrame({"date": dates, "weekday": dates.day_of_week.astype(float), "close": close})
    frame.loc[200, "close"] = np.nan
    frame.to_csv(tmp_path / "X.csv", index=False)
    convert([tmp_path / "X.csv"], tmp_path / "x.h5", target_from="close", target_transform="next_log_return")
    session = open_catalog(tmp_path / "x.h5").sessions[0]
    assert (session.n_rows, session.labelled_rows) == (201, 199)    # the last day and tomorrow wait for theirs
    config = small_config(tmp_path / "x.h5", tmp_path, "data.lookback=10", "data.known_future_columns=[weekday]",
                          "training.epochs=1", "output.tensorboard=false")
    run_module.train(config, tmp_path / "run")                     # nan_policy=error: no missing value trained on
    predict(tmp_path / "run", tmp_path / "next.h5", latest=True)
    row = read_predictions(tmp_path / "next.h5").iloc[0]
    assert row["input_end_row"] == 199 and row["input_end_time"] == dates[199]   # the last close
    assert row["target_time"] == dates[200] and np.isnan(row["truth"])          # dated tomorrow, known ahead
