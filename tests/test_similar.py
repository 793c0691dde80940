"""similar index / query (issue 13): exact results against numpy and stumpy, the past-only rule,
IVF-PQ recall, the analog forecast as a prediction file, model embeddings, and bad input."""

import json

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

import main
from analysis.similar.index import SimilarIndex, build_index
from analysis.similar.query import QueryConfig, run_query
from analysis.similar.source import open_windows
from config import SimilarConfig, load_config
from data.layout import write_session
from data.predictions import read_attrs
from errors import InputError
from tests.conftest import small_config
from tests.helpers.market import random_prices, write_prices
from trainers import run as run_module

L = 10


def _config(*overrides):
    return load_config("quick_demo", overrides=list(overrides))


def _index(path, out, lookback=L, stride=1, split="all", *overrides, **kw):
    config = _config(*overrides)
    windows = open_windows(config, data=[path], columns=["close"], lookback=lookback, stride=stride, split=split, **kw)
    return build_index(windows, config.similar, out, progress=False)


def _query(index, tmp_path, name="res.h5", **kw):
    out = tmp_path / name
    kw.setdefault("price_column", "close")
    cfg = QueryConfig(index=str(index), out=str(out), progress=False, **kw)
    return run_query(cfg, SimilarConfig()), out


def _results(path):
    with h5py.File(path, "r") as f:
        return {name: f[name][:] for name in f}, dict(f.attrs)


def _znorm_windows(values, lookback):
    """Every window of a series z-normalized (population std), numpy only: (n_windows, lookback)."""
    w = np.lib.stride_tricks.sliding_window_view(values, lookback)
    std = w.std(1, keepdims=True)
    return np.where(std < 1e-7, 0.0, (w - w.mean(1, keepdims=True)) / np.where(std < 1e-7, 1, std))


def _queries_csv(path, pairs):
    pd.DataFrame(pairs, columns=["session", "time"]).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("similar")
    prices = random_prices(n_dates=260, n_assets=8, seed=3)
    path = write_prices(tmp / "prices.h5", prices)
    _index(path, tmp / "flat")
    return {"prices": prices, "path": path, "index": tmp / "flat"}


def _random_queries(prices, n, seed):
    rng = np.random.default_rng(seed)
    names = rng.choice(prices.columns, n)
    rows = rng.integers(L - 1, len(prices), n)
    return [(name, str(prices.index[r].date())) for name, r in zip(names, rows)]


def test_flat_index_equals_numpy_brute_force(market, tmp_path):
    prices = market["prices"]
    pairs = _random_queries(prices, 25, seed=1)
    summary, out = _query(market["index"], tmp_path, queries=str(_queries_csv(tmp_path / "q.csv", pairs)), k=6,
                          past_only=False)
    assert summary["queries"] == 25 and summary["neighbours_found"] == 25 * 6
    res, attrs = _results(out)
    names = json.loads(attrs["session_names"])
    # Brute force: every window of every session, z-normalized in float64 by numpy.
    series = {n: prices[n].to_numpy() for n in prices.columns}
    windows = {n: _znorm_windows(series[n], L) for n in prices.columns}
    for i in range(len(res["query_session"])):
        qn, qe = names[res["query_session"][i]], int(res["query_end_row"][i])
        q = windows[qn][qe - L + 1]
        cands = []
        for n in prices.columns:
            d = np.sqrt(((windows[n] - q) ** 2).sum(1))
            ends = np.arange(len(d)) + L - 1
            keep = ~((n == qn) & (np.abs(ends - qe) < L))           # no window sharing a row with the query
            cands += [(d[j], n, ends[j]) for j in np.flatnonzero(keep)]
        best = sorted(cands)[:6]
        got = [(names[s], int(e)) for s, e in zip(res["neighbour_session"][i], res["neighbour_end_row"][i])]
        assert got == [(n, int(e)) for _, n, e in best]
        np.testing.assert_allclose(res["distance"][i], [d for d, _, _ in best], atol=1e-5)


def test_z_normalized_distances_equal_stumpy_mass(tmp_path):
    stumpy = pytest.importorskip("stumpy")
    rng = np.random.default_rng(7)
    values = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, 1500)))
    values[700:720] = values[700]                                   # a flat stretch: constant windows
    stamps = pd.bdate_range("2010-01-01", periods=len(values)).to_numpy().astype("datetime64[ns]").astype(np.int64)
    path = tmp_path / "one.h5"
    with h5py.File(path, "w") as f:
        write_session(f, "ONE", values[:, None], timestamps=stamps, feature_names=["close"])
    _index(path, tmp_path / "idx", lookback=25)
    for end in (400, 719, 1300):
        t = str(pd.Timestamp(stamps[end]).date())
        _, out = _query(tmp_path / "idx", tmp_path, name=f"r{end}.h5", session="ONE", time=t, k=15, past_only=False)
        res, _ = _results(out)
        mass = stumpy.mass(values[end - 24:end + 1], values)           # distance to every 25-row window
        ends = np.arange(len(mass)) + 24
        got = res["neighbour_end_row"][0]
        np.testing.assert_allclose(res["distance"][0], mass[got - 24], atol=1e-4)
        allowed = np.abs(ends - end) >= 25
        np.testing.assert_allclose(res["distance"][0], np.sort(mass[allowed])[:15], atol=1e-4)


