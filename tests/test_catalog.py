from pathlib import Path

import h5py
import numpy as np
import pytest

from data.catalog import describe, open_catalog, resolve_paths
from data.layout import write_session
from errors import InputError
from tests.conftest import write_file


def test_sessions_in_nested_groups_and_at_the_root(tmp_path, rng):
    path = tmp_path / "nested.h5"
    with h5py.File(path, "w") as f:
        write_session(f, "equities/AAPL", rng.normal(size=(50, 2)), feature_names=["p", "v"])
        write_session(f, "equities/MSFT", rng.normal(size=(60, 2)), feature_names=["p", "v"])
        write_session(f, "fx/EURUSD", rng.normal(size=(70, 2)), feature_names=["p", "v"])
    root = tmp_path / "root.h5"
    with h5py.File(root, "w") as f:
        write_session(f, "/", rng.normal(size=(40, 2)), feature_names=["p", "v"])
    single = open_catalog(path)
    assert [s.name for s in single.sessions] == ["equities/AAPL", "equities/MSFT", "fx/EURUSD"]
    assert [s.n_rows for s in single.sessions] == [50, 60, 70]
    assert single.feature_names == ["p", "v"]
    both = open_catalog([path, root])
    assert [s.name for s in both.sessions][-1] == "root"
    assert both.sessions[0].name == "nested/equities/AAPL"
    assert both.n_rows == 220


def test_directory_glob_and_list_resolve_to_the_same_files(tmp_path, rng):
    for i in range(3):
        write_file(tmp_path / f"part{i}.h5", {"s": rng.normal(size=(20, 2))})
    (tmp_path / "notes.txt").write_text("not data")
    by_dir = resolve_paths(tmp_path)
    by_glob = resolve_paths(str(tmp_path / "part*.h5"))
    by_list = resolve_paths([str(tmp_path / f"part{i}.h5") for i in (0, 1, 2, 1)])
    assert by_dir == by_glob == by_list
    assert len(by_dir) == 3


def test_names_and_dtypes_are_read_without_data(make_file, rng):
    path = make_file({"a": (rng.normal(size=(30, 3)), rng.integers(0, 3, size=(30, 1)))},
                     feature_names=["x", "y", "z"], target_names=["label"])
    s = open_catalog(path).sessions[0]
    assert s.feature_names == ["x", "y", "z"] and s.target_names == ["label"]
    assert s.feature_dtype == "float64" and s.target_dtype == "int64"
    labels = s.read_targets(0, 30)
    assert labels.dtype == np.int64 and labels.shape == (30, 1)


def test_describe_reports_layout(make_file, rng):
    path = make_file({"a": rng.normal(size=(1000, 4)).astype(np.float32)}, compression="gzip")
    info = describe(path)
    entry = info["files"][0]["sessions"][0]
    assert info["n_sessions"] == 1 and info["n_rows"] == 1000
    assert entry["features"]["compression"] == "gzip"
    assert entry["features"]["chunks"][1] == 4
    assert entry["features"]["stored_bytes"] > 0


# --- bad input: one clear InputError naming the file/session, the value and the fix ----------

def test_missing_path():
    with pytest.raises(InputError, match=r"nope\.h5: no such file"):
        open_catalog("/tmp/definitely/nope.h5")


def test_not_an_hdf5_file(tmp_path):
    p = tmp_path / "data.h5"
    p.write_text("date,price\n2020-01-01,1\n")
    with pytest.raises(InputError, match=r"data\.h5: not an HDF5 file; convert it first"):
        open_catalog(p)


