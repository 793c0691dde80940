"""Quantile forecasts end to end: training.loss=quantile with model.quantiles (issue 11, part 3)."""

import json

import numpy as np
import pytest

import main
from config import load_config
from data.predictions import read_predictions
from errors import InputError
from tests.conftest import small_config
from trainers import run as run_module
from trainers.predict import predict

LEVELS = "model.quantiles=[0.1,0.5,0.9]"


@pytest.mark.parametrize("model", ["gru", "dlinear"])
def test_quantile_runs_report_coverage_and_predict_every_level(demo_path, tmp_path, model):
    # dlinear forecasts the feature channels (targets among the features): its quantiles need a learned map.
    extra = ["data.target_columns=[ret]", "data.horizon=2"] if model == "dlinear" else []
    config = small_config(demo_path, tmp_path, f"model.name={model}", "training.loss=quantile", LEVELS,
                          "training.epochs=1", "output.tensorboard=false", *extra)
    result = run_module.train(config, tmp_path / "run")["test"]
    assert {"quantile_pinball", "quantile_coverage_0.1_0.9", "quantile_fraction_below", "mse", "per_target"} <= set(result)
    assert 0 <= result["quantile_coverage_0.1_0.9"] <= 1 and result["quantile_pinball"] > 0
    saved = json.loads((tmp_path / "run" / "metrics_test.json").read_text())
    assert saved["quantile_coverage_0.1_0.9"] == pytest.approx(result["quantile_coverage_0.1_0.9"])
    predict(tmp_path / "run", tmp_path / "p.h5", "test")
    frame = read_predictions(tmp_path / "p.h5")
    assert {"q0.1", "q0.5", "q0.9"} <= set(frame.columns)
    assert np.array_equal(frame["prediction"], frame["q0.5"])          # the point forecast is the median
    # The file's numbers are the ones evaluate reports: point mse, band coverage, pinball.
    y = frame["truth"].to_numpy(np.float64)
    assert np.mean((frame["prediction"] - y) ** 2) == pytest.approx(result["mse"], rel=1e-5)
    inside = (y >= frame["q0.1"]) & (y <= frame["q0.9"])
    assert inside.mean() == pytest.approx(result["quantile_coverage_0.1_0.9"], rel=1e-6)
    q = frame[["q0.1", "q0.5", "q0.9"]].to_numpy(np.float64)
    diff = y[:, None] - q
    levels = np.array([0.1, 0.5, 0.9])
    assert np.maximum(levels * diff, (levels - 1) * diff).mean() == pytest.approx(result["quantile_pinball"], rel=1e-4)
    predict(tmp_path / "run", tmp_path / "next.h5", latest=True)
    latest = read_predictions(tmp_path / "next.h5")
    assert len(latest) == 4 * config.data.horizon and latest[["q0.1", "q0.9"]].notna().all().all()


def test_quantile_settings_that_cannot_be_honoured_are_refused(capsys):
    cases = [
        ([LEVELS], "training.loss is 'mse' but model.quantiles is [0.1, 0.5, 0.9]; set training.loss=quantile"),
        (["training.loss=quantile"], "give the levels, e.g. model.quantiles=[0.1,0.5,0.9]"),
        (["training.loss=quantile", "model.quantiles=[0.9,0.1]"], "list them increasing, each once, e.g. [0.1, 0.9]"),
        (["training.loss=quantile", "model.quantiles=[0.5,1.0]"], "give levels strictly between 0 and 1"),
        (["training.loss=quantile", "model.quantiles=[0.5,0.5]"], "list them increasing, each once"),
    ]
    for overrides, message in cases:
        with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")
                           .replace(")", r"\)").replace(".", r"\.")):
            load_config("quick_demo", overrides=overrides)
        assert main.main(["config", *overrides]) == 2
        assert message in capsys.readouterr().err
