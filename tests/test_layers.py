"""The layers look down only (STYLE.md, habit 9): main.py / h5series.py > analysis > trainers > models >
data > config, schema, times, progress, profiles > atomic, errors. Every import of the library's modules, function-level
ones included, is read from the source. The packages are also held to the contract in .importlinter by
import-linter itself (it takes packages as roots, not the top-level single-file modules, which the ast
reading covers)."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYER = {"main": 6, "h5series": 6, "analysis": 5, "trainers": 4, "models": 3, "data": 2, "config": 1,
         "schema": 1, "times": 1, "progress": 1, "profiles": 1, "atomic": 0, "errors": 0}
# Modules whose layer is not their package's: models/configs.py holds the built-in models' config sections,
# torch-free, and belongs to the config layer (config.py derives ModelConfig from it; .importlinter holds it
# free of torch and of the rest of models/).
MODULE_LAYER = {"models.configs": 1}


def _layer(module):
    """The layer of a dotted module name."""
    return MODULE_LAYER.get(module, LAYER[module.split(".")[0]])


def _imports():
    for path in sorted(ROOT.rglob("*.py")):
        relative = path.relative_to(ROOT)
        owner = relative.parts[0] if len(relative.parts) > 1 else relative.stem
        module = ".".join(relative.with_suffix("").parts)
        if module in MODULE_LAYER:
            owner = module
        elif owner not in LAYER:
            continue                        # tests, benchmarks, tools, examples use everything
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                if name.split(".")[0] in LAYER:
                    yield str(relative), owner, name, node.lineno


def test_the_library_never_imports_the_command_line():
    found = [f"{path}:{line} imports {name}" for path, owner, name, line in _imports()
             if name.split(".")[0] == "main" and owner != "h5series"]
    assert not found, found


def test_no_module_imports_a_layer_above_its_own():
    upward = [f"{path}:{line} ({owner}) imports {name}" for path, owner, name, line in _imports()
              if _layer(name) > _layer(owner)]
    assert not upward, upward


def _lint_imports(root):
    command = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    return subprocess.run([command, "--no-cache", str(root / ".importlinter")], cwd=root,
                          capture_output=True, text=True, timeout=120)


def test_import_linter_contract_is_kept():
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broken" in result.stdout and "0 broken" in result.stdout


def test_import_linter_contract_fails_on_an_upward_import(tmp_path):
    """The contract is not vacuous: the same tree with one upward import (data -> trainers) fails it."""
    for name in ("data", "models", "trainers", "analysis"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".importlinter", tmp_path / ".importlinter")
    with open(tmp_path / "data" / "windows.py", "a") as handle:
        handle.write("\nimport trainers.metrics  # an upward import\n")
    result = _lint_imports(tmp_path)
    assert result.returncode != 0
    assert "data.windows -> trainers.metrics" in result.stdout, result.stdout


def test_a_run_directory_has_one_owner():
    """Only trainers/rundir.py names the files of a run directory in code (strings in messages and
    docstrings aside): every other module asks a RunDir."""
    names = {"config.yaml", "normalizer.json", "checkpoints", "tensorboard"}
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        relative = path.relative_to(ROOT)
        if relative.parts[0] not in ("trainers", "main.py", "h5series.py") or relative.name == "rundir.py":
            continue
        tree = ast.parse(path.read_text(), str(path))
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and node.body
                      and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings \
                    and (node.value in names or node.value.startswith("metrics_")):
                found.append(f"{relative}:{node.lineno} {node.value!r}")
    assert not found, found


def test_no_library_function_is_longer_than_80_lines():
    """A function a reader can hold at once (STYLE.md): the library's longest stay under 80 lines."""
    long = []
    for path in sorted(ROOT.rglob("*.py")):
        relative = path.relative_to(ROOT)
        owner = relative.parts[0] if len(relative.parts) > 1 else relative.stem
        if owner not in LAYER:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 >= 80:
                long.append(f"{relative}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long
