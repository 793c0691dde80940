"""The stock benchmark's features look only backwards; its target only one day ahead."""

import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_features_use_the_past_and_the_target_the_next_day(tmp_path):
    from stocks import session_frame
    rng = np.random.default_rng(0)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, 30)))
    df = pd.DataFrame({"date": pd.bdate_range("2017-01-02", periods=30), "open": close * 0.99,
                       "high": close * 1.01, "low": close * 0.98, "close": close,
                       "volume": rng.integers(1000, 2000, 30), "Name": "X"})
    df.loc[7, "open"] = np.nan                       # an empty cell drops its row, as in 9 real files
    df.to_csv(tmp_path / "X_data.csv", index=False)
    frame = session_frame(tmp_path / "X_data.csv")
    kept = df.dropna().reset_index(drop=True)
    c = kept["close"].to_numpy()
    # Row i of the frame is day i + 5 of the kept days (5 days of history for return_5d).
    days = frame["date"].map({d: i for i, d in enumerate(kept["date"])}).to_numpy()
    np.testing.assert_allclose(frame["log_return"], np.log(c[days] / c[days - 1]))
    np.testing.assert_allclose(frame["return_5d"], np.log(c[days] / c[days - 5]))
    np.testing.assert_allclose(frame["target"], np.log(c[days + 1] / c[days]))
    assert days[-1] == len(kept) - 2                 # the last day has no next day: no row
