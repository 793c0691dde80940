import multiprocessing as mp
import pickle

import numpy as np
import pytest

from data.catalog import open_catalog
from data.session import ChunkCache, HandlePool, _next_prime


def test_read_rows_is_one_contiguous_range(ramp_file):
    s = open_catalog(ramp_file).session("s1")
    rows = s.read_rows(10, 20)
    assert rows.shape == (10, 3) and rows.dtype == np.float32
    np.testing.assert_allclose(rows[:, 0], 1000 + np.arange(10, 20))
    np.testing.assert_allclose(rows[3], [1013.0, 1013.1, 1013.2], rtol=1e-6)


def test_read_rows_into_reused_buffer(ramp_file):
    s = open_catalog(ramp_file).session("s0")
    buf = np.zeros((64, 3), np.float32)
    out = s.read_rows(100, 132, out=buf)
    assert out.base is buf or out is buf[:32] or np.shares_memory(out, buf)
    np.testing.assert_allclose(buf[:32, 0], np.arange(100, 132))
    assert (buf[32:] == 0).all()


def test_read_outside_session_is_an_index_error(ramp_file):
    s = open_catalog(ramp_file).session("s2")
    with pytest.raises(IndexError):
        s.read_rows(290, 301)


def test_nothing_is_open_until_the_first_read(ramp_file):
    catalog = open_catalog(ramp_file)
    pool = catalog.sessions[0].pool
    assert pool.n_open == 0
    catalog.sessions[0].read_rows(0, 1)
    assert pool.n_open == 1


def test_pickled_session_carries_no_handle_and_still_reads(ramp_file):
    s = open_catalog(ramp_file).session("s1")
    s.read_rows(0, 5)
    copy = pickle.loads(pickle.dumps(s))
    assert copy.pool.n_open == 0
    np.testing.assert_allclose(copy.read_rows(0, 5)[:, 0], 1000 + np.arange(5))


def test_lru_keeps_at_most_max_open_sessions(make_file, rng):
    path = make_file({f"s{i}": rng.normal(size=(100, 2)).astype(np.float32) for i in range(10)})
    pool = HandlePool(max_open=3)
    catalog = open_catalog(path, pool=pool)
    for s in catalog.sessions:
        s.read_rows(0, 10)
        assert pool.n_open <= 3
    assert pool.n_open == 3
    # Re-reading an evicted session reopens it and returns the same values.
    first = catalog.sessions[0]
    np.testing.assert_array_equal(first.read_rows(0, 10), first.read_rows(0, 10))
    pool.close()
    assert pool.n_open == 0


def test_chunk_cache_settings_reach_each_dataset(ramp_file):
    pool = HandlePool(ChunkCache(nbytes=3 * 1024 * 1024, nslots=0, w0=1.0))
    s = open_catalog(ramp_file, pool=pool).session("s0")
    s.read_rows(0, 1)
    nslots, nbytes, w0 = pool.get(s.path, s.group).features.id.get_access_plist().get_chunk_cache()
    assert pool.get(s.path, s.group).targets is None
    assert nbytes == 3 * 1024 * 1024 and w0 == 1.0
    assert nslots == _next_prime(nslots) and nslots >= 100  # a prime, ~100x the writer's chunks that fit


def _child_read(session, queue):
    queue.put(session.read_rows(0, 4)[:, 0].tolist())


def test_reads_after_fork_reopen_in_the_child(ramp_file):
    s = open_catalog(ramp_file).session("s2")
    s.read_rows(0, 4)  # the parent has the file open when it forks
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_read, args=(s, queue))
    child.start()
    values = queue.get(timeout=30)
    child.join(30)
    assert child.exitcode == 0
    assert values == [2000.0, 2001.0, 2002.0, 2003.0]


def test_next_prime():
    assert [_next_prime(n) for n in (1, 2, 8, 100, 521)] == [2, 2, 11, 101, 521]


def test_timestamps_going_back_or_repeating_are_reported_and_refused(tmp_path, capsys):
    # Issue 10, case 7: accepted by inspect, index and train (and split.method=timestamps then raised KeyError).
    import main
    from config import DataConfig
    from data.dataset import prepare_data
    from data.splits import SplitSpec
    from errors import InputError
    from tests.conftest import write_file
    stamps = np.arange(600, dtype=np.int64) * 60_000_000_000
    stamps[400] = stamps[399]                                        # a repeated minute
    path = write_file(tmp_path / "d.h5", {"s": np.ones((600, 2), np.float32)}, timestamps=stamps)
    assert open_catalog(path).sessions[0].time_order_problem(rows_per_read=64) == (400, stamps[399], stamps[400])
    assert main.main(["inspect", path]) == 0
    assert "time order: session s: row 400 at 1970-01-01T06:39:00" in capsys.readouterr().out
    with pytest.raises(InputError, match=r"session 's' row 400 has time .* not after row 399's .* sort the rows by "
                                         r"time, or set data.check_time_order=false"):
        prepare_data(DataConfig(paths=[path], lookback=8), progress=False)
    assert prepare_data(DataConfig(paths=[path], lookback=8, check_time_order=False), progress=False)
    with pytest.raises(InputError, match=r"row 400 has time"):
        prepare_data(DataConfig(paths=[path], lookback=8, check_time_order=False,
                                split=SplitSpec(method="timestamps", val_start=10**12, test_start=2 * 10**12)),
                     progress=False)
