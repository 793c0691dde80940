"""The host memory plan (issue 10, case 19): one plan per model, measured activations,
validation's loader counted, and `prepare` printing the plan `train` checks."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import trainers.host_plan as host_plan_module
from config import TrainingConfig
from data.dataloader import loader_options
from data.dataset import prepare_data
from data.demo import generate
from data.memory_plan import WORKER_PROCESS_MB, loader_plan
from tests.conftest import small_config
from trainers.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wide_file(tmp_path_factory):
    # 40 features: the old estimate (batch x lookback x d_model x features) planned 640 MB of
    # activations for a 171-parameter DLinear and refused it on low_memory.
    path = tmp_path_factory.mktemp("wide") / "wide.h5"
    generate(path, sessions=2, rows=2000, features=40, progress=False)
    return path


@pytest.mark.parametrize("model", ["dlinear", "gru"])
def test_a_small_model_on_forty_features_fits_low_memory(wide_file, tmp_path, model):
    from config import load_config
    config = load_config("low_memory", overrides=[f"data.paths=[{wide_file}]", f"model.name={model}",
                                                  f"output.runs_dir={tmp_path}", "training.num_workers=0"])
    prepared = prepare_data(config.data, progress=False)
    lines = {line.name: line for line in Trainer(config, prepared, tmp_path / "run", monitor=False).memory_plan()}
    assert lines["activations"].mb < 200, lines["activations"]
    assert sum(line.mb for line in lines.values()) <= config.memory_budget_mb


def test_validation_workers_beside_persistent_training_workers_are_counted(demo_path, tmp_path):
    config = small_config(demo_path, tmp_path)
    prepared = prepare_data(config.data, progress=False)

    def beside(**training):
        cfg = TrainingConfig(**training)
        options, _ = loader_options(cfg, "cpu", cpu_count=8)
        lines = {line.name: line.mb for line in loader_plan(prepared, config.data, cfg, options)}
        return lines["validation loader beside the training one"], lines["HDF5 chunk caches"]

    persistent, caches = beside(num_workers=2, persistent_workers=True)
    assert persistent >= 2 * WORKER_PROCESS_MB + caches
    assert beside(num_workers=2, persistent_workers=False)[0] == 0          # training workers end first
    without, caches = beside(num_workers=0)
    assert caches <= without < WORKER_PROCESS_MB                            # a second reader's caches


def test_the_activation_probe_leaves_the_model_as_it_was(demo_path, tmp_path):
    config = small_config(demo_path, tmp_path, "model.name=patchtst", "model.patchtst.dropout=0.3")
    prepared = prepare_data(config.data, progress=False)
    trainer = Trainer(config, prepared, tmp_path / "run", monitor=False)
    model = trainer.model
    model.eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    size, how = host_plan_module.probe_activations(model, trainer.autocast, "regress", trainer.shapes, 64)
    assert size > 0 and how in ("measured", "saved tensors")
    assert not model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert torch.equal(rng, torch.get_rng_state())


def test_without_proc_the_saved_tensors_are_counted_and_grow_with_the_batch(demo_path, tmp_path, monkeypatch):
    def no_proc(key):
        raise OSError("no /proc here")
    monkeypatch.setattr(host_plan_module, "_status_bytes", no_proc)
    config = small_config(demo_path, tmp_path, "model.name=tcn")
    prepared = prepare_data(config.data, progress=False)
    trainer = Trainer(config, prepared, tmp_path / "run", monitor=False)
    sizes = [host_plan_module.probe_activations(trainer.model, trainer.autocast, "regress", trainer.shapes, b)
             for b in (64, 128)]
    assert {how for _, how in sizes} == {"saved tensors"}
    assert np.isclose(sizes[1][0], 2 * sizes[0][0], rtol=0.1)


def test_prepare_prints_the_whole_plan_that_train_checks(demo_path, tmp_path):
    proc = subprocess.run([sys.executable, "main.py", "prepare", f"data.paths=[{demo_path}]", "model.name=gru",
                           "--run-dir", str(tmp_path / "run")], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for line in ("training process", "validation loader beside the training one",
                 "model + AdamW state + gradients", "activations", "total"):
        assert line in proc.stdout, line
