import errno
import json
import os
import signal

import pytest
import torch

import trainers.checkpoint as checkpoint_module
from config import load_config
from data.demo import generate
from errors import InputError
from tests.conftest import assert_same_weights, at_step, interrupting, small_config
from trainers import run as run_module
from trainers.checkpoint import Checkpointer
from trainers.predict import predict
from trainers.trainer import Trainer


def test_a_run_trains_evaluates_and_logs(demo_path, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    result = run_module.train(small_config(demo_path, tmp_path), tmp_path / "run")
    run = tmp_path / "run"
    assert (run / "checkpoints" / "last.pt").exists() and (run / "checkpoints" / "best.pt").exists()
    test = json.loads((run / "metrics_test.json").read_text())
    assert set(test) >= {"loss", "mse", "rmse", "mae", "r2", "pearson", "direction_acc"}
    floats = lambda d: {k: v for k, v in d.items() if isinstance(v, float)}  # noqa: E731
    assert floats(test) == pytest.approx(floats(result["test"]))
    # One target, one step: the per-target and per-step metrics are the pooled ones.
    assert test["per_target"]["next_log_return"] == pytest.approx({k: test[k] for k in ("mse", "mae", "r2", "direction_acc")})
    assert test["per_step"]["1"] == test["per_target"]["next_log_return"]
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"train/loss", "train/lr", "perf/windows_per_s", "perf/data_wait", "memory/pss_mb", "val/mse",
            "val/per_target/next_log_return/mae", "val/per_step/1/mse"} <= set(tags)
    assert len(events.Scalars("train/loss")) == 2 * 12 // 4
    assert events.Scalars("val/loss")[-1].value > 0
    # The forecasts-vs-truth figure, once per validation.
    assert len(events.Images("val/forecasts")) == 2 and events.Images("val/forecasts")[-1].width > 0
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "scaler", "loader", "rng_cpu", "normalizer", "config"} <= set(state)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_resume_after_a_signal_matches_an_uninterrupted_run(demo_path, tmp_path, monkeypatch, signum):
    # Dropout on: the resumed run must draw the same masks (the RNG state is in the checkpoint).
    config = small_config(demo_path, tmp_path, "model.gru.num_layers=2", "model.gru.dropout=0.3")
    epoch_losses = []
    end_epoch = Trainer.end_epoch
    monkeypatch.setattr(Trainer, "end_epoch", lambda self, loss, val: (epoch_losses.append(loss), end_epoch(self, loss, val)))
    straight = run_module.train(config, tmp_path / "straight")
    straight_losses = list(epoch_losses)

    original = Trainer._optimizer_step
    monkeypatch.setattr(Trainer, "_optimizer_step", interrupting(17, signum))
    stopped = run_module.train(config, tmp_path / "resumed")
    assert stopped["stopped_by"] == signal.Signals(signum).name
    monkeypatch.setattr(Trainer, "_optimizer_step", original)
    assert torch.load(tmp_path / "resumed" / "checkpoints" / "last.pt", weights_only=True)["step"] == 17
    epoch_losses.clear()
    resumed = run_module.train(None, tmp_path / "resumed", resume=True)
    assert resumed["test"] == straight["test"]
    assert_same_weights(tmp_path / "straight", tmp_path / "resumed")
    # The resumed epoch's train loss covers its steps before the stop too (it counted only those after).
    assert epoch_losses == [straight_losses[1]]


def test_bf16_autocast_on_cpu_trains(demo_path, tmp_path):
    result = run_module.train(small_config(demo_path, tmp_path, "training.amp=bf16", "training.epochs=1",
                                           "model.name=dlinear"), tmp_path / "bf16")
    assert torch.isfinite(torch.tensor(result["test"]["mse"]))


