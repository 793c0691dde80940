import h5py
import numpy as np
import pytest

from data.catalog import open_catalog
from data.convert import convert
from data.layout import write_session
from data.splits import SplitSpec, split_ranges, to_ns
from data.windows import WindowSpec, plan_blocks
from errors import InputError
from tests.conftest import ETTH1, needs_etth1


def window_rows(blocks, spec):
    """{session: (set of input rows, set of target rows)} over all windows of a plan."""
    out = {}
    for s, first, n in blocks:
        inputs, targets = out.setdefault(int(s), (set(), set()))
        for i in range(n):
            r = int(first) + i * spec.stride
            inputs.update(range(r, r + spec.lookback))
            t0 = r + spec.lookback - 1 + spec.target_offset
            targets.update(range(t0, t0 + spec.horizon))
    return out


def test_fractions_with_default_gap(ramp_file):
    catalog = open_catalog(ramp_file)
    spec = WindowSpec(lookback=10, horizon=2)
    # (the exclusive layout: every window inside its range; the default takes val/test inputs from before)
    ranges = split_ranges(catalog, SplitSpec(fractions=(0.6, 0.2, 0.2), inputs_before_border=False), spec)
    gap = spec.span - 1
    # session s0 has 500 rows: train [0, 300), val [300 + gap, 400), test [400 + gap, 500)
    assert ranges["train"][0] == (0, 0, 300)
    assert ranges["val"][0] == (0, 300 + gap, 400)
    assert ranges["test"][0] == (0, 400 + gap, 500)


def test_explicit_row_borders_are_used_as_given(ramp_file):
    catalog = open_catalog(ramp_file)
    rows = {"train": [0, 200], "val": [150, 260], "test": [210, 300]}
    ranges = split_ranges(catalog, SplitSpec(method="rows", rows=rows), WindowSpec(lookback=50))
    assert [r for r in ranges["val"] if r[0] == 0] == [(0, 150, 260)]
    assert [r for r in ranges["test"] if r[0] == 2] == [(2, 210, 300)]


def test_timestamp_split_finds_rows_by_binary_search(tmp_path, rng):
    path = tmp_path / "t.h5"
    day = 86_400 * 10**9
    stamps = to_ns("2020-01-01") + np.arange(100, dtype=np.int64) * day
    with h5py.File(path, "w") as f:
        write_session(f, "a", rng.normal(size=(100, 2)), timestamps=stamps)
    catalog = open_catalog(path)
    spec = SplitSpec(method="timestamps", val_start="2020-02-10", test_start="2020-03-01", gap=0,
                     inputs_before_border=False)
    ranges = split_ranges(catalog, spec, WindowSpec(lookback=5))
    assert ranges["train"] == [(0, 0, 40)] and ranges["val"] == [(0, 40, 60)] and ranges["test"] == [(0, 60, 100)]


def test_holdout_sessions_stay_whole(ramp_file):
    catalog = open_catalog(ramp_file)
    spec = SplitSpec(holdout_test=("s1",))
    ranges = split_ranges(catalog, spec, WindowSpec(lookback=5))
    assert (1, 0, 700) in ranges["test"]
    assert all(r[0] != 1 for r in ranges["train"] + ranges["val"])
    with pytest.raises(InputError, match=r"split.holdout_val: 'zz\*' matches no session"):
        split_ranges(catalog, SplitSpec(holdout_val=("zz*",)), WindowSpec(lookback=5))


def test_short_sessions_are_skipped_with_a_count(ramp_file, caplog):
    catalog = open_catalog(ramp_file)
    ranges = split_ranges(catalog, SplitSpec(fractions=(1.0, 0, 0)), WindowSpec(lookback=400))
    assert {r[0] for r in ranges["train"]} == {0, 1}
    assert "skipped 1 of 3 sessions shorter than one window (401 rows)" in caplog.text


def test_every_session_too_short_is_an_error(ramp_file):
    with pytest.raises(InputError, match=r"every session is shorter than one window \(1001 rows"):
        split_ranges(open_catalog(ramp_file), SplitSpec(), WindowSpec(lookback=1000))


def test_split_without_windows_is_an_error(ramp_file):
    with pytest.raises(InputError, match=r"split 'val' has no complete window"):
        split_ranges(open_catalog(ramp_file), SplitSpec(fractions=(0.9, 0.05, 0.05)), WindowSpec(lookback=60))


def test_bad_split_config():
    with pytest.raises(InputError, match=r"split.fractions is \[0.8, 0.3, 0.1\]"):
        SplitSpec(fractions=(0.8, 0.3, 0.1))
    with pytest.raises(InputError, match=r"split.method is 'random'"):
        SplitSpec(method="random")
    with pytest.raises(InputError, match=r"val_start / split.test_start"):
        SplitSpec(method="timestamps", val_start="2020-01-01")


