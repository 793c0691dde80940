"""The GPU path, proven on a real GPU: one script, at most 8 minutes on one H100.

    python benchmarks/gpu_check.py --out DIR              # on the GPU machine
    python benchmarks/gpu_check.py --dry-run --out DIR    # anywhere: what would run, arguments checked
    python benchmarks/gpu_check.py --device cpu --tiny --out DIR   # the CPU fallbacks (CI runs this)

Sections, in this order, so a run cut short still reports the most important first:
  a. tests   `python -m pytest -m cuda -q tests/test_cuda.py`: AMP fp16/bf16, windows built on
             the device vs the CPU (bitwise), pinned non_blocking copies, checkpoints GPU <-> CPU,
             resume, CUDA memory in TensorBoard, host syncs per step
  b. loader  `benchmarks/loader.py --device cuda`: windows/s delivered on the device, lookback
             128, 16 features, batch 256 and 1024, auto workers and 0, file in page cache
  c. train   per model (dlinear, gru, tcn, patchtst), fp32 vs fp16 AMP: windows/s, GPU
             utilization (NVML, sampled every 0.1 s) and the share of the epoch the loop waits
             on the loader
  d. memory  planned (trainers/cuda_plan.py) vs measured peak CUDA memory
             (torch.cuda.max_memory_allocated) per profile, each in a fresh process
  e. profile where the host's time goes (cProfile): the loader alone, a DLinear fp16 epoch

After each section DIR/gpu_check.json and DIR/gpu_check.md are rewritten, so a partial run
keeps what finished. Exit code 1 when a check fails (a test, a section that crashed, a plan
below the measured peak); the targets (10M windows/s, < 5% data wait, plan at most 25% above
the peak) are reported as met or not, not failed on.

It uses the machine's own python and torch. Packages it needs beyond what the lent GPU
machine has (torch, h5py, numpy, pandas, scikit-learn, scipy, pyyaml, tensorboard, tqdm, psutil,
pytest, nvidia-ml-py): hdf5plugin, carried as a wheel. Here, in the repository root:

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl hdf5plugin==7.1.0

and on the GPU machine (the device tool's `run` with carry [".whl"]):

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && \\
    PYTHONPATH=/tmp/site python3 benchmarks/gpu_check.py --out $OUT
"""

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import ROOT, machine, table

SECTIONS = ("tests", "loader", "train", "memory", "profile")
MODELS = ("dlinear", "gru", "tcn", "patchtst")
# (profile, model or None for the profile's own): every profile, then the other models at default.
MEMORY_RUNS = (("low_memory", None), ("default", None), ("high_performance", None), ("quick_demo", None),
               ("default", "gru"), ("default", "tcn"), ("default", "patchtst"))
TARGET_WINDOWS_PER_S = 10e6
TARGET_DATA_WAIT = 0.05
TARGET_PLAN_OVER = 0.25
# Seconds each section may take before it is stopped (the whole script stays under 8 minutes).
BUDGET_S = {"tests": 150, "loader": 100, "train": 110, "memory": 150, "profile": 60}


# --- the report ------------------------------------------------------------------------

