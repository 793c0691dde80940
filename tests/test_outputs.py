"""What every command promises about its outputs (docs/guarantees.md): two writers of one output never
both win, --overwrite replaces only what the command itself writes, and a killed writer's litter is
cleaned by the next run."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import main
from atomic import atomic_dir, atomic_path, clean_stale_temps, writer_tag
from errors import InputError
from tests.helpers.market import random_prices, write_prices

ROOT = Path(__file__).resolve().parents[1]


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_file_that_appears_meanwhile_is_kept(tmp_path):
    out = tmp_path / "out.h5"
    with pytest.raises(InputError, match="appeared while this command ran"):
        with atomic_path(out, replace=False) as tmp:
            tmp.write_text("mine")
            out.write_text("theirs")                  # another writer finished first
    assert out.read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["out.h5"]        # no temporary left
    with atomic_path(out, replace=True) as tmp:       # --overwrite
        tmp.write_text("mine")
    assert out.read_text() == "mine"


def test_a_folder_that_appears_meanwhile_is_kept(tmp_path):
    out = tmp_path / "report"
    with pytest.raises(InputError, match="appeared while this command ran"):
        with atomic_dir(out) as work:
            (work / "report.json").write_text("mine")
            out.mkdir()
            (out / "report.json").write_text("theirs")
    assert (out / "report.json").read_text() == "theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


def test_two_make_demos_to_one_path_one_wins_whole(tmp_path):
    out = tmp_path / "demo.h5"
    cmd = [sys.executable, "main.py", "make-demo", "--out", str(out), "--sessions", "4", "--rows", "60000"]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert "already exists" in loser or "appeared while this command ran" in loser
    assert main.main(["inspect", str(out)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.h5"]


def test_stale_temporaries_of_a_dead_writer_are_cleaned(tmp_path, capsys):
    dead, alive = _dead_pid(), os.getpid()
    out = tmp_path / "demo.h5"
    host = writer_tag().split("@", 1)[1]
    stale = [tmp_path / f".demo.h5.tmp-{dead}", tmp_path / f".demo.h5.tmp-{dead}@{host}-x1y2",
             tmp_path / f".demo.h5.tmp-{dead}@{host}"]
    stale[0].write_text("half a file")
    stale[1].mkdir()
    stale[2].write_text("half a file")
    elsewhere = tmp_path / f".demo.h5.tmp-{dead}@another_host"   # a pid of another host (a shared filesystem)
    elsewhere.write_text("maybe being written there")
    live = tmp_path / f".demo.h5.tmp-{alive}9999999"        # not this name's pattern: another pid string
    other = tmp_path / f".other.h5.tmp-{dead}"                # another output's: not ours to clean
    live.write_text("x")
    other.write_text("x")
    assert main.main(["make-demo", "--out", str(out), "--sessions", "1", "--rows", "100", "--features", "2"]) == 0
    assert not any(p.exists() for p in stale)
    assert other.exists() and out.exists() and elsewhere.exists()
    running = tmp_path / f".demo.h5.tmp-{alive}"
    running.write_text("being written by a live process")
    assert clean_stale_temps(out) == [] and running.exists()


def test_report_and_index_folders_are_cleaned_after_a_kill(tmp_path):
    dead = _dead_pid()
    litter = tmp_path / f".bt.tmp-{dead}-abc"
    litter.mkdir()
    (litter / "report.json").write_text("{}")
    with atomic_dir(tmp_path / "bt") as work:
        (work / "report.json").write_text("{}")
    assert not litter.exists() and (tmp_path / "bt" / "report.json").exists()


@pytest.fixture
def prices_file(tmp_path):
    return write_prices(tmp_path / "prices.h5", random_prices(n_dates=80, n_assets=5, seed=1))


def test_overwrite_replaces_only_a_folder_the_command_wrote(tmp_path, prices_file, capsys):
    run_dir = tmp_path / "run"                   # a training run (or any folder of the user's)
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("model: {}\n")
    args = ["backtest", "--prices", str(prices_file), "--price-column", "close", "--signal", "momentum:5",
            "--no-plots", "--no-tensorboard", "--overwrite"]
    assert main.main(args + ["--out", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "holds checkpoints and 1 more, not written by this command's report" in err and "nothing was removed" in err
    assert (run_dir / "config.yaml").exists() and (run_dir / "checkpoints").is_dir()
    # a report folder is replaced with --overwrite
    assert main.main(args + ["--out", str(tmp_path / "bt")]) == 0
    assert main.main(args + ["--out", str(tmp_path / "bt")]) == 0
    (tmp_path / "bt" / "notes.txt").write_text("my notes")
    assert main.main(args + ["--out", str(tmp_path / "bt")]) == 2
    assert "holds notes.txt" in capsys.readouterr().err and (tmp_path / "bt" / "notes.txt").exists()
    index_args = ["similar", "index", "--data", str(prices_file), "--columns", "close", "--lookback", "5", "--overwrite"]
    assert main.main(index_args + ["--out", str(run_dir)]) == 2
    assert "not written by this command's index" in capsys.readouterr().err and (run_dir / "config.yaml").exists()


def test_outputs_written_into_a_data_folder_are_not_read_as_sessions(tmp_path, prices_file):
    from data.catalog import open_catalog
    from tests.helpers.market import write_predictions
    folder = tmp_path / "data"
    folder.mkdir()
    prices = random_prices(n_dates=80, n_assets=5, seed=1)
    write_prices(folder / "prices.h5", prices)
    before = [s.name for s in open_catalog([str(folder)]).sessions]
    write_predictions(folder / "pred.h5", prices.pct_change())
    (folder / f".prices2.h5.tmp-{os.getpid()}").write_bytes((folder / "prices.h5").read_bytes())  # being written
    assert main.main(["backtest", "--prices", str(prices_file), "--price-column", "close", "--signal", "momentum:5",
                      "--no-plots", "--no-tensorboard", "--out", str(folder / "bt")]) == 0       # periods.h5 inside
    assert main.main(["similar", "index", "--data", str(prices_file), "--columns", "close", "--lookback", "5",
                      "--out", str(folder / "idx")]) == 0                                          # windows.h5 inside
    assert [s.name for s in open_catalog([str(folder)]).sessions] == before


@pytest.fixture
def tiny_disk(tmp_path):
    """A tmpfs of a few MB (root and mount needed; skipped elsewhere)."""
    def mount(size_mb):
        where = tmp_path / f"disk{size_mb}"
        where.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(where)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
        mounted.append(where)
        return where
    mounted = []
    yield mount
    for where in mounted:
        subprocess.run(["umount", str(where)], capture_output=True)


def _cli(argv):
    return subprocess.run([sys.executable, "main.py", *map(str, argv)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, tiny_disk, prices_file):
    """On a 3 MB disk: segfaults (rc 139) after h5py tracebacks, OSError 28, a run folder of config.yaml alone.
    (A disk that fills during training: tests/test_faults.py.)"""
    import pandas as pd
    disk = tiny_disk(3)
    demo = tmp_path / "demo.h5"
    assert _cli(["make-demo", "--out", demo, "--sessions", 2, "--rows", 3000, "--features", 3]).returncode == 0
    run = tmp_path / "run"
    train = ["train", "--profile", "quick_demo", f"data.paths=[{demo}]", "data.lookback=16", "training.epochs=1",
             "training.max_steps_per_epoch=2", "training.num_workers=0", "model.gru.hidden_size=4"]
    assert _cli(train + ["--run-dir", run]).returncode == 0
    pd.DataFrame({"timestamp": pd.date_range("2020", periods=300, freq="D"), "x": np.arange(300.0)}).to_csv(
        tmp_path / "a.csv", index=False)
    commands = [["make-demo", "--out", disk / "d.h5", "--sessions", 4, "--rows", 50000],
                ["convert", tmp_path / "a.csv", "--out", disk / "c.h5"],
                ["predict", "--run", run, "--out", disk / "p.h5"],
                ["similar", "index", "--data", prices_file, "--columns", "close", "--lookback", 5, "--out", disk / "idx"],
                ["backtest", "--prices", prices_file, "--price-column", "close", "--signal", "momentum:5",
                 "--out", disk / "bt"],
                train + ["--run-dir", disk / "run", "model.gru.hidden_size=256"]]       # checkpoints of ~3.2 MB
    for argv in commands:
        proc = _cli(argv)
        assert proc.returncode == 2, (argv[0], proc.returncode, proc.stderr[-1500:])
        assert "no space left on device" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-1500:]
        assert [p.name for p in disk.iterdir()] == [], argv[0]


def test_a_disk_that_fills_mid_write_is_one_line_and_leaves_nothing(tmp_path, tiny_disk):
    import pandas as pd
    disk = tiny_disk(20)                     # room to start (16 MB headroom), not for the 24 MB file
    n = 1_200_000
    pd.DataFrame({"timestamp": np.arange(n) * 60 + 1_600_000_000, "a": np.ones(n), "b": np.ones(n),
                  "c": np.ones(n)}).to_csv(tmp_path / "big.csv", index=False)
    proc = _cli(["convert", tmp_path / "big.csv", "--out", disk / "big.h5"])
    assert proc.returncode == 2 and "no space left on device" in proc.stderr, proc.stderr[-1500:]
    assert "Traceback" not in proc.stderr
    assert [p.name for p in disk.iterdir()] == []
