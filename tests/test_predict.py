"""predict: the run's split, new files (--data), the step after the data (--latest); the file format
and its reader (issue 11, part 1)."""

import numpy as np
import pandas as pd
import pytest

import main
from data.catalog import open_catalog
from data.convert import convert
from data.predictions import NAT, read_attrs, read_predictions
from errors import InputError
from tests.conftest import STOCKS, needs_stocks, small_config, write_file
from trainers import run as run_module
from trainers.predict import predict


@pytest.fixture(scope="module")
def demo_run(demo_path, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    run_module.train(small_config(demo_path, tmp, "training.epochs=1", "output.tensorboard=false"), tmp / "run")
    return tmp / "run"


def prices_csv(folder, name, days, seed, start="2018-01-02"):
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, days)))
    frame = pd.DataFrame({"date": pd.bdate_range(start, periods=days), "close": close,
                          "volume": rng.integers(1_000, 2_000, days).astype(float)})
    path = folder / f"{name}.csv"
    frame.to_csv(path, index=False)
    return path, frame


def test_split_predictions_match_evaluate_and_their_rows(demo_run, demo_path, tmp_path):
    result = predict(demo_run, tmp_path / "pred.h5", "test")
    frame = read_predictions(tmp_path / "pred.h5")
    assert len(frame) == result["windows"] > 0
    assert list(frame.columns) == ["session", "input_end_row", "input_end_time", "horizon_step", "target_time",
                                   "target", "prediction", "truth"]
    # Scored in original units: the file's squared errors are evaluate's test mse.
    evaluated = run_module.evaluate(demo_run, "test")
    mse = float(np.mean((frame["prediction"].to_numpy(np.float64) - frame["truth"].to_numpy(np.float64)) ** 2))
    assert mse == pytest.approx(evaluated["mse"], rel=1e-5)
    # Each row's times are the data's: the input's last row, and the row its target describes (the demo's
    # target of row t is bar t + 1's return: target_lead_rows 1).
    attrs = read_attrs(tmp_path / "pred.h5")
    assert (attrs["lookback"], attrs["horizon"], attrs["first_target_offset"], attrs["target_lead_rows"]) == (16, 1, 15, 1)
    sessions = {s.name: s for s in open_catalog(demo_path).sessions}
    for i in (0, len(frame) // 2, len(frame) - 1):
        row = frame.iloc[i]
        s = sessions[row["session"]]
        end = int(row["input_end_row"])
        stamps = s.read_timestamps(end, min(end + 2, s.n_rows))
        assert row["input_end_time"] == pd.Timestamp(stamps[0])
        # The last row's target describes a bar after the data: its time is not known (NaT).
        assert row["target_time"] == pd.Timestamp(stamps[1]) if len(stamps) == 2 else pd.isna(row["target_time"])
        assert row["truth"] == pytest.approx(float(s.read_targets(end, end + 1)[0, 0]))
    # A part of the file, one session at a time, reads the same rows.
    name = frame["session"].iloc[0]
    part = read_predictions(tmp_path / "pred.h5", sessions=[name], windows=slice(0, 10))
    pd.testing.assert_frame_equal(part.reset_index(drop=True), frame[frame.session == name].head(10).reset_index(drop=True))


def test_train_split_predictions_are_in_order_and_a_backtest_names_them_in_sample(demo_run, demo_path, tmp_path,
                                                                                     capsys):
    # The train split came out in the training loader's shuffled order: a backtest refused the file
    # ("windows of session ... not stored together") although predict had written it.
    predict(demo_run, tmp_path / "train.h5", "train")
    import h5py
    with h5py.File(tmp_path / "train.h5", "r") as f:
        session, row = f["session"][:], f["input_end_row"][:]
    assert np.count_nonzero(np.diff(session)) == len(np.unique(session)) - 1        # each session once
    assert np.all(np.diff(row)[np.diff(session) == 0] > 0)                           # rows in order
    assert main.main(["backtest", "--prices", str(demo_path), "--return-column", "next_log_return", "--predictions",
                      str(tmp_path / "train.h5"), "--out", str(tmp_path / "bt"), "--no-plots", "--no-tensorboard",
                      "--periods-per-year", "98280"]) == 0
    assert "predictions of the run's train split, which it was fitted on: in-sample" in capsys.readouterr().out


def test_convert_keeps_the_last_row_and_latest_forecasts_the_next_day(tmp_path):
    # Tomorrow's return of the last day is unknown: convert keeps the day with a missing target; training
    # never reads it (nan_policy=error would stop on it) and --latest forecasts from it.
    frames = {}
    for i, days in enumerate((300, 260, 280)):
        _, frames[f"T{i}"] = prices_csv(tmp_path, f"T{i}", days, seed=i)
    convert([tmp_path / f"T{i}.csv" for i in range(3)], tmp_path / "prices.h5", target_from="close",
            target_transform="next_log_return")
    config = small_config(tmp_path / "prices.h5", tmp_path, "data.lookback=10", "training.epochs=1",
                          "data.nan_policy=error", "output.tensorboard=false")
    run_module.train(config, tmp_path / "run")
    predict(tmp_path / "run", tmp_path / "latest.h5", latest=True)
    frame = read_predictions(tmp_path / "latest.h5")
    assert sorted(frame["session"]) == ["T0", "T1", "T2"]       # exactly one forecast per session
    for _, row in frame.iterrows():
        days = frames[row["session"]]
        assert row["input_end_row"] == len(days) - 1
        assert row["input_end_time"] == days["date"].iloc[-1]    # made after the last close ...
        assert pd.isna(row["target_time"]) and np.isnan(row["truth"])   # ... for a day not in the data yet
        assert np.isfinite(row["prediction"])
    # The split's windows stop where the targets do: the test split's last truth is the day before.
    split = read_predictions(predict(tmp_path / "run", tmp_path / "test.h5", "test")["out"])
    last = split.groupby("session", observed=True)["input_end_row"].max()
    assert {k: int(v) for k, v in last.items()} == {k: len(f) - 2 for k, f in frames.items()}
    assert split["truth"].notna().all() and split["target_time"].notna().all()


def test_latest_of_feature_targets_is_the_horizon_after_the_data(demo_path, tmp_path):
    config = small_config(demo_path, tmp_path, "training.epochs=1", "data.target_columns=[ret, abs_ret]",
                          "data.horizon=3", "output.tensorboard=false")
    run_module.train(config, tmp_path / "run")
    predict(tmp_path / "run", tmp_path / "latest.h5", latest=True)
    frame = read_predictions(tmp_path / "latest.h5")
    n = open_catalog(demo_path).sessions[0].n_rows
    assert len(frame) == 4 * 3 * 2 and (frame["input_end_row"] == n - 1).all()
    assert list(frame["horizon_step"][:6]) == [1, 1, 2, 2, 3, 3] and list(frame["target"][:2]) == ["ret", "abs_ret"]
    assert frame["target_time"].isna().all() and frame["truth"].isna().all()
    with np.errstate(invalid="ignore"):
        assert np.isfinite(frame["prediction"]).all()


def test_predict_on_new_files(demo_path, demo_run, tmp_path):
    from data.demo import generate
    generate(tmp_path / "new.h5", sessions=2, rows=800, features=4, seed=7, progress=False)
    # Sessions the run never saw, global statistics: every window of the file is scored.
    result = predict(demo_run, tmp_path / "new_pred.h5", data=[tmp_path / "new.h5"])
    catalog = open_catalog(tmp_path / "new.h5")
    assert result["windows"] == sum(s.n_rows - 16 + 1 for s in catalog.sessions)
    frame = read_predictions(tmp_path / "new_pred.h5")
    assert frame["truth"].notna().all() and read_attrs(tmp_path / "new_pred.h5")["scope"] == "data"
    with pytest.raises(InputError, match=r"--fit-new-sessions fits per-session statistics, but the run normalizes "
                                         r"'global'"):
        predict(demo_run, tmp_path / "other.h5", data=[tmp_path / "new.h5"], fit_new_sessions=100)
    # The same windows through --latest: one each.
    assert predict(demo_run, tmp_path / "new_latest.h5", data=[tmp_path / "new.h5"], latest=True)["windows"] == 2


def demo_like(path, names, rows, rng):
    """A file of the demo's columns with other session names."""
    return write_file(path, {n: (rng.normal(size=(rows, 4)).astype(np.float32),
                                 rng.normal(0, 1e-3, size=(rows, 1)).astype(np.float32)) for n in names},
                      feature_names=["ret", "abs_ret", "log_volume", "signal_0"], target_names=["next_log_return"])


def test_per_session_runs_refuse_unknown_sessions_unless_told_which_rows_to_fit(demo_path, tmp_path, rng):
    config = small_config(demo_path, tmp_path, "training.epochs=1", "data.normalize=per_session",
                          "output.tensorboard=false")
    run_module.train(config, tmp_path / "run")
    demo_like(tmp_path / "new.h5", ["stock_0001", "NEW_A", "NEW_B"], 600, rng)   # one the run knows by name
    with pytest.raises(InputError, match=r"2 session\(s\) the run has no statistics for \('NEW_A', "
                                         r"'NEW_B'\).*--fit-new-sessions ROWS"):
        predict(tmp_path / "run", tmp_path / "p.h5", data=[tmp_path / "new.h5"])
    assert not (tmp_path / "p.h5").exists()
    predict(tmp_path / "run", tmp_path / "p.h5", data=[tmp_path / "new.h5"], fit_new_sessions=200)
    frame = read_predictions(tmp_path / "p.h5")
    # Targets from `targets` belong to the input's last row: nothing scored inside the fitted rows of the
    # new sessions; the known one (its statistics from the run) is scored from its first window.
    first_target = frame.groupby("session", observed=True)["input_end_row"].min()
    assert dict(first_target) == {"stock_0001": 15, "NEW_A": 200, "NEW_B": 200}
    # Each new session's statistics are its own first 200 rows'; the known one keeps the run's.
    from data.dataset import prepare_new_data
    from trainers.run import restore
    config, _, prepared, _ = restore(tmp_path / "run")
    new = prepare_new_data(config.data, [tmp_path / "new.h5"], prepared.normalizer, fit_new_sessions=200,
                           progress=False)
    stats = dict(zip(new.normalizer.session_names, new.normalizer.session_features))
    for session in new.catalog.sessions:
        expected = (prepared.normalizer.for_catalog(prepared.catalog, prepared.columns).session_features[1].mean
                    if session.name == "stock_0001" else session.read_rows(0, 200).astype(np.float64).mean(axis=0))
        np.testing.assert_allclose(stats[session.name].mean, expected, rtol=1e-6)
    with pytest.raises(InputError, match=r"has 600 rows; --fit-new-sessions 600 must leave rows"):
        predict(tmp_path / "run", tmp_path / "q.h5", data=[tmp_path / "new.h5"], fit_new_sessions=600)


def test_bad_predict_requests_are_one_line(demo_run, tmp_path, make_file, rng):
    out = tmp_path / "p.h5"
    with pytest.raises(InputError, match="--latest .* cannot be combined with --split"):
        predict(demo_run, out, "val", latest=True)
    with pytest.raises(InputError, match="--fit-new-sessions .* give --data"):
        predict(demo_run, out, fit_new_sessions=10)
    # Another file's columns: named, both the run's and the file's.
    other = make_file({"a": rng.normal(size=(100, 4)).astype(np.float32)}, name="other.h5",
                      feature_names=["ret", "abs_ret", "volume", "signal_0"])
    with pytest.raises(InputError, match=r"lacks the run's columns \['log_volume', 'next_log_return'\].*has features "
                                         r"\['ret', 'abs_ret', 'volume', 'signal_0'\]"):
        predict(demo_run, out, data=[other])
    # A session shorter than the lookback cannot give its latest window.
    short = write_file(tmp_path / "short.h5", {
        "long": (rng.normal(size=(100, 4)).astype(np.float32), rng.normal(size=(100, 1)).astype(np.float32)),
        "tiny": (rng.normal(size=(9, 4)).astype(np.float32), rng.normal(size=(9, 1)).astype(np.float32))},
        feature_names=["ret", "abs_ret", "log_volume", "signal_0"], target_names=["next_log_return"])
    with pytest.raises(InputError, match=r"session 'tiny' has 9 rows of data, fewer than the run's lookback \(16\)"):
        predict(demo_run, out, data=[short], latest=True, strict=True)
    assert not out.exists()
    # Through the command line: one line on stderr, exit 2 (without --strict it is skipped, named).
    assert main.main(["predict", "--run", str(demo_run), "--out", str(out), "--data", short, "--latest",
                      "--strict"]) == 2


def test_no_prediction_replaces_what_predict_reads(demo_run, demo_path, tmp_path):
    """--overwrite replaces an earlier output, never the data, the run's config, normalizer or checkpoint
    (the atomic rename would have put predictions in their place)."""
    import hashlib
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    data = tmp_path / "copy.h5"
    data.write_bytes(demo_path.read_bytes())
    for out, extra in ((demo_path, []), (data, ["--data", data]), (demo_run / "config.yaml", []),
                       (demo_run / "normalizer.json", []), (demo_run / "checkpoints" / "best.pt", [])):
        before = digest(out)
        assert main.main(["predict", "--run", str(demo_run), "--out", str(out), "--overwrite", *map(str, extra)]) == 2
        assert digest(out) == before, out
    with pytest.raises(InputError, match="which this command reads"):
        predict(demo_run, demo_run / "checkpoints" / "last.pt", overwrite=True)


def test_the_reader_refuses_other_files(tmp_path, make_file, rng):
    path = make_file({"a": rng.normal(size=(10, 2)).astype(np.float32)})
    with pytest.raises(InputError, match="not a prediction file"):
        read_predictions(path)
    with pytest.raises(InputError, match="missing.h5: no such file; give a prediction file"):
        read_predictions(tmp_path / "missing.h5")
    with pytest.raises(InputError, match="is a folder; give a prediction file"):
        read_predictions(tmp_path)
    (tmp_path / "p.csv").write_text("session,prediction\n")
    with pytest.raises(InputError, match="cannot be opened as a prediction file"):
        read_predictions(tmp_path / "p.csv")


@needs_stocks
def test_505_stocks_latest_gives_one_forecast_per_stock_after_its_last_close(tmp_path):
    convert([STOCKS], tmp_path / "stocks.h5", target_from="close", target_transform="next_log_return")
    config = small_config(tmp_path / "stocks.h5", tmp_path, "data.lookback=20", "data.nan_policy=ffill",
                          "training.epochs=1", "training.max_steps_per_epoch=5", "output.tensorboard=false")
    run_module.train(config, tmp_path / "run")
    assert main.main(["predict", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "next.h5"), "--latest"]) == 0
    frame = read_predictions(tmp_path / "next.h5")
    assert len(frame) == 505 and frame["session"].is_unique
    last_close = {}
    for path in sorted(STOCKS.glob("*.csv")):
        dates = pd.read_csv(path, usecols=["date"])["date"]
        last_close[path.stem] = pd.Timestamp(dates.iloc[-1])
    assert {row.session: row.input_end_time for row in frame.itertuples()} == last_close
    assert frame["target_time"].isna().all() and frame["truth"].isna().all()
    assert np.isfinite(frame["prediction"]).all()