def test_fp16_needs_cuda(demo_path, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(InputError, match="training.amp is fp16, which needs CUDA"):
        run_module.train(small_config(demo_path, tmp_path, "training.amp=fp16"), tmp_path / "fp16")


def test_non_finite_losses_are_skipped_then_stop(demo_path, tmp_path, monkeypatch):
    monkeypatch.setattr(Trainer, "_loss", lambda self, batch: self.model(batch.x).sum() * float("nan"))
    with pytest.raises(InputError, match=r"3 non-finite losses in a row at step 2; the last batch came from "
                                         r"sessions stock_"):
        run_module.train(small_config(demo_path, tmp_path, "training.max_nonfinite_steps=3"), tmp_path / "nan")


def test_checkpoint_write_failure_keeps_the_previous_one(tmp_path, monkeypatch):
    checkpoints = Checkpointer(tmp_path)
    checkpoints.save("last", {"step": 1})

    def disk_full(obj, f, *args, **kwargs):
        with open(f, "wb") as handle:
            handle.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(checkpoint_module.torch, "save", disk_full)
    with pytest.raises(InputError, match=r"last.pt: cannot write the checkpoint \(no space left on device\); "
                                         r"free some space .*previous checkpoint is intact"):
        checkpoints.save("last", {"step": 2})
    monkeypatch.undo()
    assert checkpoints.load("last") == {"step": 1}
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["last.pt"]


def test_flipped_bytes_in_a_checkpoint_are_detected(tmp_path):
    checkpoints = Checkpointer(tmp_path)
    weights = torch.arange(4096, dtype=torch.float32)
    checkpoints.save("last", {"model": {"w": weights}})
    path = checkpoints.path("last")
    data = bytearray(path.read_bytes())
    at = bytes(data).index(weights.numpy().tobytes()[4000:4016])       # inside the stored tensor
    data[at] ^= 0x40                                                   # one bit: a different float, same size
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"last.pt: the checkpoint is damaged \(CRC mismatch in .*data/0"):
        checkpoints.load("last")
    path.write_bytes(bytes(data[:len(data) // 2]))                     # truncated
    with pytest.raises(InputError, match=r"the checkpoint is damaged \(not a complete archive") as info:
        checkpoints.load("last")
    assert "file an issue" not in str(info.value)


def test_evaluate_command(demo_path, tmp_path):
    run_module.train(small_config(demo_path, tmp_path, "training.epochs=1"), tmp_path / "run")
    result = run_module.evaluate(tmp_path / "run", "val")
    assert result["mse"] > 0 and (tmp_path / "run" / "metrics_val.json").exists()


def test_gradient_accumulation_equals_one_big_batch(demo_path, tmp_path):
    common = ["model.gru.dropout=0.0", "training.epochs=1", "training.max_steps_per_epoch=6", "training.grad_clip=0",
              "training.amp=off"]   # bf16 rounding would differ between the two batch splits
    run_module.train(small_config(demo_path, tmp_path, *common, "training.batch_size=64"), tmp_path / "big")
    run_module.train(small_config(demo_path, tmp_path, *common, "training.batch_size=32",
                                  "training.gradient_accumulation_steps=2"), tmp_path / "accum")
    a = torch.load(tmp_path / "big" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "accum" / "checkpoints" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=1e-4, atol=1e-6)


def test_early_stopping_and_plateau_scheduler(demo_path, tmp_path):
    config = small_config(demo_path, tmp_path, "training.epochs=6", "training.learning_rate=1e-12",
                          "training.early_stopping_patience=1", "training.scheduler=plateau")
    run_module.train(config, tmp_path / "early")
    last = torch.load(tmp_path / "early" / "checkpoints" / "last.pt", weights_only=True)
    assert last["epoch"] == 2 and last["bad_epochs"] == 1     # no better val loss after epoch 1: stop


def test_classification_run(tmp_path):
    import h5py
    import numpy as np
    from data.layout import write_session
    rng = np.random.default_rng(0)
    path = tmp_path / "labels.h5"
    with h5py.File(path, "w") as f:
        for s in range(3):
            x = rng.normal(size=(2000, 3)).astype(np.float32)
            labels = (x[:, 0] > 0).astype(np.int64)[:, None]        # learnable from the last row
            write_session(f, f"s{s}", x, labels, feature_names=["a", "b", "c"], target_names=["up"])
    config = load_config("quick_demo", overrides=[
        f"data.paths=[{path}]", "data.lookback=8", "data.block_rows=256", "model.name=gru", "model.task=classify",
        "model.n_classes=2", "model.gru.hidden_size=16", "training.epochs=2", "training.max_steps_per_epoch=40",
        "training.batch_size=64", "training.learning_rate=0.01", "training.num_workers=0",
        f"output.runs_dir={tmp_path}"])
    result = run_module.train(config, tmp_path / "cls")
    test = result["test"]
    assert set(test) >= {"accuracy", "f1_macro", "cross_entropy"}
    assert test["accuracy"] > 0.8          # the label is the sign of the last input's first feature


def test_thread_count_leaves_busy_cores_alone(monkeypatch):
    from trainers import setup as trainer_module  # (moved out of trainer.py)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(trainer_module, "_TORCH_DEFAULT_THREADS", 2)
    assert trainer_module.thread_count(-1, cores=2, busy_cores=0.9)[0] == 1
    assert trainer_module.thread_count(-1, cores=2, busy_cores=2.0)[0] == 1      # never fewer than one
    threads, why = trainer_module.thread_count(-1, cores=2, busy_cores=0.1)
    assert threads == 2 and "other processes keep 0.1 of 2 cores busy" in why
    assert trainer_module.thread_count(0) == (0, "") and trainer_module.thread_count(3) == (3, "")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")                                   # torchrun sets it
    assert trainer_module.thread_count(-1, cores=2, busy_cores=0.0)[0] == 0


def test_auto_workers_are_lowered_to_fit_the_memory_budget(demo_path, tmp_path, monkeypatch):
    # Seen on a 16-core GPU machine: auto gave 4 workers and low_memory (1 GB) refused to start.
    # The budget here sits between the plans with 1 and 2 workers (the training process's line is
    # this process's PSS, so the budget is taken from the plans themselves).
    import dataclasses
    import data.dataloader as dataloader_module
    from data.dataset import prepare_data
    monkeypatch.setattr(dataloader_module.os, "cpu_count", lambda: 16)
    config = small_config(demo_path, tmp_path, "training.num_workers=-1", "memory_budget_mb=100000")
    prepared = prepare_data(config.data, progress=False)
    trainer = Trainer(config, prepared, tmp_path / "run", monitor=False)
    assert trainer.loader_cfg.num_workers == 4                                  # auto, when it fits
    plans = [sum(line.mb for line in trainer.memory_plan(dataclasses.replace(config.training, num_workers=w)))
             for w in (1, 2)]
    tight = dataclasses.replace(config, memory_budget_mb=int((plans[0] + plans[1]) / 2))
    trainer = Trainer(tight, prepared, tmp_path / "run", monitor=False)
    assert trainer.train_loader.options["num_workers"] == trainer.loader_cfg.num_workers == 1
    assert tight.training.num_workers == -1                   # the run's config is left as written


def test_a_skipped_non_finite_step_leaves_the_epoch_loss_finite_and_resume_exact(demo_path, tmp_path, monkeypatch):
    # Issue 10, case 5: the skipped step's NaN was added to the epoch loss, and skipped steps were
    # counted by the epoch but not by Trainer.step, so a resume after one started at another batch.
    from data.dataset import prepare_data
    config = small_config(demo_path, tmp_path, "training.epochs=1", "training.max_steps_per_epoch=20")
    loader = Trainer(config, prepare_data(config.data, progress=False), tmp_path / "probe", monitor=False).train_loader
    loader.set_epoch(0)
    poisoned = next(b for i, b in enumerate(loader) if i == 3)
    key = (int(poisoned.session[0]), int(poisoned.row[0]))
    original_loss = Trainer._loss

    def nan_on_one_batch(self, batch):
        loss = original_loss(self, batch)
        return loss * float("nan") if (int(batch.session[0]), int(batch.row[0])) == key else loss
    monkeypatch.setattr(Trainer, "_loss", nan_on_one_batch)
    losses = {}
    original_end = Trainer.end_epoch

    def record(self, train_loss, val):
        losses[str(self.run_dir)] = train_loss
        return original_end(self, train_loss, val)
    monkeypatch.setattr(Trainer, "end_epoch", record)
    straight = run_module.train(config, tmp_path / "straight")
    assert torch.isfinite(torch.tensor(losses[str(tmp_path / "straight")]))
    state = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=True)
    assert state["nonfinite_total"] == 1 and state["step"] == 20

    original_step = Trainer._optimizer_step
    monkeypatch.setattr(Trainer, "_optimizer_step", interrupting(9))
    assert run_module.train(config, tmp_path / "resumed")["stopped_by"] == "SIGTERM"
    monkeypatch.setattr(Trainer, "_optimizer_step", original_step)
    resumed = run_module.train(None, tmp_path / "resumed", resume=True)
    assert resumed["test"] == straight["test"]


def test_predict_checks_its_output_before_the_work(tmp_path):
    # Issue 10, case 14: an existing --out was overwritten silently; a directory failed with a
    # traceback after the whole prediction ran. Both are refused before the run is even opened.
    existing = tmp_path / "pred.h5"
    existing.write_bytes(b"the user's file")
    with pytest.raises(InputError, match=r"pred.h5: already exists; pass --overwrite"):
        predict(tmp_path / "no-such-run", existing)
    assert existing.read_bytes() == b"the user's file"
    with pytest.raises(InputError, match=r"is a directory; give a file name for the output"):
        predict(tmp_path / "no-such-run", tmp_path)
    with pytest.raises(InputError, match=r"no-such-run: not a run directory"):
        predict(tmp_path / "no-such-run", existing, overwrite=True)


def test_a_cpu_run_logs_no_cuda_figures_and_one_hparams_entry(demo_path, tmp_path):
    # Issue 10, case 24: CPU runs logged memory/cuda_* as 0; each resume of a finished run added
    # another hparams entry.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    config = small_config(demo_path, tmp_path, "training.epochs=1", "training.device=cpu")
    run_module.train(config, tmp_path / "run")
    run_module.train(None, tmp_path / "run", resume=True)          # finished: evaluates and logs again
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert "memory/pss_mb" in tags and not [t for t in tags if t.startswith("memory/cuda")]
    assert len(events.Scalars("hparam/test_mse")) == 1


def test_evaluate_names_the_checkpoint_it_scored_and_epochs_count_from_one(demo_path, tmp_path, capsys):
    # Issue 10, cases 11 and 12: `evaluate` used `last` silently when there was no `best`; the log said
    # "epoch 0 (best)" and the JSON "epoch_of_checkpoint: 1" for the same epoch.
    run_module.train(small_config(demo_path, tmp_path, "training.epochs=1"), tmp_path / "run")
    assert "epoch 1/1: train loss" in capsys.readouterr().out
    best = run_module.evaluate(tmp_path / "run", "val")
    assert best["checkpoint"] == "best" and best["epoch_of_checkpoint"] == 1
    assert run_module.evaluate(tmp_path / "run", "val", checkpoint="last")["checkpoint"] == "last"
    (tmp_path / "run" / "checkpoints" / "best.pt").unlink()
    assert run_module.evaluate(tmp_path / "run", "val")["checkpoint"] == "last"
    assert "no `best` checkpoint yet; scoring `last`" in capsys.readouterr().err
    with pytest.raises(InputError, match=r"best.pt: no checkpoint"):
        run_module.evaluate(tmp_path / "run", "val", checkpoint="best")


def test_resume_takes_the_overrides_it_can_honour_and_refuses_the_others(demo_path, tmp_path, capsys):
    # Issue 10, case 3: `train --resume RUN key=value` ignored the overrides (exit 0, nothing trained).
    import main
    config = small_config(demo_path, tmp_path, "training.epochs=1")
    run_module.train(config, tmp_path / "run")
    run = str(tmp_path / "run")
    assert main.main(["train", "--resume", run, "training.epochs=2"]) == 0
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 2 and state["config"]["training"]["epochs"] == 2
    assert "epochs: 2" in (tmp_path / "run" / "config.yaml").read_text()
    assert "in epoch 2" in capsys.readouterr().out
    for argv, message in (([run, "model.gru.hidden_size=16"], "model.gru.hidden_size cannot change on --resume"),
                          ([run, "data.lookback=8"], "data.lookback cannot change on --resume"),
                          ([run, "--profile", "default"], "--profile cannot be combined with --resume"),
                          ([run, "--run-dir", run], "--run-dir cannot be combined with --resume"),
                          # fewer epochs than trained: it ran, evaluated, and saved a config claiming 1 epoch
                          ([run, "training.epochs=1"], "training.epochs=1: " + run + " has already trained 2 epochs")):
        assert main.main(["train", "--resume", *argv]) == 2
        assert message in capsys.readouterr().err
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 2
    assert "epochs: 2" in (tmp_path / "run" / "config.yaml").read_text()


def test_a_run_directory_is_locked_and_never_overwritten_silently(demo_path, tmp_path, capsys):
    # Issue 10, case 13: two trainings into one --run-dir both exited 0 with a mixed directory, and a
    # --run-dir pointing at a finished run overwrote its `best` checkpoint.
    import subprocess
    import sys

    import main
    run = tmp_path / "run"
    args = ["train", "--profile", "quick_demo", f"data.paths=[{demo_path}]", "data.lookback=16",
            "data.block_rows=512", "model.gru.hidden_size=8", "training.epochs=1", "training.max_steps_per_epoch=4",
            "training.num_workers=0", "--run-dir", str(run)]
    assert main.main(args) == 0
    best = (run / "checkpoints" / "best.pt").read_bytes()
    assert main.main(args) == 2
    assert "already holds a run; continue it with `train --resume" in capsys.readouterr().err
    assert (run / "checkpoints" / "best.pt").read_bytes() == best
    lock = tmp_path / ".run.lock"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(f"{sleeper.pid}\n")                    # another live process uses the run
        assert main.main(["train", "--resume", str(run)]) == 2
        assert f"in use by process {sleeper.pid}" in capsys.readouterr().err
    finally:
        sleeper.kill()
        sleeper.wait()
    assert main.main(["train", "--resume", str(run)]) == 0    # its process is gone: the lock is taken over
    assert not lock.exists()
    assert main.main(args + ["--overwrite"]) == 0
    # The lock is the resolved run's: a symlink to the run is the same run.
    link = tmp_path / "link"
    link.symlink_to(run)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(f"{sleeper.pid}\n")
        assert main.main(["train", "--resume", str(link)]) == 2
        assert f"in use by process {sleeper.pid}" in capsys.readouterr().err
    finally:
        sleeper.kill()
        sleeper.wait()
        lock.unlink()
    # --overwrite with a bad override keeps the old run whole: nothing is replaced before every check passes.
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    for bad in ("data.lookback=7000", "memory_budget_mb=100", "training.batch_size=100000000"):
        capsys.readouterr()
        assert main.main(args + ["--overwrite", bad]) == 2, bad
        err = capsys.readouterr().err
        assert "Traceback" not in err and err.count("error:") == 1, err
        assert {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()} == before, bad
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "run"]
    assert "training.batch_size=100000000" in err
    # A fresh run directory refused for its batch size leaves nothing behind (it said "already holds a run").
    assert main.main(args[:-1] + [str(tmp_path / "new"), "training.batch_size=100000000"]) == 2
    assert not (tmp_path / "new").exists()


def test_a_run_first_names_its_profile_and_warns_of_the_demo_profile_on_other_data(demo_path, tmp_path, capsys):
    # Issue 10, case 22: `train data.paths=[mine.h5]` quietly trained a 3-epoch demo model.
    run_module.train(small_config(demo_path, tmp_path, "training.epochs=1"), tmp_path / "run")
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "profile quick_demo: model gru, 1 epochs, at most 12 steps each, batch 64, lookback 16, horizon 1"
    assert out[1].startswith("note: quick_demo is the demo profile")
    from config import load_config
    assert "note:" not in run_module.describe_run(load_config("quick_demo"))
    # From the command line, the first line says which profile and why (a bare train used quick_demo silently).
    import main
    args = ["train", f"data.paths=[{demo_path}]", "data.lookback=16", "training.epochs=1",
            "training.max_steps_per_epoch=2", "training.num_workers=0", "model.gru.hidden_size=4"]
    assert main.main(args + ["--run-dir", str(tmp_path / "bare")]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("profile quick_demo (main.py's SELECTED_CONFIG, no --profile given; for your own data "
                            "choose --profile default): model gru"), first
    assert main.main(args + ["--profile", "quick_demo", "--run-dir", str(tmp_path / "named")]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("profile quick_demo (from --profile): model gru")


def test_resume_refuses_data_that_changed_since_the_checkpoint(tmp_path, monkeypatch):
    # Issue 10, case 2: a checkpoint held loader positions but nothing of the data they index, so a
    # resume on files with a session added or rows appended was silently inexact.
    data = tmp_path / "data.h5"
    generate(data, sessions=3, rows=3000, features=4, progress=False)
    config = small_config(data, tmp_path)
    original = Trainer._optimizer_step
    monkeypatch.setattr(Trainer, "_optimizer_step", interrupting(5))
    assert run_module.train(config, tmp_path / "run")["stopped_by"] == "SIGTERM"
    monkeypatch.setattr(Trainer, "_optimizer_step", original)
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["data"]["sessions"]
    generate(data, sessions=3, rows=3500, features=4, progress=False)      # rows appended
    with pytest.raises(InputError, match=r"last.pt: the data changed since this checkpoint \(session '\w+' rows "
                                         r"3,000 -> 3,500.*would not be exact"):
        run_module.train(None, tmp_path / "run", resume=True)
    generate(data, sessions=3, rows=3000, features=4, progress=False)      # restored: resumes
    assert "test" in run_module.train(None, tmp_path / "run", resume=True)


def test_a_data_file_truncated_during_training_stops_the_run(tmp_path, monkeypatch):
    # Issue 10, case 6: a file truncated mid-run (23 MB -> 6 MB) read as zeros past its end, exit 0.
    data = tmp_path / "data.h5"
    generate(data, sessions=3, rows=3000, features=4, progress=False)
    monkeypatch.setattr(Trainer, "_optimizer_step", at_step(3, lambda: os.truncate(data, data.stat().st_size // 4)))
    with pytest.raises(InputError, match=r"data.h5: changed while in use \(size [\d,]+ -> [\d,]+ bytes\); do not "
                                         r"write to data files while a run reads them"):
        run_module.train(small_config(data, tmp_path), tmp_path / "run")


def test_classification_on_converted_labels(tmp_path):
    # Issue 10, case 4: convert writes labels as float32; they were standardized, then .long() made
    # 1, 2, 0 into 0, 1, -1 (a traceback). Labels stay whole classes, are never normalized, and are
    # range-checked against model.n_classes before training.
    import numpy as np
    import pandas as pd

    from data.convert import convert
    rng = np.random.default_rng(0)
    frames = []
    for s in range(3):
        x = rng.normal(size=(1500, 3))
        frames.append(pd.DataFrame({"stock": f"s{s}", "a": x[:, 0], "b": x[:, 1], "c": x[:, 2],
                                    "label": np.digitize(x[:, 0], [-0.5, 0.5]).astype(float)}))   # 0, 1, 2
    pd.concat(frames).to_csv(tmp_path / "labels.csv", index=False)
    convert([tmp_path / "labels.csv"], tmp_path / "labels.h5", session_column="stock", targets=["label"],
            time_column="")

    def config(*extra):
        return load_config("quick_demo", overrides=[
            f"data.paths=[{tmp_path / 'labels.h5'}]", "data.lookback=8", "data.block_rows=256", "model.name=gru",
            "model.task=classify", "model.gru.hidden_size=16", "training.epochs=2", "training.max_steps_per_epoch=40",
            "training.batch_size=64", "training.learning_rate=0.01", "training.num_workers=0",
            f"output.runs_dir={tmp_path}", *extra])
    assert config("model.n_classes=3").data.normalize_targets is False
    result = run_module.train(config("model.n_classes=3"), tmp_path / "cls")
    assert result["test"]["accuracy"] > 0.8          # the class of the last input's first feature
    with pytest.raises(InputError, match=r"session 's\d' row \d+: label 2.0 is not a class 0 .. 1 "
                                         r"\(model.n_classes=2\)"):
        run_module.train(config("model.n_classes=2"), tmp_path / "cls2")
    with pytest.raises(InputError, match=r"model.task is classify but data.horizon is 3"):
        config("model.n_classes=3", "data.horizon=3")


def test_periodic_checkpoints_let_a_crash_mid_epoch_resume_exactly(demo_path, tmp_path, monkeypatch):
    # Issue 10, case 20: checkpoints only at epoch end; a SIGKILL (the OOM killer) lost the whole epoch.
    config = small_config(demo_path, tmp_path, "training.epochs=1", "training.max_steps_per_epoch=20",
                          "training.checkpoint_every_steps=5")
    straight = run_module.train(config, tmp_path / "straight")
    original = Trainer._optimizer_step

    def crash():
        raise MemoryError("killed")              # no handler runs, as after SIGKILL
    monkeypatch.setattr(Trainer, "_optimizer_step", at_step(13, crash))
    with pytest.raises(MemoryError):
        run_module.train(config, tmp_path / "crashed")
    monkeypatch.setattr(Trainer, "_optimizer_step", original)
    assert torch.load(tmp_path / "crashed" / "checkpoints" / "last.pt", weights_only=True)["step"] == 10
    resumed = run_module.train(None, tmp_path / "crashed", resume=True)
    assert resumed["test"] == straight["test"]
    assert_same_weights(tmp_path / "straight", tmp_path / "crashed")


@pytest.mark.parametrize("loss,metric", [("mse", "mse"), ("mae", "mae"), ("huber", None)])
def test_the_training_loss_is_trained_on_and_reported(demo_path, tmp_path, loss, metric):
    # data.normalize=none: normalized units are original units, so the reported loss must equal the
    # metric of the same name over every window; huber is checked against torch on all predictions.
    import numpy as np
    from data.dataset import prepare_data
    config = small_config(demo_path, tmp_path, f"training.loss={loss}", "training.huber_delta=0.5",
                          "data.normalize=none", "training.compute_metrics_online=false")
    prepared = prepare_data(config.data, progress=False)
    trainer = Trainer(config, prepared, tmp_path / "run", monitor=False)
    batch = next(iter(trainer.train_loader))
    with trainer.autocast:                 # as the step runs (bf16 where the CPU has it: amp=auto)
        out = trainer.model(batch.x)
    want = {"mse": torch.nn.functional.mse_loss, "mae": torch.nn.functional.l1_loss,
            "huber": lambda a, b: torch.nn.functional.huber_loss(a, b, delta=0.5)}[loss](out.float(), batch.y)
    assert float(trainer._loss(batch).detach()) == pytest.approx(float(want.detach()), rel=1e-5)
    result = trainer.evaluate("val")
    if metric:
        assert result["loss"] == pytest.approx(result[metric], rel=1e-6)
    else:
        preds, truth = [], []
        with torch.no_grad(), trainer.autocast:
            for b in trainer.train_loader.__class__(prepared, "val", batch_size=64, shuffle=False):
                preds.append(trainer.model(b.x).float()), truth.append(b.y)
        err = torch.nn.functional.huber_loss(torch.cat(preds), torch.cat(truth), delta=0.5, reduction="none")
        assert result["loss"] == pytest.approx(float(err.double().mean()), rel=1e-5)
        assert not np.isclose(result["loss"], result["mse"])


def test_a_regression_loss_for_classification_is_refused(tmp_path):
    with pytest.raises(InputError, match="training.loss is 'mae', but model.task is classify"):
        from trainers.losses import training_loss
        training_loss(load_config("default", overrides=["model.task=classify", "model.n_classes=2",
                                                        "training.loss=mae"]))
    with pytest.raises(InputError, match=r"training.loss is 'pinball'; choose one of mse, mae, huber"):
        load_config("default", overrides=["training.loss=pinball"])
    with pytest.raises(InputError, match=r"training.huber_delta must be > 0, got 0.0"):
        load_config("default", overrides=["training.huber_delta=0"])


def test_evaluate_and_predict_check_the_run_against_its_checkpoint(demo_path, tmp_path, capsys):
    import shutil

    import main
    from data.demo import generate
    data = tmp_path / "data.h5"
    shutil.copy(demo_path, data)
    run = tmp_path / "run"
    run_module.train(small_config(data, tmp_path, "training.epochs=1", "output.tensorboard=false"), run)
    recorded = (run / "metrics_test.json").read_bytes()
    text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(text.replace("lookback: 16", "lookback: 24"))      # a hand edit
    capsys.readouterr()
    assert main.main(["evaluate", "--run", str(run)]) == 2
    assert "data.lookback is 24, but checkpoint best was trained with 16" in capsys.readouterr().err
    assert main.main(["predict", "--run", str(run), "--out", str(tmp_path / "p.h5")]) == 2
    assert "data.lookback is 24" in capsys.readouterr().err and not (tmp_path / "p.h5").exists()
    (run / "config.yaml").write_text(text)
    # The data file regenerated with other rows: scored, but never over the run's recorded result.
    generate(data, sessions=4, rows=2500, features=4, seed=1, progress=False)
    assert main.main(["evaluate", "--run", str(run)]) == 0
    err = capsys.readouterr().err
    assert "the data changed since checkpoint best was trained (session 'stock_0000' rows 3,000 -> 2,500" in err
    assert (run / "metrics_test.json").read_bytes() == recorded
    assert "data_changed" in json.loads((run / "metrics_test.data-changed.json").read_text())
    assert main.main(["predict", "--run", str(run), "--out", str(tmp_path / "p.h5")]) == 0
    assert "the data changed" in capsys.readouterr().err
    from data.predictions import read_attrs
    assert read_attrs(tmp_path / "p.h5")["data_changed"]


def test_validation_can_be_capped_to_a_fixed_seeded_subset(demo_path, tmp_path, monkeypatch):
    """training.max_val_windows: each epoch validates the same seeded windows; the test evaluation is whole."""
    from data.dataset import prepare_data
    config = small_config(demo_path, tmp_path, "training.max_val_windows=100", "training.epochs=2")
    prepared = prepare_data(config.data, progress=False)
    assert prepared.n_windows("val") > 100
    trainer = Trainer(config, prepared, tmp_path / "t", monitor=False)
    subset = trainer.evaluator._subset("val", 100)
    assert int(subset[:, 2].sum()) == 100 and (subset[:, 2] > 0).all()
    again = Trainer(config, prepared, tmp_path / "u", monitor=False).evaluator._subset("val", 100)
    assert (subset == again).all()                                  # fixed by the seed
    assert trainer.evaluate("val", max_windows=100) == trainer.evaluate("val", max_windows=100)
    calls = []
    original = Trainer.evaluate
    monkeypatch.setattr(Trainer, "evaluate", lambda self, split, model=None, max_windows=0: (
        calls.append((split, max_windows)), original(self, split, model, max_windows))[1])
    run_module.train(config, tmp_path / "run")
    assert calls == [("val", 100), ("val", 100), ("test", 0)]


def test_evaluate_of_a_saved_run_builds_no_optimizer_and_runs_no_probe(demo_path, tmp_path, monkeypatch):
    """`evaluate` built a whole Trainer: an optimizer, a training loader and (with auto workers) the
    forward/backward memory probe, none of which scoring uses."""
    import trainers.host_plan as host_plan
    import trainers.trainer as trainer_module
    run_module.train(small_config(demo_path, tmp_path, "training.epochs=1", "output.tensorboard=false"), tmp_path / "run")
    recorded = json.loads((tmp_path / "run" / "metrics_test.json").read_text())

    def refuse(*args, **kwargs):
        raise AssertionError("evaluate built training machinery")
    monkeypatch.setattr(torch.optim, "AdamW", refuse)
    monkeypatch.setattr(host_plan, "probe_activations", refuse)
    monkeypatch.setattr(trainer_module, "probe_activations", refuse)
    monkeypatch.setattr(trainer_module, "Trainer", refuse)
    again = run_module.evaluate(tmp_path / "run", "test")
    assert {k: v for k, v in again.items() if isinstance(v, float)} == \
        pytest.approx({k: v for k, v in recorded.items() if isinstance(v, float)}, rel=1e-6)


def test_the_evaluator_records_no_gradients(demo_path, tmp_path, monkeypatch):
    """`evaluate` of a saved run scores without autograd (it ran under the Trainer's no_grad before)."""
    run_module.train(small_config(demo_path, tmp_path, "training.epochs=1", "output.tensorboard=false"), tmp_path / "run")
    from trainers.evaluator import Evaluator
    grad_on = []
    original = Evaluator.model_inputs
    monkeypatch.setattr(Evaluator, "model_inputs", lambda self, batch: (grad_on.append(torch.is_grad_enabled()),
                                                                        original(self, batch))[1])
    run_module.evaluate(tmp_path / "run", "test")
    assert grad_on and not any(grad_on)


def test_learning_rate_schedule_is_a_pure_function_of_the_step():
    """trainers/schedule.py: the LambdaLR the trainer steps gives, step by step, the pure function's value."""
    from trainers.schedule import build_scheduler, lr_factor
    cfg = small_config("unused.h5", "unused", "training.epochs=3", "training.warmup_steps=5",
                       "training.learning_rate=0.01").training
    assert [lr_factor(s, "cosine", 10, 3, 3) for s in (0, 1, 2)] == [pytest.approx(1 / 3), pytest.approx(2 / 3), 1.0]
    assert lr_factor(10**6, "cosine", 10, 3, 0) == pytest.approx(0.05)       # never below 5% of the rate
    assert [lr_factor(s, "halving", 4, 3, 0) for s in (0, 3, 4, 9)] == [1.0, 1.0, 0.5, 0.25]
    assert [lr_factor(s, "hold_decay", 1, 9, 0) for s in (0, 3, 4, 5)] == [1.0, 1.0, 0.9, pytest.approx(0.81)]
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.learning_rate)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch=10)
    for step in range(30):
        assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * lr_factor(step, "cosine", 10, 3, 5))
        optimizer.step()
        scheduler.step()
