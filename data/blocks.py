"""Worker side of the block loader: read a round of blocks as raw rows.

A round is a few blocks (data/sampler.py). For each block, one h5py call reads its
rows [first_row, first_row + (n_windows - 1) * stride + span) into a reused staging
buffer; the columns the model needs are copied into the round's tensor. Workers
ship rows, never windows: a window of L rows repeats each row L times, so shipping
rows cuts inter-process traffic by the lookback (DESIGN.md, "Why blocks").
"""

import numpy as np
import torch

from data import quality
from data.windows import FIRST_ROW, N_WINDOWS, SESSION


class RoundReader(torch.utils.data.Dataset):
    """reader[blocks (G, 3)] -> {"rows" (R, C), "targets" (R, K) or (0,), "blocks" (G, 3), "row_offsets" (G,)}.

    C are the feature columns windows read (model inputs, plus targets taken from the
    features); "targets" holds rows of the `targets` dataset when targets come from it.
    Runs in DataLoader workers; opens files lazily there.
    """

    def __init__(self, catalog, window, columns, nan_policy="error"):
        self.catalog = catalog
        self.window = window
        self.columns = columns
        self.nan_policy = nan_policy
        self.read_cols, self.x_cols, self.y_cols = quality.column_positions(columns)
        if self.x_cols == list(range(len(self.read_cols))):
            self.x_cols = slice(None)   # every column: a view, not a copy
        self.y_from_features = columns.target_source == "features"
        self._all_cols = self.read_cols == list(range(catalog.sessions[0].n_features))
        self._staging = None  # reused per process: one h5py read target for every block

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_staging"] = None
        return state

    def _stage(self, n_rows, n_cols):
        if self._staging is None or self._staging.shape[0] < n_rows or self._staging.shape[1] != n_cols:
            self._staging = np.empty((max(n_rows, 1024), n_cols), dtype=np.float32)
        return self._staging[:n_rows]

    def block_rows(self, table):
        return [self.window.block_rows(int(n)) for n in table[:, N_WINDOWS]]

    def __getitem__(self, table):                                       # (G, 3) blocks of one round
        table = np.asarray(table, dtype=np.int64)
        sizes = self.block_rows(table)
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        total = int(sum(sizes))
        rows = torch.empty((total, len(self.read_cols)), dtype=torch.float32)   # (R, C)
        rows_np = rows.numpy()
        targets = None
        if not self.y_from_features:
            dtype = np.dtype(self.catalog.sessions[0].target_dtype)
            targets = torch.empty((total, len(self.y_cols)),
                                  dtype=torch.float32 if dtype.kind == "f" else torch.int64)
        for (session_idx, first_row, n_windows), size, offset in zip(table, sizes, offsets):
            session = self.catalog.sessions[int(session_idx)]
            start, stop = int(first_row), int(first_row) + size
            block = rows_np[offset:offset + size]
            if self._all_cols:
                session.read_rows(start, stop, out=block)         # straight into the round's tensor
            else:
                staged = session.read_rows(start, stop, out=self._stage(size, session.n_features))
                block[:] = staged[:, self.read_cols]
            if self.nan_policy == "ffill":
                quality.forward_fill(block, session, start, self.read_cols)
            if targets is not None:
                raw = session.read_targets(start, stop)
                targets[offset:offset + size] = torch.from_numpy(np.ascontiguousarray(raw[:, self.y_cols]))
            if self.nan_policy == "error":
                self._check(block, targets, session, start, int(n_windows), offset)
        return {"rows": rows, "targets": targets if targets is not None else torch.empty(0),
                "blocks": torch.from_numpy(table), "row_offsets": torch.from_numpy(offsets)}

    def _check(self, block, targets, session, start, n_windows, offset):
        """NaN/Inf in the rows windows use: inputs, then targets."""
        # Fast path: a float64 sum of float32 values cannot overflow, so it is finite
        # exactly when every value is; only a non-finite block pays for the search.
        if np.isfinite(block.sum(dtype=np.float64)) and (
                targets is None or not targets.is_floating_point()
                or bool(torch.isfinite(targets[offset:offset + len(block)].sum(dtype=torch.float64)))):
            return
        w = self.window
        last_input = (n_windows - 1) * w.stride + w.lookback
        first_target = w.first_target
        targets_end = len(block) - w.covariate_rows          # the rows past it hold known-future values only
        quality.check_finite(block[:last_input, self.x_cols], session, start, "features",
                             self.columns.feature_names)
        if self.columns.future_names:
            future = [self.x_cols[p] if isinstance(self.x_cols, list) else p for p in self.columns.future_positions]
            quality.check_finite(block[first_target:, future], session, start + first_target, "features",
                                 self.columns.future_names)
        if self.y_from_features:
            quality.check_finite(block[first_target:targets_end, self.y_cols], session, start + first_target,
                                 "features", self.columns.target_names)
        elif targets.is_floating_point():
            quality.check_finite(targets[offset + first_target:offset + targets_end].numpy(), session,
                                 start + first_target, "targets", self.columns.target_names)


def window_starts(item, window):
    """Row index (into the round's rows) of every window in the round, block by block, with
    the block of each window and its place in the block: numpy (Nw,) each.

    numpy, not torch: these small index ops ran 12 ms a round in torch on a 16-core GPU machine
    (its OpenMP threads spin against the DataLoader workers; cProfile in docs/benchmarks.md, GPU
    check) and well under 1 ms in numpy, which runs them on one thread."""
    table, offsets = item["blocks"].numpy(), item["row_offsets"].numpy()
    counts = table[:, N_WINDOWS]
    block_of = np.repeat(np.arange(len(table)), counts)                               # (Nw,)
    first = np.cumsum(counts) - counts
    within = np.arange(int(counts.sum())) - first[block_of]
    starts = offsets[block_of] + within * window.stride
    return starts, block_of, within


def window_ids(item, window, block_of, within):
    """(session index, first row) of each window, for batches that carry ids: numpy (Nw,) each."""
    table = item["blocks"].numpy()
    return table[block_of, SESSION], table[block_of, FIRST_ROW] + within * window.stride
