import os

import h5py
import numpy as np
import pandas as pd
import pytest

import data.convert as convert_module
from data.catalog import open_catalog
from data.convert import convert
from data.layout import compression_name
from errors import InputError
from tests.conftest import STOCKS, needs_stocks


def frame(n, seed=0, start="2021-01-04"):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "date": pd.date_range(start, periods=n, freq="min"),
        "open": rng.normal(100, 1, n), "close": rng.normal(100, 1, n),
        "volume": rng.integers(0, 1000, n), "label": rng.integers(0, 3, n).astype(float),
    })


def test_csv_one_session_per_file(tmp_path):
    for name, n in (("AAA", 50), ("BBB", 80)):
        frame(n, seed=n).to_csv(tmp_path / f"{name}.csv", index=False)
    out = tmp_path / "out.h5"
    summary = convert([tmp_path / "AAA.csv", tmp_path / "BBB.csv"], out, targets=["label"])
    assert summary["sessions"] == {"AAA": 50, "BBB": 80}
    catalog = open_catalog(out)
    assert catalog.feature_names == ["open", "close", "volume"] and catalog.target_names == ["label"]
    ref = frame(80, seed=80)
    s = catalog.session("BBB")
    np.testing.assert_allclose(s.read_rows(0, 80)[:, 1], ref["close"].to_numpy(np.float32))
    np.testing.assert_array_equal(s.read_timestamps(0, 80), ref["date"].to_numpy("datetime64[ns]").astype(np.int64))


def test_long_csv_with_session_column_streams_in_chunks(tmp_path, monkeypatch):
    # Interleaved sessions, read 7 rows at a time and flushed every 20 rows: bounded memory.
    monkeypatch.setattr(convert_module, "CHUNK_ROWS", 7)
    monkeypatch.setattr(convert_module, "FLUSH_BYTES", 20 * 16)   # 20 rows of 2 float32 + a timestamp
    parts = []
    for i, sym in enumerate(("X", "Y", "Z")):
        f = frame(40, seed=i)
        f["sym"] = sym
        parts.append(f)
    long = pd.concat(parts).sort_values(["date", "sym"], kind="stable")
    long.to_csv(tmp_path / "long.csv", index=False)
    out = tmp_path / "long.h5"
    summary = convert([tmp_path / "long.csv"], out, session_column="sym", features=["open", "close"])
    assert summary["sessions"] == {"X": 40, "Y": 40, "Z": 40}
    catalog = open_catalog(out)
    for i, sym in enumerate(("X", "Y", "Z")):
        np.testing.assert_allclose(catalog.session(sym).read_rows(0, 40)[:, 0],
                                   frame(40, seed=i)["open"].to_numpy(np.float32))
        np.testing.assert_array_equal(catalog.session(sym).read_timestamps(0, 40),
                                      frame(40, seed=i)["date"].to_numpy("datetime64[ns]").astype(np.int64))


def test_session_column_with_a_derived_target_across_flushes(tmp_path, monkeypatch):
    # The look-ahead target of each session's last buffered row waits for its next flush.
    monkeypatch.setattr(convert_module, "CHUNK_ROWS", 5)
    monkeypatch.setattr(convert_module, "FLUSH_BYTES", 64)
    parts = []
    for i, sym in enumerate(("A", "B")):
        f = frame(30, seed=i)
        f["sym"] = sym
        parts.append(f)
    pd.concat(parts).sort_values(["date", "sym"], kind="stable").to_csv(tmp_path / "long.csv", index=False)
    out = tmp_path / "long.h5"
    convert([tmp_path / "long.csv"], out, session_column="sym", features=["open", "close"],
            target_from="close", target_transform="next_log_return")
    catalog = open_catalog(out)
    for i, sym in enumerate(("A", "B")):
        close = frame(30, seed=i)["close"].to_numpy()
        np.testing.assert_allclose(catalog.session(sym).read_targets(0, 29)[:, 0], np.log(close[1:] / close[:-1]),
                                   rtol=1e-5)