def test_past_only_never_returns_a_window_or_outcome_after_the_query(market, tmp_path):
    prices = market["prices"]
    pairs = _random_queries(prices, 60, seed=2)
    ahead = 3
    _, out = _query(market["index"], tmp_path, queries=str(_queries_csv(tmp_path / "q.csv", pairs)), k=5, ahead=ahead)
    res, attrs = _results(out)
    names = json.loads(attrs["session_names"])
    times = prices.index.to_numpy().astype("datetime64[ns]").astype(np.int64)
    assert attrs["past_only"]
    for i in range(len(res["query_session"])):
        qt, qn, qe = res["query_end_time"][i], names[res["query_session"][i]], res["query_end_row"][i]
        found = res["neighbour_session"][i] >= 0
        ends, sess = res["neighbour_end_row"][i][found], res["neighbour_session"][i][found]
        assert (res["neighbour_end_time"][i][found] < qt).all()
        assert (times[ends + ahead] <= qt).all()                       # what followed was known by then
        assert not any(names[s] == qn and abs(e - qe) < L for s, e in zip(sess, ends))
        # What followed = the price ahead rows later over the price at the window's end.
        expect = [prices[names[s]].iloc[e + ahead] / prices[names[s]].iloc[e] - 1 for s, e in zip(sess, ends)]
        np.testing.assert_allclose(res["neighbour_followed"][i][found], expect, rtol=1e-12)
        if found.any():
            assert res["mean"][i] == pytest.approx(np.mean(expect), rel=1e-12)
            assert res["share_positive"][i] == pytest.approx(np.mean(np.array(expect) > 0))
        # Early queries have few past windows: fewer than k then, never a later one.
        early = (times[:qe] < qt).sum() < 3 * L
        assert found.sum() == 5 or early
    # the query's own outcome (NaN when the data ends before it)
    last = res["query_end_row"] + ahead >= len(prices)
    assert np.isnan(res["query_followed"][last]).all() and np.isfinite(res["query_followed"][~last]).all()


def test_small_batches_give_what_one_batch_gives(market, tmp_path):
    """The first batch is resolved and counted while FAISS reads its file; later ones in the loop: the
    same queries in batches of 7 and in one give the same neighbours and outcomes."""
    queries = str(_queries_csv(tmp_path / "q.csv", _random_queries(market["prices"], 40, seed=5)))
    one, out_one = _query(market["index"], tmp_path, "one.h5", queries=queries, k=4, ahead=2)
    many, out_many = _query(market["index"], tmp_path, "many.h5", queries=queries, k=4, ahead=2, batch=7)
    assert one["queries"] == many["queries"] == 40 and one["neighbours_found"] == many["neighbours_found"]
    a, b = _results(out_one)[0], _results(out_many)[0]
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert set(one["timings"]) >= {"open_s", "index_read_s", "ready_s", "search_s", "faiss_s", "total_s"}


def test_ivfpq_recall_at_10_against_the_flat_index(tmp_path):
    """50k windows: the default IVF-PQ finds at least 90% of the exact 10 nearest (measured 0.98)."""
    prices = random_prices(n_dates=5009, n_assets=10, seed=5)
    path = write_prices(tmp_path / "p.h5", prices)
    exact = _index(path, tmp_path / "flat", 10, 1, "all", "similar.flat_max_vectors=100000")
    approx = _index(path, tmp_path / "ivf", 10, 1, "all", "similar.flat_max_vectors=1000")
    assert exact["kind"] == "flat" and approx["kind"] == "ivfpq" and exact["windows"] == approx["windows"] == 50_000
    pairs = _random_queries(prices, 200, seed=4)
    csv_path = _queries_csv(tmp_path / "q.csv", pairs)
    _, a = _query(tmp_path / "flat", tmp_path, name="a.h5", queries=str(csv_path), past_only=False)
    _, b = _query(tmp_path / "ivf", tmp_path, name="b.h5", queries=str(csv_path), past_only=False)
    ra, rb = _results(a)[0], _results(b)[0]
    key = lambda r, i: set(zip(r["neighbour_session"][i], r["neighbour_end_row"][i]))  # noqa: E731
    recall = np.mean([len(key(ra, i) & key(rb, i)) / 10 for i in range(200)])
    print(f"IVF-PQ recall@10 on 50,000 windows: {recall:.3f}")
    assert recall >= 0.9
    for nprobe in (-1, approx["nlist"] + 1):        # FAISS would raise OverflowError / silently cap
        with pytest.raises(InputError, match=f"has {approx['nlist']} clusters"):
            _query(tmp_path / "ivf", tmp_path, name="c.h5", queries=str(csv_path), nprobe=nprobe)
    assert not (tmp_path / "c.h5").exists()


def test_analog_forecast_is_a_prediction_file_backtest_takes(market, tmp_path):
    summary, out = _query(market["index"], tmp_path, split="test", k=5, forecast=str(tmp_path / "analog.h5"))
    res, _ = _results(out)
    attrs = read_attrs(tmp_path / "analog.h5")
    assert attrs["scope"] == "similar" and attrs["horizon"] == 1 and attrs["target_names"] == ["close_return_1"]
    with h5py.File(tmp_path / "analog.h5", "r") as f:
        np.testing.assert_allclose(f["prediction"][:, 0, 0], res["mean"].astype(np.float32), equal_nan=True)
        np.testing.assert_allclose(f["truth"][:, 0, 0], res["query_followed"].astype(np.float32), equal_nan=True)
        assert (f["input_end_time"][:] == res["query_end_time"]).all()
        assert np.all(np.diff(f["session"][:]) >= 0)                   # a session's windows together
    code = main.main(["backtest", "--prices", str(market["path"]), "--price-column", "close", "--predictions",
                      str(tmp_path / "analog.h5"), "--out", str(tmp_path / "bt"), "--no-plots", "--no-tensorboard",
                      "--k", "2"])
    assert code == 0
    report = json.loads((tmp_path / "bt" / "report.json").read_text())
    assert report["signal_analysis"]["coverage"]["periods_with_signal"] > 0
    # A forecast from all-times neighbours (a file from before --all-times was refused with --forecast) is
    # a look-ahead: the backtest refuses it.
    with h5py.File(tmp_path / "analog.h5", "r+") as f:
        f.attrs["past_only"] = False
    assert main.main(["backtest", "--prices", str(market["path"]), "--price-column", "close", "--predictions",
                      str(tmp_path / "analog.h5"), "--out", str(tmp_path / "bt2"), "--no-plots"]) == 2
    assert not (tmp_path / "bt2").exists()


