"""The command line: every user mistake is one line on stderr and exit code 2."""

import json
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

import main
from data.catalog import open_catalog
from data.demo import generate

ROOT = Path(__file__).resolve().parents[1]


def run(argv, capsys):
    code = main.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *fragments):
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_make_demo_inspect_json(tmp_path, capsys):
    out = tmp_path / "demo.h5"
    code, stdout, _ = run(["make-demo", "--out", out, "--sessions", 3, "--rows", 500, "--features", 5], capsys)
    assert code == 0 and "3 sessions x 500 rows x 5 features" in stdout
    code, stdout, _ = run(["inspect", out, "--json"], capsys)
    info = json.loads(stdout)
    assert info["n_sessions"] == 3 and info["n_rows"] == 1500 and info["target_names"] == ["next_log_return"]
    code, stdout, _ = run(["inspect", out], capsys)
    assert code == 0 and "stock_0002" in stdout and "3 sessions, 1,500 rows" in stdout
    # An existing file (the user's data, perhaps) is replaced only with --overwrite.
    before = out.read_bytes()
    code, _, err = run(["make-demo", "--out", out, "--sessions", 2, "--rows", 300, "--features", 2], capsys)
    assert_one_line_error(code, err, "already exists; pass --overwrite")
    assert out.read_bytes() == before
    code, stdout, _ = run(["make-demo", "--out", out, "--sessions", 2, "--rows", 300, "--features", 2, "--overwrite"], capsys)
    assert code == 0 and "2 sessions x 300 rows" in stdout
    pd.DataFrame({"t": [1, 2, 3], "x": [1.0, 2.0, 3.0]}).to_csv(tmp_path / "x.csv", index=False)
    for command in (["make-demo", "--sessions", 2, "--rows", 300, "--features", 2], ["convert", tmp_path / "x.csv"]):
        code, _, err = run([*command, "--out", tmp_path / "data.csv"], capsys)       # HDF5 named .csv
        assert_one_line_error(code, err, "name the output with .h5, .hdf5")


def test_prepare_writes_run_dir(tmp_path, capsys):
    data = tmp_path / "demo.h5"
    generate(data, sessions=2, rows=800, features=4, progress=False)
    run_dir = tmp_path / "run"
    code, stdout, _ = run(["prepare", "--profile", "default", "--run-dir", run_dir,
                           f"data.paths=[{data}]", "data.lookback=16"], capsys)
    assert code == 0, stdout
    assert (run_dir / "config.yaml").exists() and (run_dir / "normalizer.json").exists()
    assert "train" in stdout and "windows" in stdout


def test_prepare_builds_no_trainer_or_optimizer(tmp_path, capsys, monkeypatch):
    """`prepare` printed its plan through a whole Trainer (optimizer, training loader); now the model and
    the plan alone. The plan it prints is still the one train checks (tests/test_host_plan.py)."""
    import torch
    import trainers.trainer as trainer_module
    data = tmp_path / "demo.h5"
    generate(data, sessions=2, rows=800, features=4, progress=False)

    def refuse(*args, **kwargs):
        raise AssertionError("prepare built training machinery")
    monkeypatch.setattr(torch.optim, "AdamW", refuse)
    monkeypatch.setattr(trainer_module, "Trainer", refuse)
    code, stdout, err = run(["prepare", "--run-dir", tmp_path / "run", f"data.paths=[{data}]", "data.lookback=16"],
                            capsys)
    assert code == 0, err
    assert "model + AdamW state + gradients" in stdout and (tmp_path / "run" / "config.yaml").exists()


def test_convert_cli(tmp_path, capsys):
    pd.DataFrame({"t": [1, 2, 3], "x": [1.0, 2.0, 3.0]}).to_csv(tmp_path / "a.csv", index=False)
    code, stdout, _ = run(["convert", tmp_path / "a.csv", "--out", tmp_path / "a.h5", "--time-column", "t"], capsys)
    assert code == 0 and "wrote 1 sessions, 3 rows" in stdout
    assert open_catalog(tmp_path / "a.h5").sessions[0].read_timestamps(0, 3).tolist() == [1, 2, 3]


# --- bad input, end to end --------------------------------------------------------------

def test_missing_path(capsys):
    code, _, err = run(["inspect", "/no/such/file.h5"], capsys)
    assert_one_line_error(code, err, "/no/such/file.h5", "no such file")


def test_not_hdf5(tmp_path, capsys):
    (tmp_path / "x.h5").write_text("hello")
    code, _, err = run(["inspect", tmp_path / "x.h5"], capsys)
    assert_one_line_error(code, err, "x.h5", "not an HDF5 file", "python main.py convert")