def test_session_column_with_an_empty_cell_is_refused(tmp_path):
    f = frame(10)
    f["sym"] = ["A"] * 4 + [None] + ["A"] * 5
    f.to_csv(tmp_path / "long.csv", index=False)
    with pytest.raises(InputError, match=r"long.csv: session column 'sym' is empty in row 5 \(1 = first data row\)"):
        convert([tmp_path / "long.csv"], tmp_path / "long.h5", session_column="sym")
    assert not (tmp_path / "long.h5").exists()


def test_derived_next_log_return_target(tmp_path, monkeypatch):
    monkeypatch.setattr(convert_module, "CHUNK_ROWS", 9)  # the look-ahead crosses chunk borders
    f = frame(30)
    f.to_csv(tmp_path / "a.csv", index=False)
    out = tmp_path / "a.h5"
    convert([tmp_path / "a.csv"], out, features=["open", "close"], target_from="close",
            target_transform="next_log_return")
    for indexed in (True, False):           # the index and the session's own attributes agree
        s = open_catalog(out, use_index=indexed).sessions[0]
        # The last row stays, its target missing (tomorrow's return is not known): `predict --latest`
        # forecasts from it; windows end where the targets do.
        assert s.n_rows == 30 and s.labelled_rows == 29 and s.target_lead == 1
        assert s.window_rows(labelled=True) == 29 and s.window_rows(labelled=False) == 30
    assert s.target_names == ["next_log_return_close"]
    close = f["close"].to_numpy()
    np.testing.assert_allclose(s.read_targets(0, 29)[:, 0], np.log(close[1:] / close[:-1]), rtol=1e-5)
    assert np.isnan(s.read_targets(29, 30)[0, 0])
    np.testing.assert_allclose(s.read_rows(0, 30)[:, 1], close.astype(np.float32))


def test_parquet(tmp_path):
    frame(60).to_parquet(tmp_path / "p.parquet")
    out = tmp_path / "p.h5"
    convert([tmp_path / "p.parquet"], out)
    s = open_catalog(out).sessions[0]
    assert s.n_rows == 60 and s.has_timestamps
    np.testing.assert_allclose(s.read_rows(0, 60)[:, 0], frame(60)["open"].to_numpy(np.float32))


@pytest.mark.parametrize("fmt", ["fixed", "table"])
def test_pandas_hdf(tmp_path, fmt):
    df = frame(70).set_index("date")
    path = tmp_path / f"pandas_{fmt}.h5"
    df.to_hdf(path, key="prices", format=fmt)
    out = tmp_path / "out.h5"
    convert([path], out)
    s = open_catalog(out).sessions[0]
    assert s.n_rows == 70 and s.has_timestamps
    np.testing.assert_allclose(s.read_rows(0, 70)[:, 1], df["close"].to_numpy(np.float32))


@pytest.mark.parametrize("compression", ["lzf", "gzip", "blosc-lz4"])
def test_compressed_output_reads_back(tmp_path, compression):
    frame(500).to_csv(tmp_path / "a.csv", index=False)
    out = tmp_path / "a.h5"
    convert([tmp_path / "a.csv"], out, compression=compression)
    with h5py.File(out, "r") as f:
        assert compression_name(f["a/features"]) == compression
    np.testing.assert_allclose(open_catalog(out).sessions[0].read_rows(0, 500)[:, 0],
                               frame(500)["open"].to_numpy(np.float32))


def test_csv_missing_column(tmp_path):
    frame(10).to_csv(tmp_path / "a.csv", index=False)
    with pytest.raises(InputError, match=r"a\.csv: feature column 'high' is missing; available: date, open"):
        convert([tmp_path / "a.csv"], tmp_path / "o.h5", features=["open", "high"])
    assert not (tmp_path / "o.h5").exists()


def test_later_file_missing_a_column(tmp_path):
    frame(10).to_csv(tmp_path / "a.csv", index=False)
    frame(10).drop(columns=["close"]).to_csv(tmp_path / "b.csv", index=False)
    with pytest.raises(InputError, match=r"b\.csv: column 'close' is missing"):
        convert([tmp_path / "a.csv", tmp_path / "b.csv"], tmp_path / "o.h5")


