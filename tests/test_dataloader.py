import numpy as np
import pytest
import torch

from config import DataConfig, TrainingConfig
from data.dataloader import build_loader, loader_options
from data.dataset import prepare_data
from data.sampler import BlockSampler
from data.splits import SplitSpec
from errors import InputError


def prepared_ramp(path, **kwargs):
    kwargs.setdefault("split", SplitSpec(fractions=(0.6, 0.2, 0.2)))
    kwargs.setdefault("normalize", "none")
    kwargs.setdefault("block_rows", 40)
    return prepare_data(DataConfig(paths=[path], lookback=5, horizon=2, **kwargs), progress=False)


def all_windows(prepared, split):
    w = prepared.window
    return {(int(s), int(r) + i * w.stride) for s, r, n in prepared.blocks[split] for i in range(n)}


def collect(loader):
    ids, xs = [], []
    for batch in loader:
        ids.extend(zip(batch.session.tolist(), batch.row.tolist()))
        xs.append(batch.x)
    return ids, torch.cat(xs)


def training(**kwargs):
    kwargs.setdefault("num_workers", 0)
    kwargs.setdefault("batch_size", 16)
    kwargs.setdefault("round_blocks", 3)
    return TrainingConfig(**kwargs)


@pytest.mark.parametrize("workers", [0, 2])
def test_every_window_exactly_once_per_epoch(ramp_file, workers):
    prepared = prepared_ramp(ramp_file)
    loader = build_loader(prepared, "train", training(num_workers=workers), return_ids=True)
    for epoch in range(2):
        loader.set_epoch(epoch)
        ids, x = collect(loader)
        assert len(ids) == len(set(ids)) == prepared.n_windows("train")
        assert set(ids) == all_windows(prepared, "train")
        # ramp values: x[b, t, 0] = 1000 * session + row + t
        sessions, rows = np.array(ids).T
        np.testing.assert_allclose(x[:, :, 0].numpy(), (1000 * sessions + rows)[:, None] + np.arange(5))


def test_epochs_are_shuffled_differently_and_reproducibly(ramp_file):
    prepared = prepared_ramp(ramp_file)
    orders = []
    for _ in range(2):
        loader = build_loader(prepared, "train", training(), seed=7, return_ids=True)
        per_epoch = []
        for epoch in range(2):
            loader.set_epoch(epoch)
            per_epoch.append(collect(loader)[0])
        orders.append(per_epoch)
    assert orders[0] == orders[1]                  # same seed, same order
    assert orders[0][0] != orders[0][1]            # a new order each epoch
    assert orders[0][0] != sorted(orders[0][0])    # and not the file order


def test_shards_over_ranks_are_disjoint_and_complete(ramp_file):
    prepared = prepared_ramp(ramp_file)
    seen = []
    for rank in range(3):
        loader = build_loader(prepared, "train", training(), rank=rank, world_size=3, return_ids=True)
        loader.set_epoch(4)
        seen.append(set(collect(loader)[0]))
    assert sum(len(s) for s in seen) == prepared.n_windows("train")
    assert set.union(*seen) == all_windows(prepared, "train")


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_block_shares_are_balanced_disjoint_and_complete(world_size):
    rng = np.random.default_rng(world_size)
    n_windows = rng.integers(1, 40, size=23)
    blocks = np.stack([np.arange(23) % 5, rng.integers(0, 1000, size=23), n_windows], axis=1)
    stride = 3
    every = sorted((s, r + i * stride) for s, r, n in blocks for i in range(n))
    seen, sizes = [], []
    for rank in range(world_size):
        sampler = BlockSampler(blocks, stride, shuffle=True, seed=1, rank=rank, world_size=world_size)
        table = sampler.order(3)
        assert (table[:, 2] > 0).all()
        windows = [(s, r + i * stride) for s, r, n in table for i in range(n)]
        seen.extend(windows)
        sizes.append(len(windows))
    assert sorted(seen) == every                        # disjoint and complete
    assert max(sizes) - min(sizes) <= 1                 # balanced to one window