def test_nat_is_pandas_missing_time():
    assert pd.isna(pd.Series(np.array([NAT], np.int64).view("datetime64[ns]")))[0]


def test_plot_draws_forecasts_beside_the_predictions(demo_run, tmp_path):
    result = predict(demo_run, tmp_path / "pred.h5", "test", plot=2)
    picture = tmp_path / "pred.png"
    assert result["plot"] == str(picture) and picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    latest = predict(demo_run, tmp_path / "next.h5", latest=True, plot=3)
    assert (tmp_path / "next.png").stat().st_size > 1000 and latest["sessions"] == 4
    # An existing picture is the user's: refused before the work, like --out.
    (tmp_path / "pred.h5").unlink()
    with pytest.raises(InputError, match=r"pred.png: already exists; pass --overwrite"):
        predict(demo_run, tmp_path / "pred.h5", "test", plot=2)
    assert not (tmp_path / "pred.h5").exists()
    with pytest.raises(InputError, match=r"--plot -1"):
        predict(demo_run, tmp_path / "other.h5", "test", plot=-1)


def test_latest_skips_a_short_session_by_name_unless_strict(demo_run, tmp_path, rng, capsys):
    """One session shorter than the lookback refused the whole universe (training skipped it)."""
    path = demo_like(tmp_path / "mixed.h5", ["long_a", "long_b"], 200, rng)
    short = demo_like(tmp_path / "short.h5", ["tiny"], 8, rng)
    result = predict(demo_run, tmp_path / "latest.h5", data=[path, short], latest=True)
    assert result["windows"] == 2
    err = capsys.readouterr().err
    assert "--latest skipped 1 session(s) with fewer rows than the run's lookback (16): short/tiny (8 rows)" in err \
        or "--latest skipped 1 session(s) with fewer rows than the run's lookback (16): tiny (8 rows)" in err, err
    with pytest.raises(InputError, match="has 8 rows of data, fewer than the run's lookback"):
        predict(demo_run, tmp_path / "strict.h5", data=[path, short], latest=True, strict=True)
    assert not (tmp_path / "strict.h5").exists()


