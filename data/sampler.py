"""Epoch order of blocks: shuffled, sharded over DDP ranks, grouped into rounds.

Each epoch, all blocks of a split are permuted with a generator seeded by
(seed, epoch); rank r of world_size takes every world_size-th block of that order
(disjoint shares that together cover every block once). The rank's order is cut
into rounds of `round_blocks` consecutive blocks: a round is what one DataLoader
worker reads and ships as one item, and what the consumer's shuffle buffer mixes.

The sampler runs in the training process (DataLoader workers only read the rounds
they are handed), so its position is ordinary state: `LoaderPosition` is saved in
checkpoints and a resumed run continues the same order.
"""

import dataclasses

import numpy as np


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
    def __init__(self, n_blocks, *, shuffle, seed=0, rank=0, world_size=1, round_blocks=8):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        if round_blocks < 1:
            raise ValueError("round_blocks must be at least 1")
        self.n_blocks = n_blocks
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.round_blocks = round_blocks

    def order(self, epoch):
        """Block ids this rank reads in `epoch`, in reading order."""
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.n_blocks)
        else:
            order = np.arange(self.n_blocks)
        return order[self.rank::self.world_size]

    def rounds(self, epoch):
        """The rank's order cut into rounds of round_blocks blocks (the last may be shorter)."""
        order = self.order(epoch)
        return [order[i:i + self.round_blocks] for i in range(0, len(order), self.round_blocks)]

    def window_rng(self, epoch, round_index):
        """Generator for the window order inside one round (reproducible on resume)."""
        return np.random.default_rng([self.seed, epoch, round_index, self.rank, 1])
