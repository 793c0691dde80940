"""Command-line options written once: a field of a command's dataclass (BacktestConfig, QueryConfig,
IndexConfig, PredictConfig) declared with `option(...)` is its flag, with its type, default, choices and
help; `add_options` makes the argparse flags of a dataclass and `from_args` builds the dataclass back
from the parsed namespace by name. A field declared without `option` is not on the command line.

    k: int = option(0, "topk: names held (default: a tenth of the sessions)")
    plots: bool = option(True, "draw the PNGs", flag="--no-plots")   # a True bool's flag turns it off
    prices: list = option(REQUIRED, "session HDF5 files with prices", metavar="PATH")
"""

import dataclasses

REQUIRED = dataclasses.MISSING


def option(default, help, *, flag=None, choices=None, metavar=None):
    """A dataclass field that is also a flag: `--name-with-dashes` unless `flag` names it. A list or
    tuple default takes one or more values; REQUIRED makes the flag required."""
    metadata = {"help": help, "flag": flag, "choices": choices, "metavar": metavar}
    if isinstance(default, (list, tuple)):
        kind = type(default)
        return dataclasses.field(default_factory=lambda: kind(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _flag(field):
    if field.metadata["flag"]:
        return field.metadata["flag"]
    name = field.name.replace("_", "-")
    return f"--no-{name}" if field.type is bool and field.default is True else f"--{name}"


def cli_fields(cls):
    """The fields of `cls` that are options, in declaration order."""
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def add_options(parser, cls, skip=()):
    """One argparse flag per option of `cls` (its dest is the field's name) except those in `skip`."""
    for field in cli_fields(cls):
        if field.name in skip:
            continue
        meta = field.metadata
        kwargs = {"dest": field.name, "help": meta["help"]}
        if field.type is bool:
            kwargs["action"] = "store_false" if field.default is True else "store_true"
        else:
            required = field.default is REQUIRED and field.default_factory is REQUIRED
            if required:
                kwargs["required"] = True
            else:
                kwargs["default"] = field.default if field.default_factory is REQUIRED else field.default_factory()
            if field.type in (list, tuple):
                kwargs["nargs"] = "+"
            elif field.type in (int, float):
                kwargs["type"] = field.type
            for key in ("choices", "metavar"):
                if meta[key] is not None:
                    kwargs[key] = meta[key]
        parser.add_argument(_flag(field), **kwargs)
    return parser


def from_args(cls, args, **values):
    """`cls` filled from the parsed namespace by field name (`values` given here win)."""
    for field in cli_fields(cls):
        if field.name not in values and hasattr(args, field.name):
            value = getattr(args, field.name)
            values[field.name] = tuple(value) if field.type is tuple and value is not None else value
    return cls(**values)


def flag_of(cls, name):
    """The flag of field `name` (for messages that name it)."""
    return next(_flag(f) for f in cli_fields(cls) if f.name == name)