def test_random_neighbours_follow_the_same_rules(market, tmp_path):
    pairs = _random_queries(market["prices"], 20, seed=9)
    _, out = _query(market["index"], tmp_path, queries=str(_queries_csv(tmp_path / "q.csv", pairs)), k=5,
                    random=True, seed=1)
    res, attrs = _results(out)
    assert attrs["random"]
    found = res["neighbour_session"] >= 0
    assert (res["neighbour_end_time"][found] < np.repeat(res["query_end_time"][:, None], 5, 1)[found]).all()


def test_csv_output_and_single_query_print(market, tmp_path, capsys):
    t = str(market["prices"].index[200].date())
    code = main.main(["similar", "query", "--index", str(market["index"]), "--session", "A03", "--time", t,
                      "--price-column", "close", "--k", "4", "--out", str(tmp_path / "r.csv"), "--plot",
                      str(tmp_path / "r.png")])
    assert code == 0
    text = capsys.readouterr().out
    assert "query A03 window ending" in text and text.count("\n") >= 7
    frame = pd.read_csv(tmp_path / "r.csv")
    assert len(frame) == 4 and list(frame["rank"]) == [1, 2, 3, 4] and (frame["query_session"] == "A03").all()
    assert (tmp_path / "r.png").stat().st_size > 10_000


def test_stride_and_split_limit_the_indexed_windows(market, tmp_path):
    s = _index(market["path"], tmp_path / "train", L, 5, "train")
    idx = SimilarIndex(tmp_path / "train")
    try:
        rows = np.asarray(idx.end_row)
        assert s["windows"] == idx.n and s["split"] == "train" and s["stride"] == 5
        first = np.asarray(idx.session)
        for sid in np.unique(first):
            assert (np.diff(rows[first == sid]) == 5).all()            # every 5th window end
        assert rows.max() < 0.7 * len(market["prices"])                # train rows only
    finally:
        idx.close()


