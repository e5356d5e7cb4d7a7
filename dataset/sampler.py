"""A seeded, resumable, rank-aware order of training images.

The order of epoch e is a permutation drawn from a generator seeded by (seed, e) alone
(:func:`dataset.seeding.order_seed`), so it is the same on every rank, every run and after a
restart. Step s of the epoch uses the global batch perm[s·B : (s+1)·B] (the last incomplete batch
is dropped, as the official DataLoader's drop_last); rank r of W takes the contiguous slice of B/W
images r·B/W … (r+1)·B/W − 1 of it, so W ranks together see exactly the global batch a single
process would.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from dataset.seeding import order_seed


def epoch_permutation(num_items: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of all items in one epoch: a permutation of range(num_items), (num_items,)."""
    generator = torch.Generator().manual_seed(order_seed(seed, epoch))
    return torch.randperm(num_items, generator=generator)


class ResumableSampler(Sampler[tuple[int, int]]):
    """(epoch, index) pairs of this rank's images, batch after batch, from step `start_step` of
    the epoch. The epoch travels with each index so that a :class:`dataset.seeding.SeededPatches`
    data set, even in persistent DataLoader workers, draws the patches of that epoch.

    Use with DataLoader(batch_size=global_batch // world_size, drop_last=True) and call
    set_epoch(epoch, start_step) before each epoch.
    """

    def __init__(self, num_items: int, global_batch: int, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if global_batch % world_size:
            raise ValueError(f"global batch {global_batch} is not divisible by {world_size} ranks")
        self.num_items, self.global_batch, self.seed = num_items, global_batch, seed
        self.rank, self.world_size = rank, world_size
        self.local_batch = global_batch // world_size
        self.set_epoch(0)

    @property
    def steps_per_epoch(self) -> int:
        """Complete global batches in one epoch."""
        return self.num_items // self.global_batch

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Select the epoch's order and skip the steps already done (a resumed run)."""
        self.epoch, self.start_step = epoch, start_step
        self.perm = epoch_permutation(self.num_items, self.seed, epoch)  # (N,)

    def batch_indices(self, step: int, order: torch.Tensor | None = None) -> torch.Tensor:
        """This rank's images at one step of the current epoch, (B / W,): a slice of the epoch's
        permutation, or of `order`, a copy of it (e.g. on the GPU)."""
        first = step * self.global_batch + self.rank * self.local_batch
        return (self.perm if order is None else order)[first:first + self.local_batch]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        batches = self.perm[: self.steps_per_epoch * self.global_batch].view(self.steps_per_epoch, self.world_size, -1)
        mine = batches[self.start_step:, self.rank].reshape(-1).tolist()  # (steps, W, B/W) → this rank's
        return ((self.epoch, index) for index in mine)

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.local_batch