class Report:
    def __init__(self, out, args):
        self.out = Path(out)
        self.data = {"started": datetime.datetime.now().isoformat(timespec="seconds"), "args": vars(args),
                     "machine": machine(), "gpu": gpu_name(args.device), "sections": {}, "checks": {},
                     "targets": {}}

    def section(self, name, result):
        self.data["sections"][name] = result
        self.write()

    def check(self, name, ok, detail=""):
        self.data["checks"][name] = {"ok": bool(ok), "detail": detail}
        print(f"  check {'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)
        self.write()

    def target(self, name, reached, met, detail=""):
        self.data["targets"][name] = {"reached": reached, "met": met, "detail": detail}
        print(f"  target {'met    ' if met else 'not met'} {name}: {detail}", flush=True)
        self.write()

    @property
    def failed(self):
        return [name for name, c in self.data["checks"].items() if not c["ok"]]

    def write(self):
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.out / ".gpu_check.json.tmp"
        tmp.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        os.replace(tmp, self.out / "gpu_check.json")
        tmp = self.out / ".gpu_check.md.tmp"
        tmp.write_text(markdown(self.data))
        os.replace(tmp, self.out / "gpu_check.md")


def markdown(data):
    s = data["sections"]
    out = [f"# GPU check ({data['gpu']}, {data['started']})", ""]
    out += ["## Checks", "", table([{"check": k, "ok": v["ok"], "detail": v["detail"]}
                                    for k, v in data["checks"].items()], ["check", "ok", "detail"]), ""]
    out += ["## Targets", "", table([{"target": k, "reached": v["reached"], "met": v["met"], "detail": v["detail"]}
                                     for k, v in data["targets"].items()], ["target", "reached", "met", "detail"]), ""]
    if "loader" in s and s["loader"].get("rows"):
        out += ["## b. Loader to the device", "", table(s["loader"]["rows"], [
            "name", "device", "batch", "round_blocks", "workers", "windows_per_s", "wait_ms_per_batch",
            "peak_pss_mb"]), ""]
    if "train" in s and s["train"].get("runs"):
        out += ["## c. Training throughput", "", table(s["train"]["runs"], [
            "model", "amp", "batch", "windows_per_s", "data_wait", "gpu_util_mean", "step_ms", "steps"]), ""]
    if "memory" in s and s["memory"].get("runs"):
        out += ["## d. Planned vs measured peak CUDA memory", "", table(s["memory"]["runs"], [
            "profile", "model", "batch", "lookback", "planned_mb", "peak_mb", "plan_over_peak", "worst_phase"]), ""]
    return "\n".join(out) + "\n"


def gpu_name(device):
    import torch
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return "no GPU (device cpu)"


# --- GPU utilization ----------------------------------------------------------------------

class UtilSampler:
    """Samples NVML's GPU utilization (percent of time a kernel ran) every `interval` seconds;
    on a machine without NVML or a GPU it records nothing and `mean` is None."""

    def __init__(self, interval=0.1):
        self.interval = interval
        self.samples = []
        self._stop = threading.Event()
        self._handle = None
        try:
            import pynvml
            pynvml.nvmlInit()
            self._nvml = pynvml
            index = int(os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0] or 0)
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        except Exception:       # no pynvml, no driver, no GPU: the CPU fallback
            self._handle = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.samples.append(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)
            self._stop.wait(self.interval)

    def __enter__(self):
        if self._handle is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._handle is not None:
            self._thread.join()

    @property
    def mean(self):
        return sum(self.samples) / len(self.samples) if self.samples else None


# --- sections (each runs in its own child process: `--child SECTION`) -----------------------

