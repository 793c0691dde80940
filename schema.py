"""Plain data <-> config dataclasses: nested mappings from YAML files and key=value overrides become
checked dataclasses (each value coerced to its field's type, unknown keys named with the valid ones), and
dataclasses become plain dicts again. Knows no config section: config.py, models (a custom model's own
settings) and trainers (a saved run's config) all use it."""

import dataclasses
import datetime
import difflib
import math
import typing
from pathlib import Path

import yaml

from errors import InputError


def from_dict(cls, values, prefix=""):
    """The dataclass `cls` from a nested mapping, each value coerced to its field's type and checked;
    an unknown key is one line naming the valid ones (a class may word it: `unknown_key_message`)."""
    if not isinstance(values, dict):
        raise InputError(f"{prefix.rstrip('.') or 'config'} must be a mapping of keys, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            message = getattr(cls, "unknown_key_message", lambda key, values: None)(key, values)
            if message:
                raise InputError(message)
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            raise InputError(f"unknown config key {prefix}{key}{hint}; valid keys: {', '.join(prefix + n for n in names)}")
        kwargs[key] = coerce(hints[key], value, f"{prefix}{key}")
    return cls(**kwargs)


def coerce(hint, value, key):
    if isinstance(value, (datetime.date, datetime.datetime)):
        # YAML reads 2016-07-01 as a date; keep it a string so configs stay plain data
        # (checkpoints hold the config and load with weights_only=True).
        value = value.isoformat()
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, key + ".")
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return coerce(inner[0], value, key) if len(inner) == 1 else value
    if hint is object:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise InputError(f"{key} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise InputError(f"{key} must be an integer, got {value!r}")
    if hint is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            # PyYAML (YAML 1.1) reads 1e-12 (no dot) as a string; accept it as the number it is.
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise InputError(f"{key} must be a number, got {value!r}")
        if not math.isfinite(number):
            # .inf / .nan would train to NaN metrics and report success (issue 10, case 10).
            raise InputError(f"{key} must be a finite number, got {number}")
        return number
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool):
            # YAML 1.1 reads off/on/no/yes as booleans; a string field meant the word.
            return "on" if value else "off"
        raise InputError(f"{key} must be a string, got {value!r}")
    if hint in (list, tuple):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise InputError(f"{key} must be a list, got {value!r}")
        return hint(value)
    if hint is dict:
        if not isinstance(value, dict):
            raise InputError(f"{key} must be a mapping, got {value!r}")
        return value
    return value


def merge(base, update):
    """Nested dict update: mappings merge key by key, everything else replaces."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def flatten(nested, prefix=""):
    """{"data.lookback": 32, ...}: a nested mapping's leaves by dotted key (an empty mapping is a leaf)."""
    out = {}
    for key, value in nested.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def to_dict(config):
    """A plain nested dict (YAML/JSON-ready) of a Config."""
    def clean(value):
        if isinstance(value, tuple):
            return [clean(v) for v in value]
        if isinstance(value, list):
            return [clean(v) for v in value]
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        return value
    return clean(dataclasses.asdict(config))


class _SafeLoaderDatesAsText(yaml.SafeLoader):
    """yaml.safe_load's loader without its date/time resolver: a split border stays the text the user
    wrote (times.to_ns reads it, one parser for every time), and 2020-13-01 is refused by name
    instead of raising out of YAML."""


_SafeLoaderDatesAsText.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}


def load_yaml(stream):
    """yaml.safe_load without dates: text stays text."""
    return yaml.load(stream, Loader=_SafeLoaderDatesAsText)       # (a SafeLoader: no Python objects are built)


def read_yaml(path):
    """A YAML mapping from a file, with one-line errors for missing or malformed files."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: config file not found; check the path")
    if path.is_dir():
        raise InputError(f"{path}: is a folder; give the config YAML file")
    try:
        with open(path, encoding="utf-8") as f:
            values = load_yaml(f)
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); a config "
                         "is a YAML text file: save it as UTF-8, or give the right file (an HDF5 file is data: "
                         "data.paths)") from None
    except yaml.constructor.ConstructorError as exc:
        # A tag such as !!python/object/apply: safe_load refuses to build objects on purpose.
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        tag = str(exc.problem).split("tag ")[-1] if exc.problem else "?"
        raise InputError(f"{path}:{where} uses the YAML tag {tag}, which is not allowed (config files hold "
                         "plain values: numbers, strings, lists, mappings); remove the tag") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise InputError(f"{path}:{where} is not valid YAML ({getattr(exc, 'problem', exc)}); fix the syntax") from None
    if values is None:
        raise InputError(f"{path}: the config file is empty; write config keys in it (see "
                         "docs/configuration.md) or leave out --config")
    if not isinstance(values, dict):
        raise InputError(f"{path}: must hold a mapping of config keys, got {type(values).__name__}")
    return values


def parse_override(text):
    """'data.lookback=128' -> {'data': {'lookback': 128}} (the value parsed as YAML)."""
    if "=" not in text:
        raise InputError(f"override {text!r} is not key=value; write e.g. data.lookback=128")
    key, raw = text.split("=", 1)
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    nested = value
    for part in reversed(key.strip().split(".")):
        if not part:
            raise InputError(f"override {text!r} has an empty key part; write e.g. data.lookback=128")
        nested = {part: nested}
    return nested