@needs_etth1
@pytest.mark.parametrize("target_offset", [0, 1])
@pytest.mark.parametrize("before_border", [False, True])
def test_no_leakage_on_etth1(tmp_path, target_offset, before_border):
    """With the default embargo gap, no val/test window's input or target touches a train target, whether
    val/test inputs stay inside their range or (the default) come from before its border."""
    path = tmp_path / "etth1.h5"
    convert([str(ETTH1)], path)
    catalog = open_catalog(path)
    spec = WindowSpec(lookback=96, horizon=24, target_offset=target_offset)
    ranges = split_ranges(catalog, SplitSpec(fractions=(0.6, 0.2, 0.2), inputs_before_border=before_border), spec)
    plans = {name: window_rows(plan_blocks(r, spec, 500), spec) for name, r in ranges.items()}
    train_targets = plans["train"][0][1]
    train_rows = plans["train"][0][0] | train_targets
    assert len(train_targets) > 10_000
    for name in ("val", "test"):
        inputs, targets = plans[name][0]
        assert not (inputs | targets) & train_targets
        if before_border:
            # Inputs are the past (after every train target); targets at least `gap` rows after the train part.
            assert min(inputs) > max(train_targets) and min(targets) - max(train_rows) > spec.span - 1
        else:
            # Stronger: at least `gap` rows separate the two splits' windows.
            assert min(inputs) - max(train_rows) > spec.span - 1
    val_rows = plans["val"][0][0] | plans["val"][0][1]
    assert not (plans["test"][0][0] | plans["test"][0][1]) & plans["val"][0][1]
    if not before_border:
        assert not (plans["test"][0][0] | plans["test"][0][1]) & val_rows


@needs_etth1
def test_etth1_published_borders_give_2785_test_windows(tmp_path):
    path = tmp_path / "etth1.h5"
    convert([str(ETTH1)], path)
    catalog = open_catalog(path)
    spec = WindowSpec(lookback=336, horizon=96)
    rows = {"train": [0, 8640], "val": [8640 - 336, 11520], "test": [11520 - 336, 14400]}
    ranges = split_ranges(catalog, SplitSpec(method="rows", rows=rows), spec)
    counts = {k: int(plan_blocks(v, spec, 1000)[:, 2].sum()) for k, v in ranges.items()}
    assert counts == {"train": 8640 - 336 - 96 + 1, "val": 2785, "test": 2785}


def test_inputs_before_border_keeps_targets_after_the_gap(ramp_file):
    catalog = open_catalog(ramp_file)
    window = WindowSpec(lookback=10, horizon=2)
    inside = split_ranges(catalog, SplitSpec(fractions=(0.6, 0.2, 0.2)), window)
    before = split_ranges(catalog, SplitSpec(fractions=(0.6, 0.2, 0.2), inputs_before_border=True), window)
    assert before["train"] == inside["train"]
    gap = window.span - 1
    # session s0 (500 rows): val border 300 -> first val target row 300 + gap, inputs from 10 rows before
    _, start, stop = before["val"][0]
    assert start + window.lookback == 300 + gap and stop == 400
    train_targets = window_rows(plan_blocks(before["train"], window, 50), window)[0][1]
    val_targets = window_rows(plan_blocks(before["val"], window, 50), window)[0][1]
    assert min(val_targets) - max(train_targets) > gap


def test_the_printed_split_says_what_each_part_predicts(tmp_path, rng):
    """By default a test part's first forecast is for the first row after the gap (its inputs come from
    before the border), and the split lines name the times each part predicts."""
    from config import load_config
    from data.dataset import prepare_data
    from trainers.run import describe_splits
    path = tmp_path / "d.h5"
    day = 86_400 * 10**9
    stamps = to_ns("2020-01-01") + np.arange(100, dtype=np.int64) * day
    with h5py.File(path, "w") as f:
        write_session(f, "a", rng.normal(size=(100, 2)), timestamps=stamps)
    config = load_config("default", overrides=[f"data.paths=[{path}]", "data.lookback=5", "data.horizon=1",
                                               "data.split.fractions=[0.6, 0.2, 0.2]"])
    prepared = prepare_data(config.data, progress=False)
    gap = prepared.window.default_gap
    assert prepared.predicted_span("test") == (stamps[80 + gap], stamps[99])
    assert prepared.predicted_span("val") == (stamps[60 + gap], stamps[79])
    lines = describe_splits(prepared)
    assert lines[2].strip().startswith("test") and f"predicting 2020-03-{21 + gap:02d} .. 2020-04-09" in lines[2]