def data_file(args):
    """The check's data file (lookback 128 needs long sessions), written once, left in page cache."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from loader import data_file as make
    return make(args.data_dir, args.sessions, args.rows, 16)


def section_tests(args):
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-v", "--tb=short", "-p", "no:cacheprovider",
           "tests/test_cuda.py"]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.budget)
        output, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:     # keep what the tests that finished printed
        output = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        code = "timeout"
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "tests_output.txt").write_text(output)
    lines = output.strip().splitlines()
    print("\n".join(lines[-40:]), flush=True)
    return {"command": " ".join(cmd[1:]), "exit_code": code, "summary": lines[-1] if lines else "",
            "results": [line for line in lines if line.startswith("tests/test_cuda.py::")],
            "output": "tests_output.txt"}


def section_loader(args):
    path = data_file(args)
    rows = []
    variants = [(batch, 8) for batch in args.loader_batches]
    if args.round_blocks_variant:
        variants.append((max(args.loader_batches), args.round_blocks_variant))
    for batch, round_blocks in variants:
        out = Path(args.data_dir) / f"loader_{batch}_{round_blocks}.json"
        cmd = [sys.executable, str(ROOT / "benchmarks" / "loader.py"), "--device", args.device,
               "--sessions", str(args.sessions), "--rows", str(args.rows), "--features", "16",
               "--lookback", "128", "--batch", str(batch), "--workers", str(args.loader_workers),
               "--seconds", str(args.loader_seconds), "--dir", str(Path(path).parent), "--json", str(out),
               "--only", "framework", "--round-blocks", str(round_blocks)]
        subprocess.run(cmd, cwd=ROOT, check=True, timeout=args.budget)
        for row in json.loads(out.read_text())["rows"]:
            row["round_blocks"] = round_blocks
            rows.append(row)
    return {"rows": rows, "lookback": 128, "features": 16, "file": str(path)}


def _config(path, overrides):
    from config import load_config
    return load_config(overrides[0], overrides=[f"data.paths=[{path}]", *overrides[1:]])


def section_train(args):
    import torch

    from data.dataset import prepare_data
    from trainers.trainer import Trainer
    path = data_file(args)
    cuda = args.device.startswith("cuda")
    runs = []
    tmp = Path(tempfile.mkdtemp(prefix="gpu_check_train_"))
    base = ["default", "data.lookback=128", "data.horizon=1", f"training.device={args.device}",
            f"training.batch_size={args.train_batch}", "training.epochs=2", "training.num_workers=-1",
            f"output.runs_dir={tmp}", "output.tensorboard=false"]  # each model at its defaults
    prepared = None
    for model in args.models:
        for amp in (("off", "fp16") if cuda else ("off",)):
            config = _config(path, base + [f"model.name={model}", f"training.amp={amp}"])
            prepared = prepared or prepare_data(config.data, seed=config.seed, progress=False)
            trainer = Trainer(config, prepared, tmp / f"{model}_{amp}", monitor=False)
            # Epoch 0 warms up (cuDNN/cuBLAS handles, autocast caches, workers); epoch 1 is measured.
            trainer.steps_per_epoch = args.warmup_steps
            trainer.train_epoch()
            trainer.steps_per_epoch = args.train_steps
            trainer.epoch, trainer.step = 1, args.train_steps
            with UtilSampler() as util:
                trainer.train_epoch()
            perf = trainer.epoch_perf
            run = {"model": model, "amp": amp, "batch": args.train_batch, "lookback": 128,
                   "windows_per_s": perf["windows_per_s"], "data_wait": perf["data_wait"],
                   "gpu_util_mean": util.mean, "gpu_util_samples": len(util.samples),
                   "step_ms": 1000 * perf["seconds"] / max(1, perf["steps"]), "steps": perf["steps"],
                   "workers": trainer.train_loader.options["num_workers"],
                   "parameters": sum(p.numel() for p in trainer.model.parameters())}
            print(f"  {model} {amp}: {run['windows_per_s']:,.0f} windows/s, data wait {run['data_wait']:.1%}, "
                  f"GPU util {run['gpu_util_mean']}", flush=True)
            runs.append(run)
            del trainer
            if cuda:
                torch.cuda.empty_cache()
    shutil.rmtree(tmp, ignore_errors=True)
    return {"runs": runs, "expected_runs": len(args.models) * (2 if cuda else 1)}


def _top_functions(profile, n=25):
    """The n functions with the most own time, as rows (cProfile's tottime)."""
    import pstats
    stats = pstats.Stats(profile)
    rows = []
    for (file, line, name), (calls, _, own, cumulative, _) in stats.stats.items():
        rows.append({"function": f"{Path(file).name}:{line}({name})", "calls": calls, "own_s": round(own, 4),
                     "cumulative_s": round(cumulative, 4)})
    return sorted(rows, key=lambda r: -r["own_s"])[:n]


def section_profile(args):
    """Where the host's time goes: cProfile of the loader alone (batch 256, lookback 128) and of a
    DLinear fp16 training epoch, whose steps are host-bound on a fast GPU."""
    import cProfile

    import torch

    from config import TrainingConfig
    from data.dataloader import build_loader
    from data.dataset import prepare_data
    from trainers.trainer import Trainer
    path = data_file(args)
    config = _config(path, ["default", "data.lookback=128", f"training.device={args.device}",
                            f"training.batch_size={args.train_batch}", "output.tensorboard=false",
                            f"output.runs_dir={tempfile.mkdtemp()}", "model.name=dlinear"])
    prepared = prepare_data(config.data, seed=config.seed, progress=False)
    result = {}
    for workers in (0, -1):
        loader = build_loader(prepared, "train", TrainingConfig(batch_size=args.train_batch, num_workers=workers),
                              device=args.device)
        batches = iter(loader)
        next(batches)
        profile, n, t0 = cProfile.Profile(), 0, time.perf_counter()
        profile.enable()
        for batch in batches:
            n += 1
            if time.perf_counter() - t0 > args.loader_seconds / 2:
                break
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        profile.disable()
        seconds = time.perf_counter() - t0
        result[f"loader_workers_{workers}"] = {"batches": n, "seconds": seconds,
                                               "windows_per_s": n * args.train_batch / seconds,
                                               "top": _top_functions(profile)}
        del batches, loader
    trainer = Trainer(config, prepared, Path(config.output.runs_dir) / "run", monitor=False)
    trainer.steps_per_epoch = args.warmup_steps
    trainer.train_epoch()
    trainer.steps_per_epoch = args.train_steps // 3
    trainer.epoch, trainer.step = 1, trainer.steps_per_epoch
    profile = cProfile.Profile()
    profile.enable()
    trainer.train_epoch()
    profile.disable()
    result["train_dlinear"] = {"amp": trainer.amp, **trainer.epoch_perf, "top": _top_functions(profile)}
    for name, r in result.items():
        print(f"== {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in r.items() if isinstance(v, float)))
        print(table(r["top"][:15], ["function", "calls", "own_s", "cumulative_s"]), flush=True)
    return result


def memory_run(args):
    """One profile in this fresh process: plan, one short epoch, validation and test evaluation."""
    import torch

    from data.dataset import prepare_data
    from trainers.trainer import Trainer
    profile, model = args.memory_run
    path = data_file(args)
    tmp = Path(tempfile.mkdtemp(prefix="gpu_check_memory_"))
    overrides = [profile, f"training.device={args.device}", "training.epochs=1",
                 f"training.max_steps_per_epoch={args.memory_steps}", f"output.runs_dir={tmp}",
                 "output.tensorboard=false", "data.split.fractions=[0.9,0.05,0.05]"]
    if model != "-":
        overrides.append(f"model.name={model}")
    config = _config(path, overrides)
    prepared = prepare_data(config.data, seed=config.seed, progress=False)
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer = Trainer(config, prepared, tmp / "run")
    trainer.fit()
    trainer.evaluate("test")
    result = {"profile": profile, "model": config.model.name, "batch": config.training.batch_size,
              "lookback": config.data.lookback, "amp": trainer.amp,
              "peak_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
              "host_peak_pss_mb": trainer.monitor.peak_pss_mb,
              **(trainer.cuda_plan or {"planned_mb": None, "worst_phase": None, "lines": {}})}
    if result["planned_mb"] and result["peak_mb"]:
        result["plan_over_peak"] = result["planned_mb"] / result["peak_mb"] - 1
    shutil.rmtree(tmp, ignore_errors=True)
    print("MEMORY_RESULT " + json.dumps(result), flush=True)


def section_memory(args):
    """The memory runs, up to `--memory-parallel` at a time: each is its own process, and
    max_memory_allocated is per process, so they do not disturb each other's peaks."""
    from concurrent.futures import ThreadPoolExecutor
    data_file(args)                             # written once, before the runs read it
    deadline = time.monotonic() + args.budget

    def one(job):
        profile, model = job
        cmd = [sys.executable, __file__, "--memory-run", profile, model or "-", "--device", args.device,
               "--sessions", str(args.sessions), "--rows", str(args.rows), "--data-dir", str(args.data_dir),
               "--memory-steps", str(args.memory_steps), "--out", str(args.out)]
        try:
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                                  timeout=max(1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return {"profile": profile, "model": model, "error": "out of time"}
        lines = [line for line in proc.stdout.splitlines() if line.startswith("MEMORY_RESULT ")]
        if proc.returncode != 0 or not lines:
            print(proc.stdout[-3000:] + proc.stderr[-3000:], flush=True)
            return {"profile": profile, "model": model, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
        run = json.loads(lines[-1][len("MEMORY_RESULT "):])
        print(f"  {profile}/{run['model']}: planned {run['planned_mb']} MB, peak {run['peak_mb']} MB "
              f"({run['worst_phase']})", flush=True)
        return run
    with ThreadPoolExecutor(args.memory_parallel) as pool:
        runs = list(pool.map(one, MEMORY_RUNS[:args.memory_runs]))
    return {"runs": runs}


# --- the parent ---------------------------------------------------------------------------------

def run_section(name, args):
    """Run one section in a child process with its time budget; returns its result or an error."""
    budget = args.budget_s[name]
    result_path = Path(args.data_dir) / f"section_{name}.json"
    result_path.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--child", name, "--result", str(result_path), "--budget", str(budget)] + \
        child_args(args)
    print(f"== {name} (budget {budget} s)", flush=True)
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, timeout=budget + 15)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        code = "timeout"
    seconds = time.monotonic() - t0
    if result_path.exists():
        result = json.loads(result_path.read_text())
    else:
        result = {"error": f"section {name} ended without a result (exit {code})"}
    result["seconds"] = round(seconds, 1)
    result["exit"] = code
    return result


def child_args(args):
    out = ["--device", args.device, "--sessions", str(args.sessions), "--rows", str(args.rows),
           "--data-dir", str(args.data_dir), "--out", str(args.out),
           "--loader-seconds", str(args.loader_seconds), "--loader-workers", str(args.loader_workers),
           "--train-batch", str(args.train_batch), "--train-steps", str(args.train_steps),
           "--warmup-steps", str(args.warmup_steps), "--memory-steps", str(args.memory_steps),
           "--memory-runs", str(args.memory_runs), "--memory-parallel", str(args.memory_parallel),
           "--round-blocks-variant", str(args.round_blocks_variant)]
    out += ["--models", *args.models, "--loader-batches", *map(str, args.loader_batches)]
    return out


def judge(report, name, result):
    """Checks (pass/fail) and targets (reached or not) of one section."""
    if "error" in result:
        report.check(f"{name}: ran", False, result["error"])
        return
    if name == "tests":
        report.check("a. pytest -m cuda", result["exit_code"] == 0, result["summary"])
    elif name == "loader":
        rows = result["rows"]
        report.check("b. loader delivers to the device", bool(rows), f"{len(rows)} measurements")
        for batch in sorted({r["batch"] for r in rows}):
            best = max((r for r in rows if r["batch"] == batch and r.get("round_blocks", 8) == 8),
                       key=lambda r: r["windows_per_s"])
            report.target(f"b. loader windows/s, batch {batch}", round(best["windows_per_s"]),
                          best["windows_per_s"] >= TARGET_WINDOWS_PER_S,
                          f"best of workers {sorted({r['workers'] for r in rows})}: {best['workers']} workers; "
                          f"target {TARGET_WINDOWS_PER_S:,.0f}")
    elif name == "train":
        runs = result["runs"]
        finite = all(r["windows_per_s"] > 0 for r in runs)
        report.check("c. every model trains (fp32 and fp16)", finite and len(runs) == result["expected_runs"],
                     f"{len(runs)} of {result['expected_runs']} runs")
        for r in runs:
            if r["model"] == "patchtst" and r["amp"] == "fp16":
                report.target("c. PatchTST fp16 data wait", round(r["data_wait"], 4),
                              r["data_wait"] < TARGET_DATA_WAIT, "share of the epoch in next(); target < 5%")
    elif name == "profile":
        report.check("e. profile ran", all(r.get("top") for r in result.values() if isinstance(r, dict)),
                     ", ".join(k for k, v in result.items() if isinstance(v, dict)))
    elif name == "memory":
        runs = result["runs"]
        errors = [r for r in runs if "error" in r]
        report.check("d. every memory run finished", runs and not errors,
                     "; ".join(f"{r['profile']}/{r['model']}: {r['error']}" for r in errors) or f"{len(runs)} runs")
        measured = [r for r in runs if r.get("peak_mb")]
        if measured:
            below = [r for r in measured if r["planned_mb"] < r["peak_mb"]]
            report.check("d. planned CUDA memory never below the measured peak", not below,
                         ", ".join(f"{r['profile']}/{r['model']} {r['planned_mb']:.1f} < {r['peak_mb']:.1f} MB"
                                   for r in below) or f"{len(measured)} runs")
            worst = max(r["plan_over_peak"] for r in measured)
            report.target("d. plan at most 25% above the peak", round(worst, 3), 0 <= worst <= TARGET_PLAN_OVER,
                          "largest planned / peak - 1 over the runs")


def dry_run(args):
    """What would run, with the arguments checked; imports every module the script touches."""
    import importlib
    for module in ("torch", "h5py", "numpy", "yaml", "psutil", "tqdm", "hdf5plugin", "pytest",
                   "config", "data.dataset", "data.dataloader", "trainers.trainer", "trainers.cuda_plan",
                   "loader"):
        importlib.import_module(module)
    unknown = set(args.models) - set(MODELS)
    if unknown:
        raise SystemExit(f"--models: {', '.join(sorted(unknown))} unknown; choose from {', '.join(MODELS)}")
    print(f"gpu_check: device {args.device} ({gpu_name(args.device)}), report in {args.out}/gpu_check.json and .md")
    print(f"data: {args.sessions} sessions x {args.rows:,} rows x 16 features in {args.data_dir}")
    total = 0
    for name in args.only:
        budget = args.budget_s[name]
        total += budget
        what = {
            "tests": "python -m pytest -m cuda -q tests/test_cuda.py",
            "loader": f"benchmarks/loader.py --device {args.device} --lookback 128 --features 16 --batch "
                      f"{' / '.join(map(str, args.loader_batches))} --workers {args.loader_workers} (and 0) "
                      f"--seconds {args.loader_seconds}",
            "train": f"models {', '.join(args.models)} x amp off/fp16, batch {args.train_batch}, lookback 128, "
                     f"{args.warmup_steps} warm-up + {args.train_steps} measured steps, NVML utilization",
            "profile": "cProfile of the loader (0 and auto workers) and of a DLinear training epoch",
            "memory": "planned vs peak CUDA memory: " + ", ".join(
                f"{p}/{m or 'own model'}" for p, m in MEMORY_RUNS[:args.memory_runs]) +
                      f"; {args.memory_steps} steps + val + test each, one process each",
        }[name]
        print(f"  {name:<7} <= {budget:>4} s  {what}")
    print(f"  total   <= {total:>4} s")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (the fallbacks, small)")
    parser.add_argument("--only", nargs="+", default=list(SECTIONS), choices=SECTIONS, help="sections to run")
    parser.add_argument("--dry-run", action="store_true", help="list what would run, check the arguments")
    parser.add_argument("--tiny", action="store_true", help="small data and short runs (CI, on the CPU)")
    parser.add_argument("--sessions", type=int, default=32)
    parser.add_argument("--rows", type=int, default=200_000, help="rows per session")
    parser.add_argument("--data-dir", default=None, help="where the data file is written (default: a temp dir)")
    parser.add_argument("--loader-batches", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--loader-workers", type=int, default=-1, help="workers of the first loader row (-1 auto)")
    parser.add_argument("--loader-seconds", type=float, default=6.0)
    parser.add_argument("--round-blocks-variant", type=int, default=32,
                        help="also measure the loader at the largest batch with this many blocks per round "
                             "(is the per-round cost what limits it?); 0 = no")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--train-batch", type=int, default=256)
    parser.add_argument("--train-steps", type=int, default=300, help="measured steps per training run")
    parser.add_argument("--warmup-steps", type=int, default=30)
    parser.add_argument("--memory-steps", type=int, default=100)
    parser.add_argument("--memory-runs", type=int, default=len(MEMORY_RUNS))
    parser.add_argument("--memory-parallel", type=int, default=4, help="memory runs at a time")
    parser.add_argument("--child", choices=SECTIONS, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=float, default=600, help=argparse.SUPPRESS)
    parser.add_argument("--memory-run", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tiny:
        args.sessions, args.rows, args.loader_seconds = 4, 20_000, 1.0
        args.train_steps, args.warmup_steps, args.memory_steps, args.memory_runs = 5, 2, 5, 2
        args.models = args.models[:2] if args.models == list(MODELS) else args.models
        args.loader_batches = args.loader_batches[:1]
        args.round_blocks_variant = 0
    args.budget_s = dict(BUDGET_S)
    if args.device != "cpu":
        import torch
        if not args.device.startswith("cuda"):
            raise SystemExit(f"--device {args.device}: choose cuda or cpu")
        if not torch.cuda.is_available() and not args.dry_run:
            raise SystemExit("--device cuda but no CUDA GPU here; run it where a GPU is lent, or "
                             "--device cpu --tiny for the CPU fallbacks, or --dry-run")
    if args.device == "cpu" and "tests" in args.only and not args.dry_run and not args.child:
        args.only = [s for s in args.only if s != "tests"]          # the cuda tests skip without a GPU
    if args.data_dir is None:
        args.data_dir = str(Path(tempfile.gettempdir()) / "h5series_gpu_check")
    Path(args.data_dir).mkdir(parents=True, exist_ok=True)
    if args.memory_run:
        return memory_run(args)
    if args.child:
        result = globals()[f"section_{args.child}"](args)
        Path(args.result).write_text(json.dumps(result, default=str))
        return
    if args.dry_run:
        return dry_run(args)
    report = Report(args.out, args)
    t0 = time.monotonic()
    for name in args.only:
        result = run_section(name, args)
        report.section(name, result)
        judge(report, name, result)
    report.data["seconds"] = round(time.monotonic() - t0, 1)
    report.write()
    print(markdown(report.data), flush=True)
    if report.failed:
        print(f"gpu_check: {len(report.failed)} check(s) failed: {', '.join(report.failed)}", flush=True)
        sys.exit(1)
    print(f"gpu_check: every check passed in {report.data['seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
