import numpy as np
import pytest

from data.catalog import open_catalog
from data.windows import WindowIndex, WindowSpec, block_windows_for, plan_blocks, resolve_columns, valid_ranges
from errors import InputError


def all_window_starts(blocks, spec):
    return [(int(s), int(r) + i * spec.stride) for s, r, n in blocks for i in range(n)]


def test_span_and_counts():
    forecast = WindowSpec(lookback=10, horizon=3)                  # targets = next rows of features
    labelled = WindowSpec(lookback=10, horizon=3, target_offset=0)  # targets = labels of own rows
    assert forecast.span == 13 and labelled.span == 12
    assert forecast.n_windows(13) == 1 and forecast.n_windows(12) == 0
    assert WindowSpec(lookback=4, stride=3).n_windows(20) == 6  # starts 0, 3, ..., 15
    assert forecast.block_rows(5) == 17


@pytest.mark.parametrize("stride", [1, 2, 5])
@pytest.mark.parametrize("per_block", [1, 7, 1000])
def test_block_plan_covers_every_window_exactly_once(stride, per_block):
    spec = WindowSpec(lookback=6, horizon=2, stride=stride)
    ranges = [(0, 0, 100), (1, 10, 57), (2, 0, 7), (3, 5, 13)]
    blocks = plan_blocks(ranges, spec, per_block)
    got = all_window_starts(blocks, spec)
    want = [(s, r) for s, a, b in ranges for r in range(a, b - spec.span + 1, stride)]
    assert got == want and len(set(got)) == len(got)
    assert (blocks[:, 2] <= per_block).all()
    # Every window's rows lie inside its range.
    for s, r in got:
        a, b = next((a, b) for ss, a, b in ranges if ss == s)
        assert a <= r and r + spec.span <= b


def test_block_windows_for_matches_block_rows():
    spec = WindowSpec(lookback=128, horizon=1)
    n = block_windows_for(4096, spec)
    assert spec.block_rows(n) == 4096


def test_valid_ranges_keep_windows_away_from_bad_rows():
    spec = WindowSpec(lookback=3, horizon=1)
    pieces = valid_ranges(0, 30, [5, 6, 20], spec)
    assert pieces == [(0, 5), (7, 20), (21, 30)]
    starts = [r for a, b in pieces for r in range(a, b - spec.span + 1)]
    for r in starts:
        assert not {5, 6, 20} & set(range(r, r + spec.span))
    # Every window that avoids the bad rows is kept.
    want = [r for r in range(0, 30 - spec.span + 1) if not {5, 6, 20} & set(range(r, r + spec.span))]
    assert starts == want


def test_window_index_locates_each_window():
    spec = WindowSpec(lookback=4, horizon=1, stride=2)
    blocks = plan_blocks([(0, 0, 40), (1, 3, 30)], spec, 4)
    index = WindowIndex(blocks, spec)
    assert [index.locate(i) for i in range(len(index))] == all_window_starts(blocks, spec)
    with pytest.raises(IndexError):
        index.locate(len(index))


def test_resolve_columns(make_file, rng):
    path = make_file({"a": (rng.normal(size=(10, 3)), rng.normal(size=(10, 2)))},
                     feature_names=["x", "y", "z"], target_names=["t1", "t2"])
    catalog = open_catalog(path)
    default = resolve_columns(catalog)
    assert default.target_source == "targets" and default.target_index == (0, 1)
    picked = resolve_columns(catalog, ["z", "x"], ["y"])
    assert picked.feature_index == (2, 0) and picked.target_source == "features" and picked.target_index == (1,)
    with pytest.raises(InputError, match=r"data.feature_columns: no column 'w'; available: x, y, z"):
        resolve_columns(catalog, ["w"])
    with pytest.raises(InputError, match=r"mixes `targets` and `features`"):
        resolve_columns(catalog, [], ["t1", "x"])
    with pytest.raises(InputError, match=r"'nope' is neither a target nor a feature"):
        resolve_columns(catalog, [], ["nope"])
    # A column named twice (a typo) would be two inputs or two targets, counted twice in the metrics.
    with pytest.raises(InputError, match=r"data.feature_columns lists 'x' twice"):
        resolve_columns(catalog, ["x", "z", "x"])
    with pytest.raises(InputError, match=r"data.target_columns lists 't1' twice"):
        resolve_columns(catalog, [], ["t1", "t1"])


def test_forecast_columns_default_to_all_features(ramp_file):
    cols = resolve_columns(open_catalog(ramp_file))
    assert cols.target_source == "features" and cols.target_names == ("a", "b", "c")


def test_bad_window_values():
    with pytest.raises(InputError, match=r"data.lookback must be at least 1, got 0"):
        WindowSpec(lookback=0)
    assert np.all(plan_blocks([], WindowSpec(3), 5).shape == (0, 3))