@pytest.fixture(scope="module")
def gru_run(demo_path, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gru")
    run_module.train(small_config(demo_path, tmp, "training.epochs=1", "output.tensorboard=false"), tmp / "run")
    return tmp / "run"


def test_run_index_holds_the_models_embeddings(gru_run, tmp_path):
    config = _config()
    windows = open_windows(config, run=str(gru_run), stride=50)
    s = build_index(windows, config.similar, tmp_path / "emb", progress=False)
    assert s["vectors"] == "model" and s["model"] == "gru" and s["dim"] == 8
    loaded = run_module.load_run(gru_run)
    idx = SimilarIndex(tmp_path / "emb")
    try:
        for i in (0, idx.n // 2, idx.n - 1):
            session = loaded.prepared.catalog.sessions[int(idx.session[i])]
            e = int(idx.end_row[i])
            x = torch.from_numpy(session.read_rows(e - 15, e + 1))[None]
            x = loaded.prepared.normalizer.normalize_features(x)
            with torch.no_grad():
                expect = loaded.model.embed(x)[0].numpy()
            np.testing.assert_allclose(idx.vectors[i], expect, atol=1e-5)
    finally:
        idx.close()
    summary, out = _query(tmp_path / "emb", tmp_path, split="test", k=3, price_column=None,
                          return_column="next_log_return")
    assert summary["queries"] > 0 and summary["neighbours_found"] > 0


def _error(capsys, argv):
    code = main.main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and len(err.splitlines()) == 1, err
    return err


def test_an_empty_query_split_is_one_line_before_any_output(market, tmp_path, capsys):
    _index(market["path"], tmp_path / "ix", L, 1, "all", "data.split.fractions=[0.9,0.1,0.0]")
    out = tmp_path / "res.h5"
    err = _error(capsys, ["similar", "query", "--index", str(tmp_path / "ix"), "--split", "test", "--price-column",
                          "close", "--out", str(out)])
    assert "split 'test'" in err and "no window to query" in err
    assert not out.exists() and not list(tmp_path.glob("*res.h5*"))


@pytest.mark.parametrize("stride", [1, 3])
def test_queries_of_indexed_windows_start_without_torch(market, tmp_path, stride):
    """A raw-window index's queries read no window the index holds, so the command imports no torch
    (~2.7 s and ~180 MB here); a query between strided windows reads its window (torch then)."""
    import subprocess
    import sys
    from pathlib import Path
    index = market["index"] if stride == 1 else tmp_path / "ix"
    if stride != 1:
        _index(market["path"], index, L, stride)
    code = ("import sys, main; code = main.main(sys.argv[1:]); "
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH'); sys.exit(code)")
    day = str(market["prices"].index[101].date())               # row 101: not a window end at stride 3
    argv = ["similar", "query", "--index", str(index), "--session", "A01", "--time", day, "--price-column", "close",
            "--k", "3"]
    done = subprocess.run([sys.executable, "-c", code, *argv], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == ("NO-TORCH" if stride == 1 else "TORCH")
    assert f"query A01 window ending {day}" in done.stdout


def test_bad_queries_are_one_line(market, tmp_path, capsys):
    idx, prices = str(market["index"]), market["prices"]
    base = ["similar", "query", "--index", idx, "--price-column", "close"]
    assert "not in the index" in _error(capsys, base + ["--session", "NOPE", "--time", "2020-06-01"])
    assert "before the first full window" in _error(capsys, base + ["--session", "A01", "--time",
                                                                    str(prices.index[3].date())])
    assert "after session" in _error(capsys, base + ["--session", "A01", "--time", "2031-01-01"])
    assert "is not a time" in _error(capsys, base + ["--session", "A01", "--time", "soon"])
    assert "built on ['close']" in _error(capsys, base + ["--session", "A01", "--time", "2020-06-01", "--columns", "open"])
    assert "holds 10-row windows" in _error(capsys, base + ["--session", "A01", "--time", "2020-06-01", "--lookback", "20"])
    assert "ask for fewer" in _error(capsys, base + ["--session", "A01", "--time", "2020-06-01", "--k", "10000000"])
    assert "holds 10-row windows" in _error(capsys, base + ["--session", "A01", "--time", "2020-06-01", "--lookback", "0"])
    assert "leave out --nprobe" in _error(capsys, base + ["--session", "A01", "--time", "2020-06-01", "--nprobe", "4"])
    assert "no session has a row that far" in _error(capsys, base + ["--session", "A01", "--time", "2020-06-01",
                                                                     "--ahead", str(len(prices))])
    assert "one way" in _error(capsys, base + ["--session", "A01", "--time", "2020-06-01", "--split", "test"])
    assert "--price-column" in _error(capsys, ["similar", "query", "--index", idx, "--split", "test", "--out",
                                               str(tmp_path / "x.h5")])
    assert "need an output" in _error(capsys, base + ["--split", "test"])
    assert "a look-ahead" in _error(capsys, base + ["--split", "test", "--all-times", "--forecast", str(tmp_path / "f.h5")])
    assert "name a .png file" in _error(capsys, base + ["--session", "A01", "--time", "2020-06-01", "--plot",
                                                        str(tmp_path / "p.jpg")])
    assert "name a .h5 file" in _error(capsys, base + ["--split", "test", "--forecast", str(tmp_path / "f.csv")])
    (tmp_path / "bad.csv").write_text("name,when\nA01,2020-06-01\n")
    assert "session,time" in _error(capsys, base + ["--queries", str(tmp_path / "bad.csv"), "--out", str(tmp_path / "y.h5")])
    (tmp_path / "exists.h5").write_text("keep")
    assert "--overwrite" in _error(capsys, base + ["--split", "test", "--out", str(tmp_path / "exists.h5")])
    assert (tmp_path / "exists.h5").read_text() == "keep"
    assert "no such index folder" in _error(capsys, ["similar", "query", "--index", str(tmp_path / "none"),
                                                     "--session", "A01", "--time", "2020-06-01", "--price-column", "close"])
    assert not (tmp_path / "x.h5").exists() and not (tmp_path / "y.h5").exists()


def test_query_csvs_from_spreadsheets_and_bad_times(market, tmp_path, capsys):
    """A UTF-8 byte-order mark (Excel's "CSV UTF-8") is read; a time with a UTC offset is taken in UTC;
    an empty time, NaT, a short row, a file not in UTF-8 or a folder is one line naming it."""
    prices = market["prices"]
    day = prices.index[100]
    base = ["similar", "query", "--index", str(market["index"]), "--price-column", "close", "--k", "3"]
    plain, bom = tmp_path / "plain.csv", tmp_path / "bom.csv"
    plain.write_text(f"session,time\nA01,{day.date()}\n")
    bom.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    before = tmp_path / "before.csv"
    before.write_text(f"session,time\nA01,{prices.index[99].date()}\n")
    offset = tmp_path / "offset.csv"            # 01:00 at +02:00 is 23:00 UTC the day before: the bar before
    offset.write_text(f"session,time\nA01,{day.date()}T01:00:00+02:00\n")
    results = {}
    for path in (plain, bom, before, offset):
        assert main.main(base + ["--queries", str(path), "--out", str(tmp_path / f"{path.stem}.h5")]) == 0
        results[path.stem] = _results(tmp_path / f"{path.stem}.h5")[0]
    for same, as_ in (("bom", "plain"), ("offset", "before")):
        for name in ("query_end_row", "neighbour_end_row", "neighbour_session"):
            assert np.array_equal(results[same][name], results[as_][name])
    assert results["plain"]["query_end_row"][0] == results["before"]["query_end_row"][0] + 1
    for name, body in (("empty", b"session,time\nA01,\n"), ("nat", b"session,time\nA01,NaT\n"),
                       ("short", b"session,time\nA01\n")):
        (tmp_path / f"{name}.csv").write_bytes(body)
        assert "is not a time" in _error(capsys, base + ["--queries", str(tmp_path / f"{name}.csv"),
                                                         "--out", str(tmp_path / f"{name}.h5")])
    (tmp_path / "latin1.csv").write_bytes(b"session,time\nA0\xe9,2020-06-01\n")
    assert "not UTF-8" in _error(capsys, base + ["--queries", str(tmp_path / "latin1.csv"), "--out", str(tmp_path / "l.h5")])
    assert "is a folder" in _error(capsys, base + ["--queries", str(tmp_path), "--out", str(tmp_path / "d.h5")])
    assert not any((tmp_path / f"{n}.h5").exists() for n in ("empty", "nat", "short", "l", "d"))


def test_times_parse_as_iso_utc_and_refuse_nat():
    from data.splits import to_ns
    assert to_ns("2020-06-01T02:00+02:00") == to_ns("2020-06-01") == to_ns("2020-06-01T00:00:00Z")
    assert to_ns("2020-06-01 09:30:00.000000001") == to_ns("2020-06-01T09:30") + 1
    for bad in ("", " ", "NaT", "nat", "2020-13-01", "soon", "2020-06-01T00:00+25:00"):
        with pytest.raises(InputError):
            to_ns(bad)


def test_damaged_or_stale_indexes_are_refused(market, tmp_path, capsys):
    import shutil
    query = ["--session", "A01", "--time", str(market["prices"].index[100].date()), "--price-column", "close"]
    for damage, expect in (("truncate", "damaged or truncated"), ("settings", "settings.json: damaged"),
                           ("missing", "windows.h5 missing"), ("garbage", "FAISS cannot read it")):
        bad = tmp_path / damage
        shutil.copytree(market["index"], bad)
        if damage == "truncate":
            with open(bad / "windows.h5", "r+b") as f:
                f.truncate(1000)
        elif damage == "settings":
            (bad / "settings.json").write_text("{not json")
        elif damage == "missing":
            (bad / "windows.h5").unlink()
        else:
            size = (bad / "index.faiss").stat().st_size
            (bad / "index.faiss").write_bytes(b"\0" * size)
        out = tmp_path / f"{damage}.h5"
        assert expect in _error(capsys, ["similar", "query", "--index", str(bad), "--out", str(out)] + query)
        assert not out.exists() and not list(tmp_path.glob(f"*{damage}.h5*"))    # FAISS's read fails in a thread
    # data rewritten after indexing: rows would no longer match the ids
    data = tmp_path / "data.h5"
    shutil.copy(market["path"], data)
    _index(data, tmp_path / "stale")
    write_prices(data, random_prices(n_dates=200, n_assets=8, seed=4))
    assert "changed since index" in _error(capsys, ["similar", "query", "--index", str(tmp_path / "stale")] + query)


def test_bad_index_requests_are_one_line(market, tmp_path, capsys, gru_run):
    base = ["similar", "index", "--data", str(market["path"]), "--lookback", "10"]
    assert "--columns" in _error(capsys, base + ["--out", str(tmp_path / "a")])
    assert "no column 'open'" in _error(capsys, base + ["--columns", "open", "--out", str(tmp_path / "b")])
    assert "already exists" in _error(capsys, base + ["--columns", "close", "--out", str(market["index"])])
    assert "full window" in _error(capsys, ["similar", "index", "--data", str(market["path"]), "--lookback", "400",
                                            "--columns", "close", "--out", str(tmp_path / "c")])
    assert "trained on" in _error(capsys, ["similar", "index", "--run", str(gru_run), "--columns", "close", "--out",
                                           str(tmp_path / "d")])
    assert "reads 16 rows" in _error(capsys, ["similar", "index", "--run", str(gru_run), "--lookback", "20", "--out",
                                              str(tmp_path / "e")])
    # 0 is a value, not "not given" (it once fell back to the config's lookback and built that index)
    raw = ["similar", "index", "--data", str(market["path"]), "--columns", "close"]
    assert "data.lookback must be at least 1, got 0" in _error(capsys, raw + ["--lookback", "0", "--out", str(tmp_path / "f")])
    assert "data.stride must be at least 1, got 0" in _error(capsys, raw + ["--lookback", "10", "--stride", "0", "--out",
                                                                          str(tmp_path / "g")])
    assert "reads 16 rows" in _error(capsys, ["similar", "index", "--run", str(gru_run), "--lookback", "0", "--out",
                                              str(tmp_path / "h")])
    assert "stride must be at least 1" in _error(capsys, ["similar", "index", "--run", str(gru_run), "--stride", "0",
                                                          "--out", str(tmp_path / "i")])
    assert not any((tmp_path / n).exists() for n in "abcdefghi")


def test_no_output_replaces_the_index_or_its_data(market, tmp_path, capsys, gru_run):
    """--overwrite or not, a query never writes over the index's files or its data, two outputs never share
    a path, and an index never replaces its data or run (or a folder holding them)."""
    import hashlib
    import shutil
    index = tmp_path / "index"
    shutil.copytree(market["index"], index)
    digest = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in [*index.iterdir(), market["path"]]}
    base = ["similar", "query", "--index", str(index), "--session", "A01", "--time",
            str(market["prices"].index[100].date()), "--price-column", "close", "--overwrite"]
    for flag, path in (("--out", index / "windows.h5"), ("--forecast", index / "index.faiss"),
                       ("--plot", index / "settings.json"), ("--out", market["path"])):
        assert "which this command reads" in _error(capsys, base + [flag, str(path)])
    assert "give each output its own path" in _error(capsys, base + ["--out", str(tmp_path / "a.h5"), "--forecast",
                                                                     str(tmp_path / "a.h5")])
    assert not (tmp_path / "a.h5").exists()
    assert digest == {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in digest}
    build = ["similar", "index", "--data", str(market["path"]), "--columns", "close", "--lookback", "10", "--overwrite"]
    assert "which this command reads" in _error(capsys, build + ["--out", str(market["path"])])
    assert "would be replaced whole" in _error(capsys, build + ["--out", str(market["path"].parent)])
    assert "which this command reads" in _error(capsys, ["similar", "index", "--run", str(gru_run), "--overwrite",
                                                         "--out", str(gru_run)])
    assert market["path"].exists() and (gru_run / "config.yaml").exists()


def test_nan_windows_are_left_out_of_the_index(tmp_path):
    prices = random_prices(n_dates=120, n_assets=3, seed=1)
    path = tmp_path / "p.h5"
    with h5py.File(path, "w") as f:
        for name in prices.columns:
            values = prices[name].to_numpy().copy()
            if name == "A01":
                values[50] = np.nan
            write_session(f, name, values[:, None], feature_names=["close"],
                          timestamps=prices.index.to_numpy().astype("datetime64[ns]").astype(np.int64))
    s = _index(path, tmp_path / "idx")
    assert s["skipped_nonfinite"] == L and s["windows"] == 3 * (120 - L + 1) - L
    idx = SimilarIndex(tmp_path / "idx")
    try:
        a01 = np.asarray(idx.end_row)[np.asarray(idx.session) == 1]
        assert not ((a01 >= 50) & (a01 < 50 + L)).any()
    finally:
        idx.close()


def test_embed_is_what_the_head_reads():
    from models import Shapes, build_model
    from config import ModelConfig
    shapes = Shapes(lookback=16, horizon=2, n_features=3, n_targets=1)
    x = torch.randn(4, 16, 3)
    for name in ("gru", "lstm", "tcn", "patchtst"):
        model = build_model(ModelConfig(name=name), shapes).eval()
        with torch.no_grad():
            h = model.embed(x)
            assert h.dim() == 2 and h.shape[0] == 4
            if name != "patchtst":
                assert torch.allclose(model.head(h), model(x))
    # a PatchTST checkpoint from before embed(x) (the patch projection was called `embed`) still loads
    model = build_model(ModelConfig(name="patchtst"), shapes)
    state = {k.replace("patch_embed.", "embed."): v for k, v in model.state_dict().items()}
    build_model(ModelConfig(name="patchtst"), shapes).load_state_dict(state)



def _minute_file(path, rows=20_000, sessions=2, lead=1):
    """Long sessions (more rows than one outcome read spans): a price, its log return as a feature and
    the next row's log return as a target (row t describes t + lead, as convert's next_* targets)."""
    from data import layout
    from data.catalog import write_index
    rng = np.random.default_rng(7)
    with h5py.File(path, "w") as f:
        for s in range(sessions):
            price = 100 * np.exp(np.cumsum(rng.normal(0, 0.001, rows)))
            lr = np.concatenate([[np.nan], np.diff(np.log(price))])
            nxt = np.concatenate([lr[lead:], np.full(lead, np.nan)])
            w = layout.SessionWriter(f, f"m{s}", ["close", "lr"], ["next_lr"], with_timestamps=True,
                                     feature_dtype=np.float64, target_dtype=np.float64)
            w.append(np.stack([price, lr], 1), nxt[:, None], np.arange(rows, dtype=np.int64) * 60_000_000_000)
            w.set_attrs(**{layout.ATTR_TARGET_LEAD: lead})
            w.close()
    write_index(path)
    return path


def test_point_reads_equal_slices(tmp_path):
    from data.catalog import open_catalog
    session = open_catalog(_minute_file(tmp_path / "m.h5")).sessions[1]
    rows = np.array([0, 5, 8191, 8192, 15_000, 19_999])
    np.testing.assert_array_equal(session.read_points("close", rows), session.read_column("close", 0, 20_000)[rows])
    np.testing.assert_array_equal(session.read_points("next_lr", rows), session.read_column("next_lr", 0, 20_000)[rows])
    np.testing.assert_array_equal(session.read_points("timestamps", rows), rows * 60_000_000_000)
    with pytest.raises(IndexError):
        session.read_points("close", [5, 3])                   # not increasing
    with pytest.raises(IndexError):
        session.read_points("close", [20_000])                 # past the end
    np.testing.assert_array_equal(session.timestamp_rows(np.array([-5, 0, 1, 60_000_000_001, 8192 * 60_000_000_000, 10**18], np.int64)),
                                  [0, 0, 1, 2, 8192, 20_000])


@pytest.mark.parametrize("kind, column, ahead", [("price", "close", 1), ("log_return", "lr", 3),
                                                 ("log_return", "next_lr", 2)])
def test_outcomes_of_far_apart_windows_equal_the_formula(tmp_path, kind, column, ahead):
    """Windows far apart in long sessions are read as points (minute data); both ways equal the formula,
    the target's lead included, and rows past the end are NaN / NaT."""
    from analysis.similar.outcomes import ONE_READ_ROWS, Outcomes
    from data.catalog import open_catalog
    catalog = open_catalog(_minute_file(tmp_path / "m.h5"))
    price = {s.name: s.read_column("close", 0, s.n_rows) for s in catalog.sessions}
    session = np.array([0, 1, 0, 1, 0, 1, 1])
    end = np.array([40, 9, 19_990, 15_000, 19_999 - ahead, 19_999, 100])     # span > ONE_READ_ROWS: points
    assert end.max() - end.min() > ONE_READ_ROWS
    outcomes = Outcomes(catalog, column, kind, ahead)
    returns, known_at = outcomes.read(session, end), outcomes.times_at(session, end + ahead)
    for i, (s, e) in enumerate(zip(session, end)):
        p = price[catalog.sessions[s].name]
        if e + ahead < len(p):
            assert returns[i] == pytest.approx(p[e + ahead] / p[e] - 1, rel=1e-9, abs=1e-12)
            assert known_at[i] == (e + ahead) * 60_000_000_000
        else:
            assert np.isnan(returns[i]) and known_at[i] == np.datetime64("NaT").astype(np.int64)
    near = Outcomes(catalog, column, kind, ahead).read(np.array([0, 0]), np.array([40, 90]))    # one slice
    assert near == pytest.approx([price["m0"][40 + ahead] / price["m0"][40] - 1,
                                     price["m0"][90 + ahead] / price["m0"][90] - 1], rel=1e-9)


@pytest.mark.parametrize("stride, split", [(1, "all"), (3, "all"), (1, "train")])
def test_query_times_resolved_from_the_index_equal_the_data(market, tmp_path, stride, split):
    """Most query times are settled by the index's own window ends (no data read); every answer equals
    the data's last bar at or before the time, and the window's vector equals the one read from data."""
    from analysis.similar.query import _in_index, _resolve, windows_from_settings
    from analysis.similar.search import times_at
    prices = market["prices"]
    built = _index(market["path"], tmp_path / "ix", L, stride, split, "data.split.method=fractions")
    index = SimilarIndex(tmp_path / "ix")
    windows = windows_from_settings(built, SimilarConfig())
    rng = np.random.default_rng(11)
    stamps = prices.index.to_numpy().astype("datetime64[ns]").astype(np.int64)
    exact = stamps[rng.integers(L - 1, len(stamps), 40)]                       # bar times
    between = exact + rng.integers(1, 3 * 86_400 * 10**9, 40)                   # between bars, weekends
    times = np.concatenate([exact, between[between <= stamps[-1]]])
    names = rng.choice(prices.columns, len(times))
    pairs = [(n, str(pd.Timestamp(t))) for n, t in zip(names, times)]
    session, row, row_time, ids, _ = _resolve(windows, index, pairs, "x")
    settled = _in_index(index, np.array([list(prices.columns).index(n) for n in names]), times)[0] >= 0
    assert settled.all() if (stride, split) == (1, "all") else 0 < settled.sum() < len(times)
    expect = sorted((list(prices.columns).index(n), int(np.searchsorted(stamps, t, side="right") - 1))
                    for n, t in zip(names, times))
    assert list(zip(session.tolist(), row.tolist())) == expect
    np.testing.assert_array_equal(row_time, stamps[row])
    assert (ids >= 0).any() and (stride == 1 and split == "all") == (ids >= 0).all()
    table = np.stack([session, row - (L - 1), np.ones_like(row)], 1)
    read = np.concatenate([v for _, _, v in windows.batches(table)])
    stored = ids >= 0
    np.testing.assert_allclose(index.vectors.take(ids[stored]), read[stored], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(index.end_row[ids[stored]]), row[stored])
    # the time what followed a query is known at (row + ahead): from the index where it holds that row
    from analysis.similar.outcomes import Outcomes
    for ahead in (1, 4):
        at = times_at(index, Outcomes(windows.catalog, "close", "price", ahead), session, row + ahead)
        inside = row + ahead < len(stamps)
        np.testing.assert_array_equal(at[inside], stamps[(row + ahead)[inside]])
        assert (at[~inside] == np.datetime64("NaT").astype(np.int64)).all()
    index.close()


def _garbled_copy(prices, after, seed):
    """The prices with every row after `after` replaced by another random walk (same dates and sessions)."""
    garbled = prices.copy()
    later = garbled.index > after
    rng = np.random.default_rng(seed)
    garbled.loc[later] = 30 * np.exp(np.cumsum(rng.normal(0, 0.05, (int(later.sum()), prices.shape[1])), axis=0))
    return garbled


def test_ivfpq_analog_search_is_point_in_time_by_garbling(tmp_path, monkeypatch):
    """Every row after D rewritten with garbage: an IVF-PQ index trained until T <= D gives every past-only
    query ending at or before D bitwise the same neighbours, distances and analog forecast. Trained on the
    whole history it does not (the test would catch the look-ahead) and says it is not point-in-time."""
    import analysis.similar.search as search
    monkeypatch.setattr(search, "BRUTE_MAX", 0)         # every query through FAISS, as at 500-stock scale
    prices = random_prices(n_dates=2600, n_assets=8, seed=11)
    D, T = prices.index[2000], prices.index[1500]
    clean = write_prices(tmp_path / "clean.h5", prices)
    dirty = write_prices(tmp_path / "dirty.h5", _garbled_copy(prices, D, seed=12))
    rng = np.random.default_rng(13)
    rows = rng.integers(1500, 2001, 120)                # queries ending in [T, D]
    pairs = sorted({(prices.columns[rng.integers(8)], str(prices.index[r].date())) for r in rows})
    csv_path = _queries_csv(tmp_path / "q.csv", pairs)

    def run(path, name, **kw):
        config = _config("similar.flat_max_vectors=1000")
        windows = open_windows(config, data=[path], columns=["close"], lookback=L, stride=1, split="all")
        settings = build_index(windows, config.similar, tmp_path / name, progress=False, **kw)
        summary, out = _query(tmp_path / name, tmp_path, name=f"res-{name}.h5", queries=str(csv_path), k=10,
                              forecast=str(tmp_path / f"{name}-forecast.h5"))
        res = _results(out)[0]
        with h5py.File(tmp_path / f"{name}-forecast.h5", "r") as f:
            forecast = f["prediction"][:], dict(f.attrs)
        return settings, summary, res, forecast

    t_ns = int(np.datetime64(T, "ns").astype(np.int64))
    s_clean, sum_clean, a, fa = run(clean, "clean", train_until=t_ns)
    s_dirty, _, b, fb = run(dirty, "dirty", train_until=t_ns)
    assert s_clean["kind"] == "ivfpq" and s_clean["point_in_time"] and s_clean["train_until"].startswith(str(T.date()))
    assert sum_clean["point_in_time"] and sum_clean["point_in_time_note"] is None and fa[1]["point_in_time"]
    for name in ("neighbour_session", "neighbour_end_row", "neighbour_end_time", "distance", "neighbour_followed",
                 "mean", "found"):
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    np.testing.assert_array_equal(fa[0], fb[0])
    assert (a["found"] == 10).all()

    # Trained on every window (the old way): later rows changed the search, and it says so.
    s_all, sum_all, c, fc = run(clean, "all")
    _, _, d, _ = run(dirty, "all-dirty")
    assert not s_all["point_in_time"] and not sum_all["point_in_time"] and not fc[1]["point_in_time"]
    assert "whole history" in sum_all["point_in_time_note"]
    assert not np.array_equal(c["neighbour_end_row"], d["neighbour_end_row"])
    # A backtest of that forecast says it is not point-in-time.
    assert main.main(["backtest", "--prices", str(clean), "--price-column", "close", "--predictions",
                      str(tmp_path / "all-forecast.h5"), "--out", str(tmp_path / "bt"), "--no-plots",
                      "--no-tensorboard", "--k", "2"]) == 0
    assert json.loads((tmp_path / "bt" / "report.json").read_text())["predictions_point_in_time"] is False


def test_train_until_and_split_scope_the_ivfpq_training(tmp_path, capsys):
    prices = random_prices(n_dates=1200, n_assets=6, seed=2)
    path = write_prices(tmp_path / "p.h5", prices)
    common = ["similar", "index", "--data", str(path), "--columns", "close", "--lookback", str(L),
              "similar.flat_max_vectors=100"]
    assert main.main(common + ["--split", "test", "--out", str(tmp_path / "test")]) == 0
    settings = json.loads((tmp_path / "test" / "settings.json").read_text())
    # default for a split: the train split's end (0.7 of 1200 rows: the last train row is 839)
    assert settings["point_in_time"] and settings["train_until"].startswith(str(prices.index[839].date()))
    assert "point-in-time: queries ending at or after" in capsys.readouterr().out
    assert main.main(common + ["--train-until", "1990-01-01", "--out", str(tmp_path / "early")]) == 2
    assert "no indexed window ends before it" in capsys.readouterr().err
    assert main.main(common + ["--train-until", "soon", "--out", str(tmp_path / "bad")]) == 2
    assert "--train-until 'soon' is not a time" in capsys.readouterr().err
    assert not (tmp_path / "early").exists() and not (tmp_path / "bad").exists()


def test_bad_rows_of_a_query_file_are_listed_and_left_out_unless_strict(market, tmp_path, capsys):
    """One bad row among 600 aborted them all."""
    prices = market["prices"]
    good = [("A01", str(prices.index[100].date())), ("A02", str(prices.index[150].date()))]
    rows = good[:1] + [("NOPE", "2020-06-01"), ("A01", "soon"), ("A03", str(prices.index[2].date()))] + good[1:]
    path = _queries_csv(tmp_path / "q.csv", rows)
    base = ["similar", "query", "--index", str(market["index"]), "--price-column", "close", "--k", "3",
            "--queries", str(path)]
    assert main.main(base + ["--out", str(tmp_path / "r.h5")]) == 0
    err = capsys.readouterr().err
    assert "warning: 3 row(s) of" in err and "row 2: session 'NOPE' is not in the index" in err
    assert "row 3: time 'soon'" in err and "row 4: time" in err and "before the first full window" in err
    res, attrs = _results(tmp_path / "r.h5")
    assert attrs["queries"] == 2
    _, want = _query(market["index"], tmp_path, name="want.h5", queries=str(_queries_csv(tmp_path / "g.csv", good)), k=3)
    expected = _results(want)[0]
    for name in ("query_end_row", "neighbour_end_row", "distance"):
        np.testing.assert_array_equal(res[name], expected[name])
    assert "not in the index" in _error(capsys, base + ["--strict", "--out", str(tmp_path / "s.h5")])
    assert not (tmp_path / "s.h5").exists()


def test_query_reads_the_profile_and_overrides(market, tmp_path, capsys):
    """`similar query` ignored --profile/--config/key=value (SimilarConfig() defaults)."""
    base = ["similar", "query", "--index", str(market["index"]), "--price-column", "close", "--session", "A01",
            "--time", str(market["prices"].index[100].date())]
    assert "similar.batch_windows must be at least 1" in _error(capsys, base + ["similar.batch_windows=0"])
    assert "unknown config key similar.nope" in _error(capsys, base + ["similar.nope=1"])
    assert main.main(base + ["--profile", "default", "similar.batch_windows=64"]) == 0


def test_a_query_window_with_nan_is_left_out_or_refused(tmp_path, capsys):
    close = 50 + np.cumsum(np.random.default_rng(0).normal(0, 1, 200))
    close[60] = np.nan
    stamps = (np.datetime64("2020-01-01", "ns") + np.arange(200) * np.timedelta64(1, "D")).astype(np.int64)
    with h5py.File(tmp_path / "p.h5", "w") as f:
        write_session(f, "S", close[:, None], timestamps=stamps, feature_names=["close"])
    assert main.main(["similar", "index", "--data", str(tmp_path / "p.h5"), "--columns", "close", "--lookback", str(L),
                      "--out", str(tmp_path / "idx")]) == 0
    day = lambda i: str(np.datetime64(int(stamps[i]), "ns").astype("datetime64[D]"))  # noqa: E731
    csv_path = _queries_csv(tmp_path / "q.csv", [("S", day(150)), ("S", day(63))])    # the second holds row 60
    base = ["similar", "query", "--index", str(tmp_path / "idx"), "--price-column", "close", "--k", "3",
            "--queries", str(csv_path)]
    assert main.main(base + ["--out", str(tmp_path / "r.h5")]) == 0
    assert "row 2: the window of session 'S' ending at row 63 holds NaN/Inf" in capsys.readouterr().err
    assert _results(tmp_path / "r.h5")[1]["queries"] == 1
    assert "holds NaN/Inf" in _error(capsys, base + ["--strict", "--out", str(tmp_path / "s.h5")])
    assert not (tmp_path / "s.h5").exists()
