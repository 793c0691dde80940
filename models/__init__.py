"""Models: `build_model(model_cfg, shapes)` for every architecture by name (models/build.py,
models/registry.py).

The package itself imports no torch: config.py reads `models.configs` (plain dataclasses), and a
command that never builds a model (`similar query` of a raw-window index, `backtest`) starts without
torch (its import costs ~2.7 s and ~180 MB PSS here). The names below come from models/build.py,
imported (with torch and the built-in models) on first use.
"""

_FROM_BUILD = ("Shapes", "TASKS", "build_model", "check_model_config", "check_output_shape", "expected_output",
               "model_params", "is_import_path", "model_class", "registered")


def __getattr__(name):
    if name in _FROM_BUILD:
        from models import build
        return getattr(build, name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_FROM_BUILD))