def test_truncated_file(make_file, rng):
    path = make_file({f"s{i}": rng.normal(size=(20_000, 8)).astype(np.float32) for i in range(4)})
    with open(path, "rb+") as f:
        f.truncate(f.seek(0, 2) // 2)
    with pytest.raises(InputError, match=r"truncated"):
        catalog = open_catalog(path)
        for s in catalog.sessions:
            s.read_rows(0, s.n_rows)


def test_session_without_features(tmp_path, rng):
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        write_session(f, "good", rng.normal(size=(10, 2)))
        f.create_dataset("bad/targets", data=rng.normal(size=(10, 1)))
    with pytest.raises(InputError, match=r"session '/bad' has no `features` dataset"):
        open_catalog(path)


def test_features_and_targets_without_columns_are_refused(tmp_path):
    # Issue 10, case 17: features of shape (N, 0) reached scikit-learn as a traceback.
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("s/features", data=np.zeros((100, 0), np.float32))
    with pytest.raises(InputError, match=r"session 's' `features` has shape \(100, 0\): no feature column"):
        open_catalog(path)
    with h5py.File(path, "w") as f:
        f.create_dataset("s/features", data=np.zeros((100, 2), np.float32))
        f.create_dataset("s/targets", data=np.zeros((100, 0), np.float32))
    with pytest.raises(InputError, match=r"session 's' `targets` has shape \(100, 0\): no target column"):
        open_catalog(path)


@pytest.mark.parametrize("shape", [(100,), (10, 5, 2)])
def test_features_must_be_2d(tmp_path, shape):
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("s/features", data=np.zeros(shape, np.float32))
    with pytest.raises(InputError, match=rf"has shape {tuple(shape)!r}".replace("(", r"\(").replace(")", r"\)")):
        open_catalog(path)


def test_non_numeric_features(tmp_path):
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("s/features", data=np.array([[b"a", b"b"]] * 5))
    with pytest.raises(InputError, match=r"session 's' `features` has dtype \|S1, which is not numeric"):
        open_catalog(path)


def test_feature_names_differ_between_sessions(tmp_path, rng):
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        write_session(f, "a", rng.normal(size=(10, 2)), feature_names=["open", "close"])
        write_session(f, "b", rng.normal(size=(10, 2)), feature_names=["open", "volume"])
    with pytest.raises(InputError, match=r"session 'b' has feature names different from session 'a' "
                                         r"\(close!=volume\)"):
        open_catalog(path)


@pytest.mark.parametrize("features,targets", [(["a", "b", "a"], None), (["a", "b"], ["a"]), (["a"], ["y", "y"])])
def test_a_column_name_used_twice_is_refused(tmp_path, rng, features, targets):
    # Columns are found by name: a second 'a' (or a target named like a feature) would be picked silently.
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        write_session(f, "s", rng.normal(size=(10, len(features))),
                      None if targets is None else rng.normal(size=(10, len(targets))),
                      feature_names=features, target_names=targets)
    with pytest.raises(InputError, match=r"session 's' names column '(a|y)' twice"):
        open_catalog(path)


def test_feature_dtypes_differ_between_sessions(tmp_path, rng):
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        write_session(f, "a", rng.normal(size=(10, 2)).astype(np.float32))
        write_session(f, "b", rng.normal(size=(10, 2)).astype(np.float64))
    with pytest.raises(InputError, match=r"features are float64 but session 'a' features are float32"):
        open_catalog(path)


def test_targets_of_another_length(tmp_path, rng):
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("s/features", data=rng.normal(size=(10, 2)))
        f.create_dataset("s/targets", data=rng.normal(size=(9, 1)))
    with pytest.raises(InputError, match=r"10 feature rows but 9 target rows"):
        open_catalog(path)


def test_empty_dataset(tmp_path):
    path = tmp_path / "empty.h5"
    with h5py.File(path, "w") as f:
        f.create_group("nothing_here")
    with pytest.raises(InputError, match=r"empty\.h5: holds no session"):
        open_catalog(path)


def test_external_link_refused_unless_allowed(tmp_path, rng):
    other = write_file(tmp_path / "other.h5", {"s": rng.normal(size=(10, 2))})
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        write_session(f, "local", rng.normal(size=(10, 2)))
        f["remote"] = h5py.ExternalLink(other, "/s")
    with pytest.raises(InputError, match=r"/remote is an external link to .*other\.h5:/s; refused"):
        open_catalog(path)
    catalog = open_catalog(path, allow_external_links=True)
    assert [s.name for s in catalog.sessions] == ["local", "remote"]
    assert catalog.session("remote").read_rows(0, 10).shape == (10, 2)


def test_external_link_as_features_refused(tmp_path, rng):
    other = write_file(tmp_path / "other.h5", {"s": rng.normal(size=(10, 2))})
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        f["s/features"] = h5py.ExternalLink(other, "/s/features")
    with pytest.raises(InputError, match=r"session 's' `features` is an external link"):
        open_catalog(path)


def test_virtual_dataset_reading_another_file_refused(tmp_path, rng):
    other = write_file(tmp_path / "other.h5", {"s": rng.normal(size=(10, 2))})
    layout = h5py.VirtualLayout(shape=(10, 2), dtype="f8")
    layout[:] = h5py.VirtualSource(other, "/s/features", shape=(10, 2))
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        f.create_group("v").create_virtual_dataset("features", layout)
    with pytest.raises(InputError, match=r"virtual dataset reading from .*other\.h5; refused"):
        open_catalog(path)
    assert open_catalog(path, allow_external_links=True).sessions[0].read_rows(0, 10).shape == (10, 2)


# --- the session index ---------------------------------------------------------------------

def test_index_gives_the_same_catalog_as_a_scan(tmp_path, rng):
    from data.catalog import write_index
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        for i, n in enumerate((30, 40, 50)):
            write_session(f, f"grp/s{i}", rng.normal(size=(n, 2)), rng.integers(0, 2, (n, 1)),
                          feature_names=["a", "b"], target_names=["y"], timestamps=np.arange(n))
    scanned = open_catalog(path)
    assert write_index(path) == 3
    with h5py.File(path, "r") as f:
        assert "_h5series_index" in f
    indexed = open_catalog(path)
    assert indexed.sessions == scanned.sessions
    assert open_catalog(path, use_index=False).sessions == scanned.sessions


def test_stale_index_is_caught_at_the_first_read(tmp_path, rng):
    from data.catalog import write_index
    path = write_file(tmp_path / "d.h5", {"s": rng.normal(size=(30, 2))})
    write_index(path)
    with h5py.File(path, "r+") as f:   # someone appends rows after indexing
        f["s/features"].resize(40, axis=0)
    s = open_catalog(path).sessions[0]
    with pytest.raises(InputError, match=r"session 's' has 40 rows but its index says 30; .*python main.py index"):
        s.read_rows(0, 5)


def test_converter_and_demo_files_carry_an_index(tmp_path):
    from data.demo import generate
    generate(tmp_path / "demo.h5", sessions=2, rows=100, features=3, progress=False)
    with h5py.File(tmp_path / "demo.h5", "r") as f:
        assert list(f["_h5series_index"]["rows"]) == [100, 100]


def _damage_header(path, member):
    """Overwrite the object header of `member` with garbage (a bad sector, a torn write)."""
    with h5py.File(path, "r") as f:
        address = h5py.h5o.get_info(f[member].id).addr
    with open(path, "r+b") as handle:
        handle.seek(address)
        handle.write(b"\xde\xad\xbe\xef" * 8)


@pytest.mark.parametrize("indexed", [False, True])
def test_a_damaged_session_header_is_one_line_never_a_missing_session(tmp_path, capsys, indexed):
    """h5py's group.get turned the damaged header's KeyError into None: `inspect` listed 2 of 3 sessions
    and `train` went on without the third."""
    import main
    from data.catalog import write_index
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        for i in range(3):
            write_session(f, f"s{i}", np.random.default_rng(i).random((200, 2)), feature_names=["a", "b"],
                          timestamps=np.arange(200) * 10**9, compression="gzip")
    if indexed:
        write_index(path)
    _damage_header(path, "s1" if not indexed else "s1/features")
    for argv in (["inspect", str(path)], ["similar", "index", "--data", str(path), "--columns", "a",
                                          "--lookback", "5", "--out", str(tmp_path / "idx")]):
        assert main.main(argv) == 2
        err = capsys.readouterr().err
        assert f"{path}: /s1" in err and "cannot be opened" in err and "damaged" in err, err
        assert "Traceback" not in err and "None rows" not in err
    assert not (tmp_path / "idx").exists()


def test_a_file_locked_by_a_writer_is_said_to_be_in_use(tmp_path, capsys):
    """`index F.h5` while another process writes it: a BlockingIOError traceback, and reads said the
    locked file was truncated ("re-create it": wrong advice)."""
    import subprocess
    import sys
    import time

    import main
    path = tmp_path / "f.h5"
    write_file(path, {"s0": np.ones((50, 2)), "s1": np.ones((60, 2))})
    holder = subprocess.Popen([sys.executable, "-c", "import h5py, sys, time; f = h5py.File(sys.argv[1], 'a'); "
                               "print('open', flush=True); time.sleep(60)", str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        for argv in (["index", str(path)], ["inspect", str(path)]):
            assert main.main(argv) == 2
            err = capsys.readouterr().err
            assert "in use by another process that is writing it" in err and "Traceback" not in err, err
            assert "truncated" not in err
    finally:
        holder.kill()
        holder.wait()
    assert main.main(["index", str(path)]) == 0


def test_too_many_open_files_is_one_line(tmp_path):
    import subprocess
    import sys
    for i in range(80):                   # inspect reads every session's time order: the files stay open
        write_file(tmp_path / f"f{i:02d}.h5", {"s": np.ones((40, 2))}, timestamps=np.arange(40) * 10**9)
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (40, 40)); import main; "
            "sys.exit(main.main(['inspect', sys.argv[1]]))")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "too many open files (this process may open 40)" in proc.stderr and "truncated" not in proc.stderr
