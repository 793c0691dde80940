"""`build_model(model_cfg, shapes)` for every architecture by name (models/registry.py), and what
the data gives a model (`Shapes`). Reached as `from models import ...` (models/__init__.py).

Every model maps x (B, L, F) to
  forecast:  (B, H, K)  H future steps of K targets
  classify:  (B, C)     logits of C classes
"""

import dataclasses
import importlib
import pkgutil

import torch

import models
from errors import InputError
from models.configs import SECTIONS
from models.registry import is_import_path, model_class, registered  # noqa: F401

TASKS = ("forecast", "classify")

# The built-in models register themselves on import: every module of the package (a new model is its own file).
for _module in pkgutil.iter_modules(models.__path__):
    if _module.name != "build":
        importlib.import_module(f"models.{_module.name}")


@dataclasses.dataclass(frozen=True)
class Shapes:
    """What the data gives the model."""

    lookback: int            # L
    horizon: int             # H
    n_features: int          # F
    n_targets: int           # K (forecast) or number of classes (classify)
    target_channels: tuple = None   # indices of the targets among the features, when they are features
    task: str = "forecast"   # forecast or classify
    n_quantiles: int = 1     # Q: forecasts of Q quantile levels per target (model.quantiles), else 1
    n_sessions: int = 0      # sessions the run trains on (their codes are 1 .. n; 0 = a session it did not)
    session_embedding: int = 0   # E: a learned vector per session (model.session_embedding), else 0
    n_future: int = 0        # C: known-future inputs given over the horizon (data.known_future_columns)

    @property
    def n_outputs(self):
        """Values per horizon step: K, or K x Q (target-major: the Q levels of target 0 first)."""
        return self.n_targets * self.n_quantiles


def model_params(model_cfg, cls):
    """The hyperparameters of the chosen model: its own section of the config (model.<name>), or
    model.custom checked against an imported class's `Config` dataclass."""
    from schema import from_dict
    name = model_cfg.name
    if not is_import_path(name):
        if model_cfg.custom:
            raise InputError(f"model.custom is set ({', '.join(model_cfg.custom)}) but model.name {name!r} is a "
                             f"built-in model; its settings are model.{name}.<key>")
        return getattr(model_cfg, name) if name in SECTIONS else None
    config_cls = getattr(cls, "Config", None)
    if config_cls is None:
        if model_cfg.custom:
            raise InputError(f"model.custom is set ({', '.join(model_cfg.custom)}) but {name} defines no `Config` "
                             "dataclass to take it; add one, or remove model.custom")
        return None
    if not dataclasses.is_dataclass(config_cls):
        raise InputError(f"model.name {name!r}: its `Config` must be a dataclass of its hyperparameters")
    return from_dict(config_cls, model_cfg.custom, "model.custom.")


def check_model_config(model_cfg):
    """The model's class and settings, checked before any data is read: (class, params)."""
    if model_cfg.task not in TASKS:
        raise InputError(f"model.task is {model_cfg.task!r}; choose one of {', '.join(TASKS)}")
    cls = model_class(model_cfg.name)
    return cls, model_params(model_cfg, cls)


def build_model(model_cfg, shapes):
    cls, params = check_model_config(model_cfg)
    if not is_import_path(model_cfg.name):
        return cls(params, shapes)
    try:
        model = cls(params, shapes)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"model.name {model_cfg.name!r}: building it failed ({type(exc).__name__}: {exc})") from None
    check_output_shape(model, model_cfg.name, shapes)
    return model


def expected_output(shapes, batch):
    return (batch, shapes.n_targets) if shapes.task == "classify" else (batch, shapes.horizon, shapes.n_outputs)


def check_output_shape(model, name, shapes, batch=2):
    """One forward of a zero batch (in eval mode: no BatchNorm statistics move) compared with the
    shape the trainer needs, before any data is read."""
    expected = expected_output(shapes, batch)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(batch, shapes.lookback, shapes.n_features))
    except Exception as exc:
        raise InputError(f"model.name {name!r}: a forward of a ({batch}, {shapes.lookback}, {shapes.n_features}) "
                         f"batch failed ({type(exc).__name__}: {exc})") from None
    finally:
        model.train(was_training)
    got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if got != expected:
        what = "(batch, classes)" if shapes.task == "classify" else \
            ("(batch, horizon, targets x quantiles)" if shapes.n_quantiles > 1 else "(batch, horizon, targets)")
        raise InputError(f"model.name {name!r}: output shape {got}, expected {expected} {what} for input "
                         f"({batch}, {shapes.lookback}, {shapes.n_features}) (batch, lookback, features)")
