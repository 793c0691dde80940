"""Own models without editing the project (issue 11, part 2): registered by name, or imported as
package.module:ClassName with their own config section; one-line errors for the usual mistakes."""

import textwrap

import pytest
import yaml

import main
from config import load_config
from data.predictions import read_predictions
from errors import InputError
from models import Shapes, build_model
from tests.conftest import small_config
from trainers import run as run_module

EXAMPLE = "examples.mlp_forecaster:MLPForecaster"


def user_model_args(demo_path, run_dir, *extra):
    return ["train", "--profile", "quick_demo", f"data.paths=[{demo_path}]", "data.lookback=16", "data.block_rows=512",
            f"model.name={EXAMPLE}", "model.custom.hidden_size=16", "training.epochs=1",
            "training.max_steps_per_epoch=6", "training.num_workers=0", "output.tensorboard=false",
            "--run-dir", str(run_dir), *extra]


def test_the_example_model_trains_evaluates_predicts_and_resumes(demo_path, tmp_path, capsys):
    run = tmp_path / "run"
    assert main.main(user_model_args(demo_path, run)) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())["model"]
    assert saved["name"] == EXAMPLE and saved["custom"] == {"hidden_size": 16}     # how to import it again
    assert main.main(["evaluate", "--run", str(run), "--json"]) == 0
    assert main.main(["predict", "--run", str(run), "--out", str(tmp_path / "p.h5"), "--latest"]) == 0
    assert len(read_predictions(tmp_path / "p.h5")) == 4
    assert main.main(["train", "--resume", str(run), "training.epochs=2"]) == 0
    assert "in epoch 2" in capsys.readouterr().out


def write_module(folder, name, source):
    (folder / f"{name}.py").write_text(textwrap.dedent(source))


def test_user_model_mistakes_are_one_line(demo_path, tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(tmp_path))
    write_module(tmp_path, "broken_model", "import numpy\nraise RuntimeError('no GPU driver here')\n")
    write_module(tmp_path, "flat_model", """
        import torch
        class Flat(torch.nn.Module):
            def __init__(self, params, shapes):
                super().__init__()
                self.linear = torch.nn.Linear(shapes.lookback * shapes.n_features, shapes.horizon)
            def forward(self, x):
                return self.linear(x.flatten(1))         # (B, H): the target axis is missing
        """)
    cases = [
        ("model.name=no_such_pkg.models:Net", "module 'no_such_pkg.models' cannot be imported (ModuleNotFoundError"),
        ("model.name=broken_model:Net", "module 'broken_model' cannot be imported (RuntimeError: no GPU driver here)"),
        ("model.name=flat_model:Missing", "module 'flat_model' has no 'Missing'"),
        ("model.name=flat_model:Flat", "output shape (2, 1), expected (2, 1, 1) (batch, horizon, targets)"),
        ("model.name=flat_model:Flat model.custom.depth=2", "model.custom is set (depth) but flat_model:Flat defines "
                                                           "no `Config`"),
        (f"model.name={EXAMPLE} model.custom.hiden_size=2", "unknown config key model.custom.hiden_size (did you "
                                                           "mean model.custom.hidden_size?)"),
        ("model.name=gru model.custom.hidden_size=2", "model.custom is set (hidden_size) but model.name 'gru' is a "
                                                      "built-in model; its settings are model.gru.<key>"),
        ("model.name=xgboost", "model.name is 'xgboost'; choose one of dlinear, gru, lstm, patchtst, repeat_last, tcn"),
    ]
    for overrides, message in cases:
        run = tmp_path / "run"
        args = ["train", "--profile", "quick_demo", f"data.paths=[{demo_path}]", "data.lookback=16",
                "training.num_workers=0", *overrides.split(), "--run-dir", str(run)]
        assert main.main(args) == 2, overrides
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (overrides, err)
        assert not run.exists()                 # refused before a run directory was made


def test_flat_model_keys_point_to_their_section():
    with pytest.raises(InputError, match=r"model.hidden_size moved to each model's own section: model.gru.hidden_size"):
        load_config("quick_demo", overrides=["model.hidden_size=8"])
    with pytest.raises(InputError, match=r"model.tcn_kernel_size moved .*: model.tcn.kernel_size"):
        load_config("quick_demo", overrides=["model.tcn_kernel_size=5"])
    with pytest.raises(InputError, match=r"unknown config key model.gru.d_model; valid keys: model.gru.hidden_size, "
                                         r"model.gru.num_layers, model.gru.dropout"):
        load_config("quick_demo", overrides=["model.gru.d_model=8"])


def test_a_run_of_the_flat_layout_still_loads(demo_path, tmp_path):
    run_module.train(small_config(demo_path, tmp_path, "training.epochs=1", "output.tensorboard=false"), tmp_path / "run")
    path = tmp_path / "run" / "config.yaml"
    values = yaml.safe_load(path.read_text())
    model = values["model"]
    model.update(hidden_size=model.pop("gru")["hidden_size"], num_layers=1, dropout=0.1, kernel_size=25)
    for section in ("dlinear", "lstm", "tcn", "patchtst", "custom"):
        model.pop(section)
    path.write_text(yaml.safe_dump(values))             # as written before each model had its own section
    config = run_module.load_run_config(tmp_path / "run")
    assert (config.model.gru.hidden_size, config.model.gru.num_layers) == (8, 1)
    assert run_module.evaluate(tmp_path / "run", "test")["mse"] > 0


def test_a_registered_model_is_built_by_name():
    import dataclasses

    import torch

    from config import ModelConfig
    from models.registry import _REGISTRY, register

    @register("test_zero")
    class Zero(torch.nn.Module):
        def __init__(self, params, shapes):
            super().__init__()
            self.shapes = shapes
            self.bias = torch.nn.Parameter(torch.zeros(shapes.n_targets))

        def forward(self, x):
            return self.bias.expand(x.shape[0], self.shapes.horizon, -1)
    try:
        model = build_model(ModelConfig(name="test_zero"), Shapes(8, 3, 4, 2))
        assert model(torch.zeros(5, 8, 4)).shape == (5, 3, 2)
        with pytest.raises(ValueError, match="registered twice"):
            register("test_zero")(dataclasses.make_dataclass("Other", []))
    finally:
        _REGISTRY.pop("test_zero")
