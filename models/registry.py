"""Which class `model.name` builds: models register themselves by name with @register, and a
name `package.module:ClassName` imports a user's model from the Python path (the run's config
keeps that name, so evaluate, predict, resume and torchrun import it the same way).

A model class takes (params, shapes) and maps x (B, L, F) to
  forecast:  (B, H, K)       H future steps of K targets (K x Q with model.quantiles)
  classify:  (B, C)          logits of C classes
`params` is an instance of the class's `Config` dataclass, filled from its config section
(model.<name> for a registered model, model.custom for an imported one), or None when the
class has no `Config`. `shapes` (models.Shapes) says what the data gives it.
"""

import importlib

from errors import InputError

_REGISTRY = {}


def register(name, config=None):
    """Class decorator: `model.name: <name>` builds this class; its hyperparameters are the dataclass of
    its config section model.<name> (models/configs.py, found by name; `config`, when given, must be it)."""
    from models.configs import SECTIONS
    config = config or SECTIONS.get(name)
    if name in SECTIONS and config is not SECTIONS[name]:
        raise ValueError(f"model {name!r}: config section model.{name} is {SECTIONS[name].__name__}, "
                         f"not {config.__name__}")

    def add(cls):
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"model name {name!r} is registered twice ({_REGISTRY[name].__name__}, {cls.__name__})")
        if config is not None:
            cls.Config = config
        _REGISTRY[name] = cls
        return cls
    return add


def registered():
    return sorted(_REGISTRY)


def is_import_path(name):
    return ":" in name


def model_class(name):
    """The class `model.name` refers to; one line naming the module and the error when it cannot
    be imported."""
    if not is_import_path(name):
        if name not in _REGISTRY:
            raise InputError(f"model.name is {name!r}; choose one of {', '.join(registered())}, or give your "
                             "own as package.module:ClassName (docs/models.md)")
        return _REGISTRY[name]
    module_name, _, class_name = name.partition(":")
    if not module_name or not class_name:
        raise InputError(f"model.name is {name!r}; write an importable class as package.module:ClassName")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:       # any error of the user's module: one line, not their traceback
        raise InputError(f"model.name {name!r}: module {module_name!r} cannot be imported "
                         f"({type(exc).__name__}: {exc}); check the name and that it is on the Python path "
                         "(run from the folder that holds it, or set PYTHONPATH)") from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise InputError(f"model.name {name!r}: module {module_name!r} has no {class_name!r} "
                         f"(it defines {', '.join(n for n in dir(module) if not n.startswith('_'))[:200]})")
    import torch
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise InputError(f"model.name {name!r}: {class_name} is not a torch.nn.Module subclass")
    return cls