@pytest.mark.parametrize("batch_size", [1, 7, 16, 100])
def test_ranks_make_equal_batch_counts_and_see_every_window_once(ramp_file, batch_size):
    prepared = prepared_ramp(ramp_file)
    total = prepared.n_windows("train")
    world_size = 3 if total % 3 else 4                   # shares that differ by one window
    assert total % world_size
    seen, counts = [], []
    for rank in range(world_size):
        loader = build_loader(prepared, "train", training(batch_size=batch_size), rank=rank,
                              world_size=world_size, return_ids=True)
        loader.set_epoch(2)
        batches = list(loader)
        counts.append((len(batches), len(loader)))
        seen.extend((int(s), int(r)) for b in batches for s, r in zip(b.session, b.row))
    assert len({c for c in counts}) == 1 and counts[0][0] == counts[0][1]
    assert sorted(seen) == sorted(all_windows(prepared, "train"))


def test_drop_last_gives_every_rank_the_same_full_batches(ramp_file):
    prepared = prepared_ramp(ramp_file)
    for rank in range(3):
        loader = build_loader(prepared, "train", training(batch_size=7, drop_last=True), rank=rank,
                              world_size=3)
        sizes = [len(b.x) for b in loader]
        assert sizes == [7] * len(loader) and len(loader) == prepared.n_windows("train") // 3 // 7


@pytest.mark.parametrize("stop_after", [1, 4, 9, 17])
def test_resume_continues_the_same_order(ramp_file, stop_after):
    prepared = prepared_ramp(ramp_file)
    cfg = training(batch_size=13)     # 13 does not divide the rounds: batches span rounds
    full = build_loader(prepared, "train", cfg, seed=3, return_ids=True)
    full.set_epoch(2)
    want = [(b.x, b.session, b.row) for b in full]

    first = build_loader(prepared, "train", cfg, seed=3, return_ids=True)
    first.set_epoch(2)
    got = []
    for i, b in enumerate(first):
        got.append((b.x, b.session, b.row))
        if i + 1 == stop_after:
            state = first.state_dict()
            break
    resumed = build_loader(prepared, "train", cfg, seed=3, return_ids=True)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)
    got.extend((b.x, b.session, b.row) for b in resumed)
    assert len(got) == len(want)
    for (gx, gs, gr), (wx, ws, wr) in zip(got, want):
        assert torch.equal(gs, ws) and torch.equal(gr, wr) and torch.equal(gx, wx)
    assert resumed.state_dict() == {"epoch": 3, "round": 0, "window": 0}