def test_truncated(tmp_path, capsys):
    generate(tmp_path / "d.h5", sessions=4, rows=20_000, features=8, progress=False)
    with open(tmp_path / "d.h5", "rb+") as f:
        f.truncate(f.seek(0, 2) // 3)
    code, _, err = run(["inspect", tmp_path / "d.h5"], capsys)
    assert_one_line_error(code, err, "d.h5", "truncated")


def test_bad_features_shape(tmp_path, capsys):
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f.create_dataset("s/features", data=np.zeros(10, np.float32))
    code, _, err = run(["inspect", tmp_path / "d.h5"], capsys)
    assert_one_line_error(code, err, "d.h5", "session 's'", "(10,)", "expected 2-D")


def test_bad_config_key_and_value(tmp_path, capsys):
    code, _, err = run(["config", "data.lookbak=3"], capsys)
    assert_one_line_error(code, err, "unknown config key data.lookbak", "did you mean data.lookback")
    code, _, err = run(["config", "data.nan_policy=zero"], capsys)
    assert_one_line_error(code, err, "data.nan_policy is 'zero'", "error, drop, ffill")
    code, _, err = run(["config", "data.lookback=many"], capsys)
    assert_one_line_error(code, err, "data.lookback must be an integer, got 'many'")


def test_no_window_fits(tmp_path, capsys):
    generate(tmp_path / "d.h5", sessions=2, rows=50, features=3, progress=False)
    code, _, err = run(["prepare", "--run-dir", tmp_path / "r", f"data.paths=[{tmp_path / 'd.h5'}]",
                        "data.lookback=100"], capsys)
    assert_one_line_error(code, err, "every session is shorter than one window", "data.lookback")


def test_csv_missing_column(tmp_path, capsys):
    pd.DataFrame({"x": [1.0]}).to_csv(tmp_path / "a.csv", index=False)
    code, _, err = run(["convert", tmp_path / "a.csv", "--out", tmp_path / "a.h5", "--features", "y"], capsys)
    assert_one_line_error(code, err, "a.csv", "feature column 'y' is missing", "available: x")


def test_subprocess_exit_code_is_2():
    result = subprocess.run([sys.executable, "main.py", "inspect", "/no/such.h5"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: /no/such.h5: no such file")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("argv", [["--help"], ["convert", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main.main(argv)
    assert exc.value.code == 0


def test_error_raised_in_a_loader_worker_is_one_line(tmp_path, capsys):
    x = np.random.default_rng(0).normal(size=(3000, 2)).astype(np.float32)
    x[2500, 1] = np.inf
    with h5py.File(tmp_path / "d.h5", "w") as f:
        from data.layout import write_session
        write_session(f, "a", x, feature_names=["p", "q"])
    code, _, err = run(["train", "--profile", "quick_demo", f"data.paths=[{tmp_path / 'd.h5'}]",
                        "data.lookback=8", "data.normalize=none", "data.split.fractions=[1.0, 0, 0]",
                        "training.num_workers=1", "training.epochs=1", f"output.runs_dir={tmp_path}"], capsys)
    assert_one_line_error(code, err, "session 'a' features row 2500 column 'q' is inf", "nan_policy")


def test_a_killed_loader_worker_is_a_clear_error_not_a_hang(tmp_path):
    """SIGKILL a DataLoader worker mid-run (as the out-of-memory killer would)."""
    import subprocess
    import sys
    import time

    import psutil
    from data.demo import generate
    generate(tmp_path / "d.h5", sessions=4, rows=20000, features=4, progress=False)
    proc = subprocess.Popen(
        [sys.executable, "main.py", "train", f"data.paths=[{tmp_path / 'd.h5'}]", "data.lookback=16",
         "training.num_workers=1", "training.persistent_workers=true", "training.epochs=50",
         "training.max_steps_per_epoch=0", f"output.runs_dir={tmp_path}"],
        cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        workers = []
        while not workers and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
            # PyTorch names its worker processes pt_data_worker.
            workers = [c for c in psutil.Process(proc.pid).children(recursive=True) if c.name() == "pt_data_worker"]
        assert workers, "no worker appeared"
        time.sleep(1.0)
        for worker in workers:
            worker.kill()
        t0 = time.time()
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert time.time() - t0 < 60
    assert proc.returncode == 1, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert "DataLoader worker (pid" in lines[0] and "usually the out-of-memory killer" in lines[0]


@pytest.mark.parametrize("override", ["data.lookback=900", "data.split.fractions=[0.001,0.5,0.499]"])
def test_no_training_window_is_one_line_and_leaves_no_run_directory(tmp_path, override):
    # Issue 10, cases 15 and 16: KeyError 'train' traceback, and an empty run directory per failed start.
    demo = tmp_path / "d.h5"
    generate(demo, sessions=2, rows=1000, features=3, progress=False)
    runs = tmp_path / "runs"
    proc = subprocess.run([sys.executable, "main.py", "train", f"data.paths=[{demo}]", override,
                           f"output.runs_dir={runs}"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert re.search(r"split 'train' has no complete window \(a window spans \d+ rows", proc.stderr)
    assert not runs.exists() or not list(runs.iterdir())


def test_a_plan_over_budget_leaves_no_run_directory(tmp_path):
    demo = tmp_path / "d.h5"
    generate(demo, sessions=2, rows=1000, features=3, progress=False)
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "main.py", "train", f"data.paths=[{demo}]", "memory_budget_mb=64",
                           "--run-dir", str(run)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "memory plan needs" in proc.stderr and not run.exists()


def test_overrides_are_accepted_anywhere_on_the_line(capsys):
    # Issue 10, case 23: `train --profile P a=1 --run-dir X b=2` failed with "unrecognized arguments".
    assert main.main(["config", "data.lookback=16", "--profile", "quick_demo", "training.epochs=7"]) == 0
    out = capsys.readouterr().out
    assert "lookback: 16" in out and "epochs: 7" in out
    with pytest.raises(SystemExit) as exit_info:
        main.main(["config", "--profile", "quick_demo", "--bogus"])
    assert exit_info.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_a_failed_start_leaves_no_runs_folder_either(tmp_path):
    # Seen in a hostile run: the run lock made runs/ beside the run and left it empty after the error.
    runs = tmp_path / "runs"
    proc = subprocess.run([sys.executable, "main.py", "train", f"data.paths=[{tmp_path / 'missing.h5'}]",
                           f"output.runs_dir={runs}"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "missing.h5: no such file or directory" in proc.stderr
    assert not runs.exists()


def test_no_output_replaces_an_input(tmp_path, capsys):
    """convert, backtest and train --overwrite never write over (or remove the folder of) what they read."""
    data = tmp_path / "proj" / "d.h5"
    data.parent.mkdir()
    generate(data, sessions=2, rows=300, features=3, progress=False)
    before = data.read_bytes()
    code, _, err = run(["convert", data, "--out", data, "--overwrite"], capsys)
    assert_one_line_error(code, err, "which this command reads")
    code, _, err = run(["backtest", "--prices", data, "--price-column", "ret", "--signal", "momentum:5",
                        "--out", data.parent, "--overwrite"], capsys)
    assert_one_line_error(code, err, "holds", "would be replaced whole")
    # A project folder holding its data and a config.yaml is not a run to remove.
    (data.parent / "config.yaml").write_text("training:\n  epochs: 1\n")
    code, _, err = run(["train", "--profile", "quick_demo", "--run-dir", data.parent, "--overwrite",
                        f"data.paths=[{data}]"], capsys)
    assert_one_line_error(code, err, f"holds {data}")
    elsewhere = tmp_path / "elsewhere.h5"
    generate(elsewhere, sessions=2, rows=300, features=3, progress=False)
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), "train", "--profile", "quick_demo", "--run-dir", ".",
                           "--overwrite", f"data.paths=[{elsewhere}]"],
                          cwd=data.parent, capture_output=True, text=True)
    assert proc.returncode == 2 and "is the folder this command runs in" in proc.stderr, proc.stderr[-2000:]
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), "backtest", "--prices", str(elsewhere), "--price-column",
                           "ret", "--signal", "momentum:5", "--out", "..", "--overwrite"],
                          cwd=data.parent, capture_output=True, text=True)
    assert proc.returncode == 2 and "is the folder this command runs in" in proc.stderr, proc.stderr[-2000:]
    assert data.read_bytes() == before and (data.parent / "config.yaml").exists()


def test_a_run_dir_that_is_a_file_is_one_line(tmp_path, capsys):
    # It was a FileExistsError traceback (train, prepare), the file left as it was.
    data = tmp_path / "d.h5"
    generate(data, sessions=2, rows=300, features=3, progress=False)
    before = data.read_bytes()
    for argv, what in ((["train", "--run-dir", data], "is a file"), (["prepare", "--run-dir", data / "sub"], "is under")):
        code, _, err = run([*argv, "--profile", "quick_demo", f"data.paths=[{data}]", "data.lookback=8"], capsys)
        assert_one_line_error(code, err, what, "--run-dir names a folder")
    assert data.read_bytes() == before
