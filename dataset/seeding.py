"""Augmentation as a pure function of (seed, epoch, image index).

Wrapping a data set in :class:`SeededPatches` makes the random patches of image i in epoch e
depend on (seed, e, i) alone — not on the number of DataLoader workers, on which worker served
the image, nor on what ran before. A run resumed mid-epoch therefore sees the very patches the
uninterrupted run would have seen, and evaluation features are reproducible.

:class:`KeyedUniform` gives the batched augmentation the same property: its uniforms are a hash
of (seed, image index, patch index, draw number) computed on the device, so a batch of any
composition draws for each image what that image alone would draw. :func:`stream_seed` separates
the streams of different purposes (training, evaluation of each split) that share a user seed.
"""
from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch
from torch.utils.data import Dataset

from dataset.sampler import epoch_seed


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed mixing (seed, epoch, index) so that nearby triples give unrelated streams."""
    x = epoch_seed(seed, epoch) * 10_000_019 + index
    x = (x ^ (x >> 31)) * 0x9E3779B97F4A7C15 % (1 << 64)  # splitmix-style scrambling
    return (x ^ (x >> 29)) % (1 << 63)


def step_seed(seed: int, epoch: int, step: int) -> int:
    """The seed of the batch-level draws of one training step: :func:`item_seed` of (seed, epoch, step)
    XOR a fixed 63-bit salt, so that step s and image s of an epoch draw from unrelated streams."""
    return item_seed(seed, epoch, step) ^ 0x2545F4914F6CDD1D


def eval_seed(seed: int, split: str) -> int:
    """The seed of the evaluation patches of a split: a stream of its own, unrelated to training's
    (whose patches of image i in epoch e are keyed by the user seed itself) and to the other split's."""
    return stream_seed(seed, f"eval-{split}")


def stream_seed(seed: int, stream: str) -> int:
    """A 63-bit seed for the named random stream of a user seed (SHA-256 of "seed:stream"), e.g.
    "eval-train": streams of one seed, and the training stream (the seed itself), are unrelated."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{stream}".encode()).digest()[:8], "big") >> 1


MASK32 = 0xFFFFFFFF
GOLDEN32 = 0x9E3779B9  # ⌊2³²/φ⌋: keeps zero keys and values away from mix32's fixed point 0
Int = TypeVar("Int", int, torch.Tensor)


def mix32(x: Int) -> Int:
    """A bijection of 32-bit integers with strong avalanche (Wellons' "lowbias32": xor-shift,
    multiply, xor-shift, multiply, xor-shift), for Python ints or int64 tensors holding values in
    [0, 2³²). Products stay below 2⁶³: the second multiplier 0x846CA68B is used as its
    equivalent 0x846CA68B − 2³², which is below 2³¹ in magnitude, and every product is masked
    back to 32 bits (two's complement masking gives the same residue mod 2³²)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & MASK32
    x = x ^ (x >> 15)
    x = (x * -0x7B935975) & MASK32
    return x ^ (x >> 16)


def combine(key: Int, value: Int) -> Int:
    """The key extended by a value (both 32-bit): mix32(key ⊕ mix32(value ⊕ GOLDEN32))."""
    return mix32(key ^ mix32(value ^ GOLDEN32))


class KeyedUniform:
    """A counter-based random source for the batched augmentation of a batch of images.

    ``rand(n, *shape)`` returns (n, *shape) float32 uniforms in [0, 1); the value of row r at
    flat position j of the call is the top 24 bits of
    combine(combine(combine(seed₃₂, image[r mod B]), r div B), c + j) / 2²⁴, where seed₃₂ folds
    the 63-bit seed, r div B is the patch (rows are patch-major: n = P·B) and c counts the
    values per row drawn by earlier calls. So a draw depends on (seed, image index, patch, draw
    number) only: not on the other images of the batch nor its size. Integer ops on the device,
    no host reads.
    """

    def __init__(self, seed: int, images: torch.Tensor, num_patches: int) -> None:
        """images: (B,) long indices of the batch's images (in the full split), on the device."""
        key = combine(combine(0, seed & MASK32), seed >> 32)  # a Python int
        image_key = combine(key, images.long())  # (B,)
        patch = torch.arange(num_patches, device=images.device).view(-1, 1)  # (P, 1)
        self.rows = combine(image_key.view(1, -1), patch).view(-1)  # (P·B,) patch-major
        self.drawn = 0

    def __call__(self, n: int, *shape: int) -> torch.Tensor:
        if n != len(self.rows):
            raise ValueError(f"this source draws for {len(self.rows)} patches, not {n}")
        count = math.prod(shape)
        counter = torch.arange(self.drawn, self.drawn + count, device=self.rows.device).view(1, *shape)  # (1, *shape)
        self.drawn += count
        bits = combine(self.rows.view(n, *(1,) * len(shape)), counter)  # (n, *shape)
        return (bits >> 8).float() * 2.0**-24


class SeededPatches(Dataset):
    """dataset[i] → (transform(image), label) drawn from torch's generator seeded by item_seed.

    Indices may be ints (epoch 0) or (epoch, index) pairs, as :class:`ResumableSampler` yields,
    so the epoch reaches persistent DataLoader workers with every item. The caller's global
    torch generator is left as it was.
    """

    def __init__(self, dataset: Dataset, transform: Callable[[Any], Any], seed: int) -> None:
        self.dataset, self.transform, self.seed = dataset, transform, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Any, int]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        image, label = self.dataset[index]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(item_seed(self.seed, epoch, index))
            return self.transform(image), label


def seed_worker(worker_id: int) -> None:
    """DataLoader worker set-up: seed Python's and NumPy's generators from the worker's torch seed
    (itself derived from the loader's seeded generator)."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