def test_validation_runs_in_order(ramp_file):
    prepared = prepared_ramp(ramp_file)
    loader = build_loader(prepared, "val", training(), return_ids=True)
    ids, _ = collect(loader)
    expected = [(int(s), int(r) + i) for s, r, n in prepared.blocks["val"] for i in range(n)]
    assert ids == expected
    assert len(loader) == -(-len(expected) // 16)


def test_normalization_is_applied_on_the_batch(ramp_file):
    prepared = prepared_ramp(ramp_file, normalize="global", normalize_exact=True)
    loader = build_loader(prepared, "train", training(), return_ids=True)
    batch = next(iter(loader))
    stats = prepared.normalizer.features
    s, r = int(batch.session[0]), int(batch.row[0])
    raw = prepared.catalog.sessions[s].read_rows(r, r + 7)
    np.testing.assert_allclose(batch.x[0].numpy(), (raw[:5] - stats.mean) / stats.std, rtol=1e-5)
    tstats = prepared.normalizer.targets
    np.testing.assert_allclose(batch.y[0].numpy(), (raw[5:7] - tstats.mean) / tstats.std, rtol=1e-5)


def test_per_session_normalization_in_the_loader(ramp_file):
    prepared = prepared_ramp(ramp_file, normalize="per_session", normalize_exact=True)
    loader = build_loader(prepared, "train", training(), return_ids=True)
    for batch in loader:
        for i in range(len(batch.x)):
            s, r = int(batch.session[i]), int(batch.row[i])
            stats = prepared.normalizer.session_features[s]
            raw = prepared.catalog.sessions[s].read_rows(r, r + 5)
            np.testing.assert_allclose(batch.x[i].numpy(), (raw - stats.mean) / stats.std, rtol=1e-4, atol=1e-5)
        break


def test_labels_from_the_targets_dataset(make_file):
    t = np.arange(300, dtype=np.float32)
    path = make_file({"a": (np.stack([t, -t], 1), (t * 10)[:, None]), "b": (np.stack([t, t], 1), (t + 0.5)[:, None])})
    prepared = prepare_data(DataConfig(paths=[path], lookback=4, horizon=2, normalize="none", block_rows=50),
                            progress=False)
    loader = build_loader(prepared, "train", training(num_workers=1), return_ids=True)
    for batch in loader:
        for i in range(len(batch.x)):
            s, r = int(batch.session[i]), int(batch.row[i])
            label_rows = np.arange(r + 3, r + 5)
            expect = 10 * label_rows if s == 0 else label_rows + 0.5
            np.testing.assert_allclose(batch.y[i, :, 0].numpy(), expect)
            np.testing.assert_allclose(batch.x[i, :, 0].numpy(), np.arange(r, r + 4))


def test_nan_found_in_a_worker_is_an_input_error(make_file):
    x = np.random.default_rng(0).normal(size=(400, 2)).astype(np.float32)
    x[300, 1] = np.nan
    path = make_file({"a": x}, feature_names=["p", "q"])
    prepared = prepare_data(DataConfig(paths=[path], lookback=8, normalize="none",
                                       split=SplitSpec(fractions=(1.0, 0, 0))), progress=False)
    loader = build_loader(prepared, "train", training(num_workers=1))
    with pytest.raises(InputError, match=r"session 'a' features row 300 column 'q' is nan"):
        for _ in loader:
            pass


def test_options_are_adjusted_and_explained():
    cpu, notes = loader_options(TrainingConfig(num_workers=-1, pin_memory=True), "cpu", cpu_count=2)
    assert cpu["num_workers"] == 0 and cpu["pin_memory"] is False
    assert any("pin_memory: off, no CUDA" in n for n in notes)
    assert any("auto): 0 workers for 2 cores" in n for n in notes)
    eight, _ = loader_options(TrainingConfig(num_workers=-1), "cpu", cpu_count=8)
    assert eight["num_workers"] == 4 and eight["persistent_workers"] is True
    none, notes = loader_options(TrainingConfig(num_workers=0, persistent_workers=True), "cpu")
    assert none["persistent_workers"] is False and none["prefetch_factor"] is None
    assert any("persistent_workers: off, no workers" in n for n in notes)
    cuda, notes = loader_options(TrainingConfig(num_workers=2, pin_memory=True), "cuda")
    assert cuda["pin_memory"] is True and cuda["prefetch_factor"] == 2 and notes == []


def test_memory_plan_and_budget(ramp_file):
    from data.memory_plan import check_plan, format_plan, loader_plan
    prepared = prepared_ramp(ramp_file)
    data_cfg = DataConfig(paths=[ramp_file], lookback=5, horizon=2, block_rows=40)
    cfg = training(num_workers=2, round_blocks=4, batch_size=16)
    options, _ = loader_options(cfg, "cpu")
    lines = {line.name: line for line in loader_plan(prepared, data_cfg, cfg, options)}
    # 4 blocks x 40 rows x 3 columns x 4 bytes = 1,920 bytes a round; 2 workers x (2 + 1) in flight.
    assert lines["rounds in flight"].mb == pytest.approx(6 * 1920 / 2**20)
    # Sessions of 500, 700 and 300 rows x 3 float32 features, each smaller than its 1 MiB cache:
    # a cache holds at most its dataset.
    assert lines["HDF5 chunk caches"].mb == pytest.approx(2 * (500 + 700 + 300) * 3 * 4 / 2**20)
    small = DataConfig(paths=[ramp_file], lookback=5, horizon=2, block_rows=40, chunk_cache_size=4096,
                       max_open_sessions=2)
    lines_small = {line.name: line for line in loader_plan(prepared, small, cfg, options)}
    assert lines_small["HDF5 chunk caches"].mb == pytest.approx(2 * 2 * 4096 / 2**20)
    assert lines["batches (current + next)"].mb == pytest.approx(2 * 16 * (5 * 3 + 2 * 3) * 4 / 2**20)
    plan = list(lines.values())
    total = check_plan(plan, 10_000)
    assert "memory plan (budget 10,000 MB)" in format_plan(plan, 10_000) and total > 400
    with pytest.raises(InputError, match=r"memory plan needs [\d,]+ MB but memory_budget_mb is 500; "
                                         r"the largest part is validation loader beside the training one \([\d,]+ MB: 2 workers"
                                         r".*lower training.num_workers"):
        check_plan(plan, 500)



@pytest.mark.parametrize("gather_batches,drop_last,rank", [(2, False, 0), (5, False, 0), (5, True, 0), (3, False, 1),
                                                             (3, True, 1)])
def test_chunked_gather_gives_the_same_batches(ramp_file, gather_batches, drop_last, rank):
    # On a GPU windows are gathered several batches at a time (fewer kernel launches) and batches
    # are views of the chunk; forced here on the CPU, with batches spanning rounds, the epoch's
    # last batch, one of two ranks, and a resume in the middle of a chunk.
    prepared = prepared_ramp(ramp_file, normalize="global")
    cfg = training(batch_size=13, drop_last=drop_last)
    shard = {"rank": rank, "world_size": 2} if rank else {}
    plain = build_loader(prepared, "train", cfg, seed=3, return_ids=True, **shard)
    assert plain.gather_batches == 1
    plain.set_epoch(1)
    want = [(b.x.clone(), b.y.clone(), b.session, b.row) for b in plain]
    assert len(want) == len(plain)

    chunked = build_loader(prepared, "train", cfg, seed=3, return_ids=True, **shard)
    chunked.gather_batches = gather_batches
    chunked.set_epoch(1)
    got = []
    for i, b in enumerate(chunked):
        got.append((b.x.clone(), b.y.clone(), b.session, b.row))
        if i == 6:
            state = chunked.state_dict()
            break
    resumed = build_loader(prepared, "train", cfg, seed=3, return_ids=True, **shard)
    resumed.gather_batches = gather_batches
    resumed.load_state_dict(state)
    resumed.set_epoch(1)
    got.extend((b.x.clone(), b.y.clone(), b.session, b.row) for b in resumed)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert all(torch.equal(a, b) for a, b in zip(g, w))


def test_gather_batches_is_one_on_the_cpu_and_bounded_on_a_gpu():
    from data.dataloader import gather_batches
    from data.windows import WindowSpec
    w = WindowSpec(lookback=128)
    assert gather_batches("cpu", 256, w, 16) == 1
    assert gather_batches("cuda", 256, w, 16) == 16            # 16 x 2 MiB = 32 MiB
    assert gather_batches("cuda", 1024, w, 16) == 4
    assert gather_batches("cuda", 1, WindowSpec(lookback=2), 1) == 64
    assert gather_batches("cuda", 65536, w, 64) == 1


def test_a_low_open_file_limit_is_raised_or_one_line(tmp_path):
    """num_workers=2 with 80 files under `ulimit -n 64`: a worker's queue thread died of EMFILE and the run hung."""
    import subprocess
    import sys
    from pathlib import Path

    from data.demo import generate
    for i in range(80):
        generate(tmp_path / f"f{i:02d}.h5", sessions=1, rows=400, features=3, seed=i, progress=False)
    root = Path(__file__).resolve().parents[1]
    train = ["main.py", "train", f"data.paths=[{tmp_path}]", "training.num_workers=2", "training.epochs=1",
             "training.max_steps_per_epoch=2", "data.lookback=16", "--run-dir", str(tmp_path / "run")]

    def limited(soft, hard, argv):
        code = (f"import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard})); "
                f"sys.argv = {argv!r}; runpy.run_path('main.py', run_name='__main__')")
        return subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=600)

    proc = limited(64, 64, train)
    assert proc.returncode == 2 and "open files are needed" in proc.stderr, proc.stderr[-2000:]
    assert "may open 64 (ulimit -n)" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    check = ("import resource; from config import load_config; from data.dataset import prepare_data; "
             "from data.dataloader import ensure_open_files, loader_options; "
             f"c = load_config('quick_demo', overrides=['data.paths=[{tmp_path}]', 'training.num_workers=2', "
             "'data.lookback=16']); p = prepare_data(c.data, progress=False); "
             "ensure_open_files(p, loader_options(c.training, 'cpu')[0]); "
             "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])")
    import resource
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 4096:
        return                                       # (this machine's hard limit leaves nothing to raise)
    proc = subprocess.run([sys.executable, "-c", "import resource; resource.setrlimit(resource.RLIMIT_NOFILE, "
                           f"(64, {hard})); exec({check!r})"], cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and int(proc.stdout.strip().splitlines()[-1]) >= 90, proc.stderr[-2000:]