def test_failed_conversion_keeps_the_existing_output(tmp_path):
    frame(10).to_csv(tmp_path / "a.csv", index=False)
    out = tmp_path / "o.h5"
    convert([tmp_path / "a.csv"], out)
    before = out.read_bytes()
    with pytest.raises(InputError, match=r"o\.h5: already exists; pass --overwrite"):
        convert([tmp_path / "a.csv"], out)
    bad = tmp_path / "bad.csv"
    bad.write_text("date,open\n2020-01-01,1\n2020-01-02,abc\n")
    with pytest.raises(InputError, match=r"bad.csv: row 2 \(1 = first data row\), column 'open': 'abc' is not a number"):
        convert([bad], out, overwrite=True, features=["open"])
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".o.h5")] == []


def test_empty_csv_and_unknown_input(tmp_path):
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(InputError, match=r"e\.csv: the CSV is empty"):
        convert([tmp_path / "e.csv"], tmp_path / "o.h5")
    (tmp_path / "x.xlsx").write_text("")
    with pytest.raises(InputError, match=r"x\.xlsx: unknown input type"):
        convert([tmp_path / "x.xlsx"], tmp_path / "o.h5")


@needs_stocks
def test_the_505_stock_files_become_505_sessions(tmp_path):
    out = tmp_path / "stocks.h5"
    summary = convert([STOCKS], out, target_from="close", target_transform="next_log_return")
    assert len(summary["sessions"]) == 505
    catalog = open_catalog(out)
    assert len(catalog.sessions) == 505
    assert catalog.feature_names == ["open", "high", "low", "close", "volume"]
    lengths = sorted(s.n_rows for s in catalog.sessions)
    assert lengths[0] < 100 and lengths[-1] == 1259   # some short; the last row kept, its target missing
    assert {s.n_rows - s.labelled_rows for s in catalog.sessions} == {1}
    # The files with empty cells keep them as NaN (the loader's nan_policy decides).
    with_nan = [s.name for s in catalog.sessions if np.isnan(s.read_rows(0, s.n_rows)).any()]
    assert len(with_nan) == 9
    assert os.path.getsize(out) < 60 * 2**20


def test_rows_out_of_time_order_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(convert_module, "CHUNK_ROWS", 4)
    f = frame(10)
    f.loc[6, "date"] = pd.Timestamp("2020-01-01")
    f.to_csv(tmp_path / "a.csv", index=False)
    with pytest.raises(InputError, match=r"a\.csv: session 'a' row 6 goes back in time .*sort the rows"):
        convert([tmp_path / "a.csv"], tmp_path / "o.h5")


def test_a_column_named_twice_in_the_header_is_refused(tmp_path):
    # pandas renamed the second 'close' to 'close.1' and both became features.
    (tmp_path / "a.csv").write_text("date,close,close\n2021-01-04,1,2\n2021-01-05,3,4\n")
    with pytest.raises(InputError, match=r"a\.csv: the header names column 'close' twice"):
        convert([tmp_path / "a.csv"], tmp_path / "o.h5")
    assert not (tmp_path / "o.h5").exists()


def test_a_target_among_the_features_or_a_column_named_twice_is_refused(tmp_path):
    frame(20).to_csv(tmp_path / "a.csv", index=False)
    for kwargs, message in (({"features": ["open", "close"], "targets": ["close"]}, r"--targets 'close' is also in "
                             r"--features: row t's target would be one of row t's inputs"),
                            ({"features": ["open", "open"]}, r"--features names 'open' twice"),
                            ({"targets": ["label", "label"]}, r"--targets names 'label' twice")):
        with pytest.raises(InputError, match=message):
            convert([tmp_path / "a.csv"], tmp_path / "o.h5", **kwargs)
    assert not (tmp_path / "o.h5").exists()


