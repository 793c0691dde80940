"""The small CI version of benchmarks/faults.py: SIGKILL a run (once at a random moment,
once during a checkpoint write), resume it, and get the uninterrupted run's metrics."""

import sys
import warnings
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import faults  # noqa: E402


@pytest.mark.parametrize("seed", [3])
def test_killed_runs_resume_to_the_uninterrupted_metrics(tmp_path, seed):
    result = faults.run(trials=2, seed=seed, quick=True, base=tmp_path, write_every=2)
    random_kill, write_kill = result["trials"]
    assert random_kill["mode"] == "random" and write_kill["mode"] == "write"
    assert write_kill["killed"] != "ran to the end" and write_kill["temp_file_at_kill"]
    for trial in result["trials"]:
        assert trial["metrics_equal"], trial
        assert trial["temp_files_after"] == []
    # A real full disk (a small tmpfs; needs root to mount): one line, exit 2, checkpoints intact.
    disk = result["full_disk"]
    if disk["full_disk"] != "run":
        warnings.warn(f"full-disk case not run here: {disk['reason']}")
        return
    assert disk["exit"] == 2 and not disk["traceback"], disk
    assert len(disk["error_lines"]) == 1
    assert "cannot write the checkpoint (no space left on device); free some space" in disk["error_lines"][0]
    assert disk["checkpoints_left"] == {"best": (1, 15), "last": (1, 15)} and disk["temp_files_left"] == []