def test_predictions_as_csv_equal_the_prediction_file(demo_run, tmp_path):
    import subprocess
    import sys

    from atomic import writer_tag
    predict(demo_run, tmp_path / "p.h5")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = tmp_path / f".p.csv.tmp-{dead}@{writer_tag().split('@')[1]}-h5"    # a predict killed mid-write
    stale.write_bytes(b"half")
    result = predict(demo_run, tmp_path / "p.csv")
    assert result["out"].endswith("p.csv") and sorted(p.name for p in tmp_path.iterdir()) == ["p.csv", "p.h5"]
    want = read_predictions(tmp_path / "p.h5")
    got = pd.read_csv(tmp_path / "p.csv", parse_dates=["input_end_time", "target_time"])
    assert list(got.columns) == list(want.columns) and len(got) == len(want)
    np.testing.assert_allclose(got["prediction"], want["prediction"], rtol=1e-6)
    assert (got["session"].astype(str) == want["session"].astype(str)).all()
    assert (got["input_end_time"].to_numpy() == want["input_end_time"].to_numpy()).all()


def test_progress_is_logged_when_output_is_not_a_terminal(demo_run, tmp_path, monkeypatch, caplog):
    """A 72 s predict printed nothing into a log file (tqdm shows no bar there)."""
    import logging

    import progress
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)
    with caplog.at_level(logging.INFO, logger="h5series"):
        predict(demo_run, tmp_path / "p.h5")
        run_module.evaluate(demo_run, "val")
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("predict: ") and "windows (" in line and "window/s" in line for line in lines), lines
    assert any(line.startswith("evaluate val: ") for line in lines), lines
