"""Times the user writes (split borders, --train-until, query times) as int64 ns since the epoch: one
parser for every time, below config (split borders are checked as times when a config loads)."""

import datetime
import warnings

import numpy as np

from errors import InputError


def to_ns(value, what="time"):
    """A timestamp as int64 ns since the epoch (int passes through; strings are parsed as ISO 8601). A time
    with a UTC offset (2017-05-01T09:30+02:00, ...Z) is taken in UTC, as `convert` stores such times; an
    empty or NaT time is refused (numpy reads it as NaT, which would sort before every row)."""
    if isinstance(value, (int, np.integer)):
        return int(value)
    text = str(value).strip()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")      # numpy reads an offset with a deprecation warning
            stamp = np.datetime64(text, "ns")
    except ValueError:
        stamp = None
    except (UserWarning, DeprecationWarning):
        stamp = _utc_stamp(text)
    if stamp is None or np.isnat(stamp):
        raise InputError(f"{what} {value!r} is not a time; use ISO like 2016-07-01 or an integer of ns since "
                         "the epoch")
    return int(stamp.astype(np.int64))


def _utc_stamp(text):
    """np.datetime64 (ns, UTC) of an ISO time with an offset, or None."""
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is not None:
        when = when.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    return np.datetime64(when, "ns")
