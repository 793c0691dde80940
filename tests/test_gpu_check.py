"""benchmarks/gpu_check.py on a machine without a GPU: the dry run, argument checks, and the
CPU fallbacks of its sections (loader, training throughput, memory runs) at tiny sizes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def run(*args, timeout=300):
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_dry_run_lists_the_sections_in_order(tmp_path):
    proc = run("--dry-run", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    sections = [line.split()[0] for line in lines if line.startswith("  ") and "<=" in line]
    assert sections == ["tests", "loader", "train", "memory", "profile", "total"]
    assert "pytest -m cuda" in proc.stdout and "--batch 256 / 1024" in proc.stdout
    assert not (tmp_path / "gpu_check.json").exists()          # a dry run writes nothing


def test_bad_arguments_are_refused(tmp_path):
    proc = run("--dry-run", "--out", str(tmp_path), "--models", "dlinear", "transformer9")
    assert proc.returncode != 0 and "--models: transformer9 unknown" in proc.stderr
    assert run("--dry-run", "--out", str(tmp_path), "--only", "everything").returncode == 2
    if not torch.cuda.is_available():
        proc = run("--out", str(tmp_path))
        assert proc.returncode != 0 and "no CUDA GPU here" in proc.stderr


def test_cpu_fallbacks_report_every_section(tmp_path):
    proc = run("--device", "cpu", "--tiny", "--out", str(tmp_path), "--models", "dlinear", "--memory-runs", "1",
               "--data-dir", str(tmp_path / "data"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert set(report["sections"]) == {"loader", "train", "memory", "profile"}   # cuda tests skip on a CPU
    assert all(c["ok"] for c in report["checks"].values())
    loader = report["sections"]["loader"]["rows"]
    assert {r["device"] for r in loader} == {"cpu"} and all(r["windows_per_s"] > 0 for r in loader)
    train = report["sections"]["train"]["runs"]
    assert [(r["model"], r["amp"]) for r in train] == [("dlinear", "off")]
    assert train[0]["steps"] == 5 and 0 <= train[0]["data_wait"] <= 1 and train[0]["gpu_util_mean"] is None
    memory = report["sections"]["memory"]["runs"]
    assert memory[0]["profile"] == "low_memory" and memory[0]["peak_mb"] is None      # no CUDA plan on a CPU
    assert "## c. Training throughput" in (tmp_path / "gpu_check.md").read_text()
    profile = report["sections"]["profile"]
    assert {"loader_workers_0", "loader_workers_-1", "train_dlinear"} <= set(profile)
    assert all(profile[k]["top"] and profile[k]["top"][0]["own_s"] >= 0 for k in ("loader_workers_0", "train_dlinear"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the skip reason where there is no GPU")
def test_cuda_tests_are_collected_and_skipped_with_a_reason():
    proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-rs", "-p", "no:cacheprovider",
                           "tests/test_cuda.py"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:]
    summary = proc.stdout.strip().splitlines()[-1]
    assert "skipped" in summary and "passed" not in summary and "failed" not in summary, summary
    assert "needs a CUDA GPU" in proc.stdout
