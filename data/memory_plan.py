"""What the loader will hold, computed from the config before anything runs.

Each line is a component, its size and the knob that turns it down. The trainer
adds its own lines (model, optimizer) and checks the total against the profile's
`memory_budget_mb`; a plan over budget stops the run before it starts, naming the
largest component and its knob (docs/memory.md).
"""

import dataclasses

import numpy as np

from errors import InputError

MB = 1024 * 1024
# Measured on the reference machine (docs/memory.md): PSS of the training process after
# importing torch, h5py, numpy and scikit-learn (used where PSS cannot be read), and what one
# forked DataLoader worker adds to the process tree's PSS: its own pages (USS), 13-29 MB in a
# `default` run with 2 persistent workers (benchmarks/host_plan.py), plus 10 MB for pages copied on
# write as a run goes on (30 MB planned 2 MB under one peak); the pages it shares with the
# training process are counted once. (150 MB, a worker's PSS alone, counted shared pages again:
# plans 80-110% over the measured peak with 2 workers.)
MAIN_PROCESS_MB = 400
WORKER_PROCESS_MB = 40


@dataclasses.dataclass
class PlanLine:
    name: str
    mb: float
    knob: str        # the config key that turns this line down
    detail: str = ""


def loader_plan(prepared, data_cfg, training_cfg, options, split="train", process_mb=None):
    """Plan lines for one training loader (the val/test loaders reuse its rounds' size), after the
    training process's own line: `process_mb` measured (trainers/host_plan.py), else the baseline."""
    workers = options["num_workers"]
    readers = max(1, workers)
    columns = prepared.columns
    n_cols = len(set(columns.feature_index) | (set(columns.target_index) if columns.target_source == "features" else set()))
    n_targets = len(columns.target_index) if columns.target_source == "targets" else 0
    blocks = prepared.blocks[split]
    # A round is at most its largest blocks, and no more rounds are in flight than an epoch has
    # (rounds of 8 x 16,384 rows x 6 in flight planned 105 MB for a 15 MB split: +35% over the peak).
    block_rows = sorted((prepared.window.block_rows(int(n)) for n in blocks[:, 2]), reverse=True)
    round_bytes = sum(block_rows[:training_cfg.round_blocks]) * (n_cols + n_targets) * 4
    rounds_per_epoch = max(1, -(-len(block_rows) // training_cfg.round_blocks))
    open_sessions = min(data_cfg.max_open_sessions, len(prepared.catalog.sessions))
    datasets = 1 + (n_targets > 0)
    cache = data_cfg.chunk_cache_size
    # A dataset's cache never holds more than the dataset: the largest sessions that can be open
    # at once, each dataset min(its bytes, the cache). (Counting the whole cache for every dataset
    # planned a 3 MB session's features at 4 MiB under high_performance: 20-30% over the peak.)
    per_session = sorted((min(cache, s.n_rows * s.n_features * np.dtype(s.feature_dtype).itemsize)
                          + (min(cache, s.n_rows * len(s.target_names) * np.dtype(s.target_dtype).itemsize)
                             if n_targets and s.target_dtype else 0)
                          for s in prepared.catalog.sessions), reverse=True)[:open_sessions]
    per_reader_cache = sum(per_session)
    in_flight = min(rounds_per_epoch, workers * ((options["prefetch_factor"] or 0) + 1)) if workers else 1
    pinned = 2 if options["pin_memory"] else 1
    w = prepared.window
    caches_mb = readers * per_reader_cache / MB
    # Validation and test build their own loader while the training one lives on: with persistent
    # workers both sets of workers run side by side; without workers both readers keep their
    # sessions' chunk caches open in the training process.
    beside = options["persistent_workers"] or not workers
    eval_mb = (workers * WORKER_PROCESS_MB + caches_mb + in_flight * pinned * round_bytes / MB) if beside else 0.0
    batch_bytes = training_cfg.batch_size * (w.lookback * len(columns.feature_index)
                                             + w.horizon * len(columns.target_index)) * 4
    return [
        PlanLine("training process (python, torch, data, model)", process_mb, "-", "its PSS when planned")
        if process_mb is not None else
        PlanLine("training process (python, torch, h5py)", MAIN_PROCESS_MB, "-", "measured baseline"),
        PlanLine("DataLoader workers", workers * WORKER_PROCESS_MB, "training.num_workers",
                 f"{workers} x {WORKER_PROCESS_MB} MB"),
        PlanLine("HDF5 chunk caches", caches_mb,
                 "data.chunk_cache_size / data.max_open_sessions",
                 f"{readers} readers x {open_sessions} sessions x {datasets} datasets x at most "
                 f"{cache / MB:.2f} MB"),
        PlanLine("rounds in flight", in_flight * pinned * round_bytes / MB,
                 "training.round_blocks / data.block_rows / training.prefetch_factor",
                 f"{in_flight} x {round_bytes / MB:.1f} MB" + (" x 2 (pinned copy)" if pinned == 2 else "")),
        PlanLine("consumer round (rows + normalized copy)", 2 * round_bytes / MB,
                 "training.round_blocks / data.block_rows", f"2 x {round_bytes / MB:.1f} MB"),
        PlanLine("validation loader beside the training one", eval_mb,
                 "training.num_workers / training.persistent_workers",
                 f"{workers} workers + their chunk caches and rounds" if workers else "its reader's chunk caches and round"),
        PlanLine("batches (current + next)", 2 * batch_bytes / MB, "training.batch_size",
                 f"2 x {batch_bytes / MB:.1f} MB"),
    ]


def format_plan(lines, budget_mb):
    total = sum(line.mb for line in lines)
    width = max(len(line.name) for line in lines)
    out = [f"memory plan (budget {budget_mb:,} MB):"]
    for line in lines:
        out.append(f"  {line.name:<{width}} {line.mb:>9,.1f} MB   {line.detail}")
    out.append(f"  {'total':<{width}} {total:>9,.1f} MB   {total / budget_mb:.0%} of memory_budget_mb")
    return "\n".join(out)


def check_plan(lines, budget_mb):
    """Raise InputError when the plan exceeds the budget, naming the biggest tunable line."""
    total = sum(line.mb for line in lines)
    if total <= budget_mb:
        return total
    largest = max((line for line in lines if line.knob != "-"), key=lambda line: line.mb)
    raise InputError(
        f"memory plan needs {total:,.0f} MB but memory_budget_mb is {budget_mb:,}; the largest part is "
        f"{largest.name} ({largest.mb:,.0f} MB: {largest.detail}); lower {largest.knob}, or raise "
        "memory_budget_mb (see `python main.py prepare` for the whole plan)")