def test_times_with_offsets_are_stored_in_utc_across_a_summer_time_change(tmp_path):
    # Local times with their offset, the clocks going forward between rows 1 and 2: one instant an hour.
    stamps = ["2021-03-28T00:30:00+01:00", "2021-03-28T01:30:00+01:00", "2021-03-28T03:30:00+02:00",
              "2021-03-28T04:30:00+02:00"]
    pd.DataFrame({"date": stamps, "close": [1.0, 2.0, 3.0, 4.0]}).to_csv(tmp_path / "a.csv", index=False)
    convert([tmp_path / "a.csv"], tmp_path / "o.h5")
    got = open_catalog(tmp_path / "o.h5").session("a").read_timestamps(0, 4)
    want = np.datetime64("2021-03-27T23:30", "ns").astype(np.int64) + np.arange(4) * 3_600 * 10**9
    np.testing.assert_array_equal(got, want)
    # a time without an offset among them has no known clock: refused
    pd.DataFrame({"date": stamps[:2] + ["2021-03-28T03:30:00"], "close": [1.0, 2.0, 3.0]}).to_csv(
        tmp_path / "b.csv", index=False)
    with pytest.raises(InputError, match=r"b\.csv: time column 'date' has values that are not dates"):
        convert([tmp_path / "b.csv"], tmp_path / "p.h5")


@pytest.mark.parametrize("where", ["alone", "among_clean_files", "in_a_later_chunk"])
def test_one_text_cell_in_a_numeric_column_is_named(tmp_path, monkeypatch, where):
    # Issue 10, case 8: the column was dropped with exit 0 (an INFO line); in a folder of clean
    # files the same cell gave a ValueError traceback.
    import data.convert as convert_module
    folder = tmp_path / "in"
    folder.mkdir()
    rows = frame(40)
    rows["volume"] = rows["volume"].astype(object)
    rows.loc[31, "volume"] = "n/a?"
    rows["note"] = "text"                                  # a real text column is still left out
    rows.to_csv(folder / "bad.csv", index=False)
    if where == "among_clean_files":
        frame(40).to_csv(folder / "a_clean.csv", index=False)
    if where == "in_a_later_chunk":
        monkeypatch.setattr(convert_module, "CHUNK_ROWS", 16)
    with pytest.raises(InputError, match=r"bad.csv: row 32 \(1 = first data row\), column 'volume': 'n/a\?' is "
                                         r"not a number; fix or empty that cell"):
        convert([folder], tmp_path / "o.h5")
    assert not (tmp_path / "o.h5").exists()


def test_a_zero_price_under_next_log_return_is_refused(tmp_path):
    # Issue 10, case 9: close = 0 wrote +-inf targets.
    rows = frame(20)
    rows.loc[7, "close"] = 0.0
    rows.to_csv(tmp_path / "s.csv", index=False)
    with pytest.raises(InputError, match=r"s.csv: session 's' row 6: close is [\d.]+ then 0, so its next_log_return "
                                         r"is infinite"):
        convert([tmp_path / "s.csv"], tmp_path / "o.h5", target_from="close", target_transform="next_log_return")


def test_a_released_session_writer_reopens_and_appends(tmp_path):
    # convert lets go of each session's HDF5 objects between flushes (issue 10, case 25: open
    # sessions held ~50 KB each); the next append must find and extend the same datasets.
    from data.layout import SessionWriter
    with h5py.File(tmp_path / "w.h5", "w") as h5file:
        writer = SessionWriter(h5file, "s", ["a", "b"], ["y"], with_timestamps=True)
        writer.release()                                  # before any row: empty datasets made now
        assert h5file["s/features"].shape == (0, 2)
        writer.append(np.ones((3, 2), np.float32), np.zeros((3, 1), np.float32), np.arange(3))
        writer.release()
        writer.append(np.full((2, 2), 2, np.float32), np.ones((2, 1), np.float32), np.arange(3, 5))
        writer.close()
        np.testing.assert_array_equal(h5file["s/features"][:, 0], [1, 1, 1, 2, 2])
        np.testing.assert_array_equal(h5file["s/timestamps"][:], np.arange(5))
        assert writer.rows == 5


