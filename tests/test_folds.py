"""Walk-forward fold borders (trainers/folds.py): test blocks tile the time from --first-test to the end
without overlap, validation just before each, training expanding or a moving window; bad plans are one line."""

import numpy as np
import pandas as pd
import pytest

from errors import InputError
from trainers.folds import _shift, parse_length, plan_folds

# business days 2013-2018, as the S&P 500 daily file's calendar
CALENDAR = pd.bdate_range("2013-01-02", "2018-02-07").values.astype("datetime64[ns]").astype(np.int64)


def _day(ns):
    return str(np.datetime64(ns, "ns"))[:10]


@pytest.mark.parametrize("when", ["2015-01-31T10:30", "2016-02-29", "2015-12-15", "2014-03-31"])
@pytest.mark.parametrize("count,unit,offset", [(1, "M", "months"), (-3, "M", "months"), (2, "Y", "years"),
                                               (-1, "Y", "years"), (10, "D", "days")])
def test_calendar_shifts_equal_pandas_dateoffset(when, count, unit, offset):
    t = pd.Timestamp(when)
    assert _shift(t.value, count, unit) == (t + pd.DateOffset(**{offset: count})).value


def test_test_blocks_tile_the_time_without_overlap():
    folds = plan_folds(CALENDAR, "2015-01-01", parse_length("63", "--test-length"), parse_length("21", "--val-length"))
    first = int(np.searchsorted(CALENDAR, pd.Timestamp("2015-01-01").value))
    assert folds[0].test_start == CALENDAR[first]
    for a, b in zip(folds, folds[1:]):
        assert a.test_end == b.test_start                             # no gap, no overlap
        assert np.searchsorted(CALENDAR, a.test_end) - np.searchsorted(CALENDAR, a.test_start) == 63
    assert folds[-1].test_end is None                                # the last runs to the data's end
    for f in folds:
        assert f.train_start == CALENDAR[0] and f.train_start < f.val_start < f.test_start      # expanding
        assert np.searchsorted(CALENDAR, f.test_start) - np.searchsorted(CALENDAR, f.val_start) == 21
    covered = sum(int(np.searchsorted(CALENDAR, f.test_end if f.test_end else CALENDAR[-1] + 1))
                  - int(np.searchsorted(CALENDAR, f.test_start)) for f in folds)
    assert covered == len(CALENDAR) - first                          # every day from the first test once


def test_a_moving_training_window_and_calendar_lengths():
    folds = plan_folds(CALENDAR, "2016-01-01", parse_length("3M", "--test-length"), parse_length("1M", "--val-length"),
                       parse_length("2Y", "--train-window"))
    assert [_day(f.test_start) for f in folds[:3]] == ["2016-01-01", "2016-04-01", "2016-07-01"]
    assert _day(folds[0].val_start) == "2015-12-01" and _day(folds[0].train_start) == "2013-12-02"   # 2 years back, a bar
    assert _day(folds[1].train_start) == "2014-03-03"


@pytest.mark.parametrize("args,expect", [
    (("2019-01-01", "63", "21"), "after the data's last bar"),
    (("2013-01-15", "63", "21"), "training bars before its validation block"),
    (("2015-01-01", "0", "21"), "a length must be at least 1"),
    (("2015-01-01", "63", "3 weeks"), "give a number of bars (63) or a duration"),
    (("soon", "63", "21"), "is not a time"),
])
def test_bad_plans_are_one_line(args, expect):
    first, test, val = args
    with pytest.raises(InputError, match=expect.replace("(", r"\(").replace(")", r"\)")):
        plan_folds(CALENDAR, first, parse_length(test, "--test-length"), parse_length(val, "--val-length"),
                   min_train_rows=30)
