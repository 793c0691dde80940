"""Epoch order of blocks: shuffled, shared out over DDP ranks, grouped into rounds.

Each epoch, all blocks of a split are permuted with a generator seeded by
(seed, epoch). The windows of that order are then cut into `world_size`
contiguous shares of equal size (the first `total % world_size` ranks take one
window more); a block that straddles a border is split there, so shares are
disjoint, cover every window once, and differ by at most one window. Equal
shares give every rank the same number of optimizer steps, which DDP needs (each
step is a collective), without padding or dropping windows.

A rank's share is cut into rounds of `round_blocks` consecutive blocks: a round is
what one DataLoader worker reads and ships as one item, and what the consumer's
shuffle buffer mixes.

The sampler runs in the training process (DataLoader workers only read the rounds
they are handed), so its position is ordinary state: `LoaderPosition` is saved in
checkpoints and a resumed run continues the same order.
"""

import dataclasses

import numpy as np

from data.windows import FIRST_ROW, N_WINDOWS


@dataclasses.dataclass
class LoaderPosition:
    """Where an epoch stands: the next window to hand out is window `window` (in the
    round's shuffled order) of round `round` of epoch `epoch`."""

    epoch: int = 0
    round: int = 0
    window: int = 0

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        return cls(int(d["epoch"]), int(d["round"]), int(d["window"]))


class BlockSampler:
    """blocks: (n_blocks, 3) plan of (session, first_row, n_windows); stride: rows between windows."""

    def __init__(self, blocks, stride, *, shuffle, seed=0, rank=0, world_size=1, round_blocks=8):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        if round_blocks < 1:
            raise ValueError("round_blocks must be at least 1")
        self.blocks = np.asarray(blocks, dtype=np.int64).reshape(-1, 3)
        self.stride = stride
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.round_blocks = round_blocks
        self.total_windows = int(self.blocks[:, N_WINDOWS].sum())

    def share_bounds(self, rank=None):
        """[first, stop) of the windows (in epoch order) that `rank` takes."""
        rank = self.rank if rank is None else rank
        base, extra = divmod(self.total_windows, self.world_size)
        first = rank * base + min(rank, extra)
        return first, first + base + (rank < extra)

    @property
    def smallest_share(self):
        """Windows of the smallest rank share (every window when world_size is 1)."""
        return self.total_windows // self.world_size

    def order(self, epoch):
        """Blocks this rank reads in `epoch`, in reading order: (G, 3), border blocks trimmed."""
        ids = np.random.default_rng([self.seed, epoch]).permutation(len(self.blocks)) if self.shuffle \
            else np.arange(len(self.blocks))
        table = self.blocks[ids]
        if self.world_size == 1:
            return table
        first, stop = self.share_bounds()
        ends = np.cumsum(table[:, N_WINDOWS])                        # (n_blocks,) window end of each block
        starts = ends - table[:, N_WINDOWS]
        keep = (ends > first) & (starts < stop)
        table, starts, ends = table[keep].copy(), starts[keep], ends[keep]
        if len(table):
            cut_front = first - starts[0]                            # windows of the first block before the share
            table[0, FIRST_ROW] += cut_front * self.stride
            table[0, N_WINDOWS] -= cut_front
            table[-1, N_WINDOWS] -= ends[-1] - stop                  # windows of the last block after it
        return table

    def rounds(self, epoch):
        """The rank's blocks cut into rounds of round_blocks blocks (the last may be shorter)."""
        table = self.order(epoch)
        return [table[i:i + self.round_blocks] for i in range(0, len(table), self.round_blocks)]

    def window_rng(self, epoch, round_index):
        """Generator for the window order inside one round (reproducible on resume)."""
        return np.random.default_rng([self.seed, epoch, round_index, self.rank, 1])