def test_session_column_values_map_to_sessions_one_to_one_and_safely(tmp_path, capsys):
    import main
    rows = []
    for name in [".", "BRK/B", "BRK_B", "..", "50%"]:
        rows += [{"ticker": name, "date": f"2020-01-{d:02d}", "close": float(d)} for d in range(1, 6)]
    pd.DataFrame(rows).to_csv(tmp_path / "t.csv", index=False)
    out = tmp_path / "t.h5"
    assert main.main(["convert", str(tmp_path / "t.csv"), "--session-column", "ticker", "--out", str(out)]) == 0
    catalog = open_catalog([str(out)])
    assert sorted(s.name for s in catalog.sessions) == sorted(["%2E", "BRK%2FB", "BRK_B", "%2E%2E", "50%25"])
    assert all(s.n_rows == 5 for s in catalog.sessions)
    for bad, message in (("_h5series_index", "a name the session format reserves"),
                         ("features", "a name the session format reserves"),
                         (" A", "are one session name 'A'")):
        frame = pd.DataFrame([{"ticker": t, "date": "2020-01-01", "close": 1.0} for t in ("A", bad)])
        frame.to_csv(tmp_path / "bad.csv", index=False)
        capsys.readouterr()
        assert main.main(["convert", str(tmp_path / "bad.csv"), "--session-column", "ticker", "--out",
                          str(tmp_path / "bad.h5")]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "bad.h5").exists()


@pytest.mark.parametrize("unit,scale", [("s", 1), ("ms", 10**3), ("us", 10**6), ("ns", 10**9)])
def test_epoch_numbers_are_read_in_their_unit(tmp_path, unit, scale):
    """Unix-epoch seconds became nanoseconds since 1970 (exit 0; a backtest later said bars were 8.64e-05 s
    apart); float seconds lost their fraction."""
    seconds = 1_600_000_000 + 86_400 * np.arange(5)
    frame = pd.DataFrame({"timestamp": seconds * scale, "close": np.arange(5.0)})
    frame.to_csv(tmp_path / "a.csv", index=False)
    convert([str(tmp_path / "a.csv")], str(tmp_path / "a.h5"))
    stamps = open_catalog([str(tmp_path / "a.h5")]).sessions[0].read_timestamps(0, 5)
    assert (stamps == seconds * 10**9).all()
    if unit == "s":
        frame["timestamp"] = seconds + 0.25                                   # float seconds keep their fraction
        frame.to_csv(tmp_path / "f.csv", index=False)
        convert([str(tmp_path / "f.csv")], str(tmp_path / "f.h5"))
        stamps = open_catalog([str(tmp_path / "f.h5")]).sessions[0].read_timestamps(0, 5)
        assert (stamps == seconds * 10**9 + 250_000_000).all()
        frame["timestamp"] = np.arange(5) * 1e3 + 0.5                        # no epoch unit fits: refused
        frame.to_csv(tmp_path / "x.csv", index=False)
        with pytest.raises(InputError, match="no epoch time in s, ms, us or ns"):
            convert([str(tmp_path / "x.csv")], str(tmp_path / "x.h5"))


def test_an_input_given_twice_is_one_line(tmp_path, capsys):
    import main
    pd.DataFrame({"timestamp": ["2020-01-01", "2020-01-02"], "x": [1.0, 2.0]}).to_csv(tmp_path / "a.csv", index=False)
    for inputs in ([tmp_path / "a.csv", tmp_path / "a.csv"], [tmp_path, tmp_path / "a.csv"]):
        assert main.main(["convert", *map(str, inputs), "--out", str(tmp_path / "o.h5")]) == 2
        err = capsys.readouterr().err
        assert "a.csv: given twice" in err and "Traceback" not in err
    assert not (tmp_path / "o.h5").exists()


def test_column_names_over_64_kb_are_stored(tmp_path):
    """A 4,000-column CSV and make-demo --features 30000: "object header message is too large"."""
    import main
    names = [f"a_rather_long_column_name_{i:05d}" for i in range(4000)]
    frame = pd.DataFrame(np.arange(3 * 4000, dtype=float).reshape(3, 4000), columns=names)
    frame.insert(0, "timestamp", pd.date_range("2020", periods=3, freq="D"))
    frame.to_csv(tmp_path / "wide.csv", index=False)
    convert([str(tmp_path / "wide.csv")], str(tmp_path / "wide.h5"))
    session = open_catalog([str(tmp_path / "wide.h5")]).sessions[0]
    assert session.feature_names == names and session.read_rows(2, 3)[0, -1] == 3 * 4000 - 1
    assert main.main(["make-demo", "--out", str(tmp_path / "d.h5"), "--sessions", "1", "--rows", "10",
                      "--features", "30000"]) == 0
    assert len(open_catalog([str(tmp_path / "d.h5")]).feature_names) == 30000
