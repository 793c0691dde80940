"""Window spec, column selection and the block plan shared by every dataset.

A window starting at row s has
  input rows   [s, s + lookback)
  target rows  [s + lookback - 1 + target_offset, ... + horizon)
target_offset is 1 when targets are feature columns (forecast the next rows) and
0 when they come from the `targets` dataset (a label belongs to its own row).
Windows never cross a session boundary or leave their split's row range.

The block plan is an int64 array of (session index, first_row, n_windows): block
b holds windows first_row + i * stride for i < n_windows, and is read with one
h5py call over rows [first_row, first_row + (n_windows - 1) * stride + span).
"""

import dataclasses
import logging

import numpy as np

from errors import InputError, first_repeated

log = logging.getLogger("h5series")

SESSION, FIRST_ROW, N_WINDOWS = 0, 1, 2  # columns of a block plan


@dataclasses.dataclass(frozen=True)
class WindowSpec:
    lookback: int                 # input rows per window (L)
    horizon: int = 1              # target rows per window (H)
    stride: int = 1               # rows between consecutive window starts
    target_offset: int = 1        # rows after the last input row where the target starts (see module doc)
    covariate_rows: int = 0       # rows read after the last target row: known-future values dated by the
                                  # targets (target_lead_rows) lie that far past them

    def __post_init__(self):
        for name in ("lookback", "horizon", "stride"):
            if getattr(self, name) < 1:
                raise InputError(f"data.{name} must be at least 1, got {getattr(self, name)}")
        if self.target_offset not in (0, 1):
            raise InputError(f"window.target_offset must be 0 or 1, got {self.target_offset}")

    @property
    def first_target(self):
        """Row of a window's first target, counted from its first input row."""
        return self.lookback - 1 + self.target_offset

    def last_input_row(self, first_rows):
        """Last input row of windows starting at first_rows (B,) -> (B,)."""
        return np.asarray(first_rows, np.int64) + (self.lookback - 1)

    def target_rows(self, first_rows):
        """Rows of the targets of windows starting at first_rows (B,) -> (B, H)."""
        return np.asarray(first_rows, np.int64)[:, None] + self.first_target + np.arange(self.horizon)

    def dated_rows(self, first_rows, target_lead):
        """Rows whose time each target describes (B, H): where known-future values are read."""
        return self.target_rows(first_rows) + target_lead

    @property
    def span(self):
        """Rows one window touches: inputs, targets, and known-future rows past them."""
        return self.first_target + self.horizon + self.covariate_rows

    @property
    def default_gap(self):
        """Embargo rows between splits: no window of one split shares a row with another's."""
        return self.span - 1

    def n_windows(self, n_rows):
        """Windows that fit in n_rows consecutive rows."""
        return max(0, (n_rows - self.span) // self.stride + 1)

    def block_rows(self, n_windows):
        """Rows read for a block of n_windows windows."""
        return (n_windows - 1) * self.stride + self.span if n_windows > 0 else 0


@dataclasses.dataclass(frozen=True)
class Columns:
    """Which columns feed the model and which are predicted."""

    feature_index: tuple          # indices into the session's features
    target_source: str            # "features" or "targets"
    target_index: tuple           # indices into target_source
    feature_names: tuple
    target_names: tuple
    future_names: tuple = ()      # known-future columns (data.known_future_columns)
    future_positions: tuple = ()  # their places among the model's inputs (feature_names)


def resolve_columns(catalog, feature_columns=(), target_columns=(), known_future_columns=()):
    """Map column names to indices. Empty features = all; empty targets = all of the
    `targets` dataset if the sessions have one, else all features (forecast them)."""
    for key, given in (("data.feature_columns", feature_columns), ("data.target_columns", target_columns),
                       ("data.known_future_columns", known_future_columns)):
        repeated = first_repeated(given)
        if repeated is not None:
            raise InputError(f"{key} lists {repeated!r} twice; name each column once")
    available = catalog.feature_names
    feature_columns = list(feature_columns) or list(available)
    feature_index = tuple(_index_of(name, available, "data.feature_columns") for name in feature_columns)
    if target_columns:
        in_targets = [c in catalog.target_names for c in target_columns]
        if all(in_targets):
            source, names = "targets", catalog.target_names
        elif not any(in_targets) and all(c in available for c in target_columns):
            source, names = "features", available
        else:
            missing = [c for c in target_columns if c not in catalog.target_names and c not in available]
            if missing:
                raise InputError(
                    f"data.target_columns: {missing[0]!r} is neither a target nor a feature column; "
                    f"choose from targets {catalog.target_names} or features {available}")
            raise InputError(
                f"data.target_columns {list(target_columns)} mixes `targets` and `features` columns; "
                "take all targets from one of them")
        target_index = tuple(_index_of(c, names, "data.target_columns") for c in target_columns)
    elif catalog.target_names:
        source, target_columns = "targets", list(catalog.target_names)
        target_index = tuple(range(len(target_columns)))
    else:
        source, target_columns = "features", feature_columns
        target_index = feature_index
    outside = [c for c in known_future_columns if c not in feature_columns]
    if outside:
        raise InputError(f"data.known_future_columns: {outside[0]!r} is not one of the model's inputs "
                         f"{list(feature_columns)}; known-future columns are inputs whose future values are known")
    positions = tuple(list(feature_columns).index(c) for c in known_future_columns)
    return Columns(feature_index, source, target_index, tuple(feature_columns), tuple(target_columns),
                   tuple(known_future_columns), positions)


def _index_of(name, names, key):
    try:
        return list(names).index(name)
    except ValueError:
        raise InputError(f"{key}: no column {name!r}; available: {', '.join(map(str, names))}") from None


def plan_blocks(ranges, spec, block_windows):
    """Cover every window of the given row ranges exactly once with blocks.

    ranges: iterable of (session index, start, stop); windows lie inside [start, stop).
    block_windows: most windows per block (choose so a block reads ~ a few chunks).
    Returns an int64 array (n_blocks, 3) of (session, first_row, n_windows).
    """
    if block_windows < 1:
        raise ValueError("block_windows must be at least 1")
    rows = []
    for session, start, stop in ranges:
        total = spec.n_windows(stop - start)
        for first in range(0, total, block_windows):
            rows.append((session, start + first * spec.stride, min(block_windows, total - first)))
    return np.asarray(rows, dtype=np.int64).reshape(-1, 3)


def block_windows_for(block_rows, spec):
    """Windows per block so that one block reads about block_rows rows."""
    return max(1, (block_rows - spec.span) // spec.stride + 1)


def valid_ranges(start, stop, bad_rows, spec):
    """Split [start, stop) around bad rows so no window contains one.

    bad_rows: sorted row indices (e.g. rows with NaN). A window starting at s is bad
    when a bad row b has s <= b < s + span. Returns a list of (start, stop).
    """
    bad_rows = np.asarray(bad_rows, dtype=np.int64)
    bad_rows = bad_rows[(bad_rows >= start) & (bad_rows < stop)]
    pieces, cursor = [], start
    for b in bad_rows:
        if b > cursor:
            pieces.append((cursor, int(b)))
        cursor = max(cursor, int(b) + 1)
    if cursor < stop:
        pieces.append((cursor, stop))
    # Each piece keeps windows only if it holds at least one; windows need whole spans.
    return [(a, b) for a, b in pieces if spec.n_windows(b - a) > 0]


class WindowIndex:
    """Global window number <-> (block, session, row), for per-index access."""

    def __init__(self, blocks, spec):
        self.blocks = blocks
        self.spec = spec
        self.ends = np.cumsum(blocks[:, N_WINDOWS]) if len(blocks) else np.zeros(0, np.int64)

    def __len__(self):
        return int(self.ends[-1]) if len(self.ends) else 0

    def locate(self, i):
        """(session index, first row) of window i."""
        if not 0 <= i < len(self):
            raise IndexError(f"window {i} outside [0, {len(self)})")
        b = int(np.searchsorted(self.ends, i, side="right"))
        before = int(self.ends[b - 1]) if b else 0
        session, first_row, _ = self.blocks[b]
        return int(session), int(first_row) + (i - before) * self.spec.stride
