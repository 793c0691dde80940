"""A learned vector per session (model.session_embedding; issue 11, part 4): matched to sessions by
name wherever a run is used, the 'unknown' row for sessions it never saw."""

import numpy as np
import pytest
import torch

import main
from data.catalog import open_catalog
from data.predictions import read_predictions
from tests.conftest import small_config, write_file
from trainers import run as run_module
from trainers.predict import predict


@pytest.mark.parametrize("model", ["gru", "dlinear"])
def test_a_session_embedding_trains_and_scores_the_same_everywhere(demo_path, tmp_path, model):
    config = small_config(demo_path, tmp_path, f"model.name={model}", "model.session_embedding=3",
                          "training.epochs=1", "output.tensorboard=false")
    result = run_module.train(config, tmp_path / "run")["test"]
    state = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)
    names = [s.name for s in open_catalog(demo_path).sessions]
    assert state["session_vocabulary"] == names
    # predict feeds each window its session's code as training and evaluate do: the same mse.
    predict(tmp_path / "run", tmp_path / "p.h5", "test")
    frame = read_predictions(tmp_path / "p.h5")
    mse = np.mean((frame["prediction"].to_numpy(np.float64) - frame["truth"].to_numpy(np.float64)) ** 2)
    assert mse == pytest.approx(result["mse"], rel=1e-5)
    # The session matters: one window with the 'unknown' code and the four sessions' codes, five forecasts.
    run = run_module.load_run(tmp_path / "run")
    x = torch.randn(1, 16, 4).expand(5, -1, -1)
    with torch.no_grad():
        out = run.model(x, session=torch.arange(5))
    assert len({round(float(v), 7) for v in out.reshape(5, -1)[:, 0]}) == 5


def test_sessions_are_matched_by_name_and_new_ones_get_the_unknown_row(demo_path, tmp_path, rng):
    config = small_config(demo_path, tmp_path, "model.session_embedding=2", "training.epochs=1",
                          "output.tensorboard=false")
    run_module.train(config, tmp_path / "run")
    run = run_module.load_run(tmp_path / "run")
    other = write_file(tmp_path / "new.h5", {
        name: (rng.normal(size=(300, 4)).astype(np.float32), rng.normal(0, 1e-3, (300, 1)).astype(np.float32))
        for name in ("NEW", "stock_0002")},
        feature_names=["ret", "abs_ret", "log_volume", "signal_0"], target_names=["next_log_return"])
    codes = run.session_codes(open_catalog(other))
    assert codes.tolist() == [0, 3]          # NEW is unknown; stock_0002 is the run's third session
    predict(tmp_path / "run", tmp_path / "new_pred.h5", data=[other], latest=True)
    assert len(read_predictions(tmp_path / "new_pred.h5")) == 2


def test_models_without_a_session_embedding_refuse_it(demo_path, tmp_path, capsys):
    for overrides, message in ((["model.name=patchtst", "model.session_embedding=4"],
                                "model.session_embedding is not supported by patchtst"),
                               (["model.session_embedding=-1"], "model.session_embedding must be >= 0")):
        args = ["train", "--profile", "quick_demo", f"data.paths=[{demo_path}]", "data.lookback=16",
                "training.num_workers=0", *overrides, "--run-dir", str(tmp_path / "run")]
        assert main.main(args) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
