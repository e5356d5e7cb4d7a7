"""Every random stream of the data, derived from the user's seed by one hash chain.

A key is a sequence of 32-bit values: the seed (as two 32-bit halves), a stream constant that
names the purpose, then the values that pick one draw of that purpose (an epoch, an image, a
step). It is hashed into two 32-bit lanes, each a chain of :func:`combine` from its own start:

    lane ← combine(lane, v) = mix32(lane ⊕ mix32(v ⊕ GOLDEN32))   for every value v in turn,

with mix32 Wellons' lowbias32 (a bijection of 32-bit integers with strong avalanche). Each step
is a bijection of the lane for a fixed v and of v for a fixed lane, so keys of one length that
differ in one value never meet, and the pair of lanes (64 bits) makes a chance meeting of any two keys a
2⁻⁶⁴ event. A 63-bit seed joins the lanes (:func:`derive`); :class:`KeyedUniform` extends a key
by a draw counter on the device. The streams of a seed, the first value after it:

- ORDER (epoch): the order of the training images in an epoch (dataset/sampler.py),
- PATCHES (epoch, image): the patches of one image in one epoch — the torch seed of its PIL
  patches in a DataLoader worker (:class:`SeededPatches`) or, extended by (patch, draw), the
  batched draws of an evaluation image (:class:`KeyedUniform`, epoch 0),
- STEP (epoch, step): the batch-level draws of one training step (a generator on the device),
- EVAL_TRAIN, EVAL_TEST: the seed of a split's evaluation patches (:func:`eval_seed`), itself the
  seed of their PATCHES keys, so evaluation never repeats training's patches nor the other split's.

So the patches of image i in epoch e depend on (seed, e, i) alone — not on the number of
DataLoader workers, on which worker served the image, on the other images of a batch, nor on
what ran before — and a run resumed mid-epoch sees the very patches the uninterrupted run would.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch.utils.data import Dataset

MASK32 = 0xFFFFFFFF
GOLDEN32 = 0x9E3779B9  # ⌊2³²/φ⌋: keeps zero keys and values away from mix32's fixed point 0
LANES = (0x243F6A88, 0x85A308D3)  # the starts of the two lanes: the first 64 bits of π's fraction
ORDER, PATCHES, STEP, EVAL_TRAIN, EVAL_TEST = 1, 2, 3, 4, 5  # the streams of a seed (see above)
EVAL_STREAMS = {"train": EVAL_TRAIN, "test": EVAL_TEST}
Int = TypeVar("Int", int, torch.Tensor)
Lanes = tuple[Any, Any]  # two ints, or two int64 tensors, holding values in [0, 2³²)


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


def extend(lanes: Lanes, value: Any) -> Lanes:
    """Both lanes extended by a 32-bit value (an int, or a tensor that broadcasts with the lanes)."""
    return combine(lanes[0], value), combine(lanes[1], value)


def key(seed: int, stream: int, *values: Any) -> Lanes:
    """The lanes of the key (seed, stream, *values): the seed enters as its low and high 32 bits."""
    lanes = LANES
    for value in (seed & MASK32, (seed >> 32) & MASK32, stream, *values):
        lanes = extend(lanes, value)
    return lanes


def derive(seed: int, stream: int, *values: Int) -> Int:
    """A 63-bit seed of the key (seed, stream, *values): its lanes a, b joined as (a << 31) | (b >> 1)."""
    a, b = key(seed, stream, *values)
    return (a << 31) | (b >> 1)


def order_seed(seed: int, epoch: int) -> int:
    """The seed of the order of the training images in one epoch."""
    return derive(seed, ORDER, epoch)


def image_seed(seed: int, epoch: int, index: Int) -> Int:
    """The torch seed of the patches of image `index` in one epoch (PIL, in a DataLoader worker)."""
    return derive(seed, PATCHES, epoch, index)


def step_seed(seed: int, epoch: int, step: Int) -> Int:
    """The seed of the batch-level draws of one training step (the batched path)."""
    return derive(seed, STEP, epoch, step)


def eval_seed(seed: int, split: str) -> int:
    """The seed of the evaluation patches of a split ("train" or "test"): a stream of its own,
    unrelated to training's (whose patches are keyed by the user seed itself) and to the other split's."""
    return derive(seed, EVAL_STREAMS[split])


class KeyedUniform:
    """A counter-based random source for the batched augmentation of a batch of images.

    ``rand(n, *shape)`` returns (n, *shape) float32 uniforms in [0, 1). Row r of a call is patch
    r div B of image images[r mod B] (rows are patch-major: n = P·B), with the lanes (a, b) of the
    key (seed, PATCHES, 0, image, patch); its value at flat position j of the call is the top 24
    bits of mix32(a ⊕ combine(b, c + j)) / 2²⁴, where c counts the values per row drawn by earlier
    calls. So a draw depends on (seed, image index, patch, draw number) only: not on the other
    images of the batch nor its size. Integer ops on the device, no host reads.
    """

    def __init__(self, seed: int, images: torch.Tensor, num_patches: int) -> None:
        """images: (B,) long indices of the batch's images (in the full split), on the device."""
        patch = torch.arange(num_patches, device=images.device).view(-1, 1)  # (P, 1)
        lanes = extend(key(seed, PATCHES, 0, images.long().view(1, -1)), patch)  # (P, B) each
        self.lanes = tuple(lane.reshape(-1) for lane in lanes)  # (P·B,) each, patch-major
        self.drawn = 0

    def __call__(self, n: int, *shape: int) -> torch.Tensor:
        a, b = self.lanes
        if n != len(a):
            raise ValueError(f"this source draws for {len(a)} patches, not {n}")
        count = math.prod(shape)
        counter = torch.arange(self.drawn, self.drawn + count, device=a.device).view(1, *shape)  # (1, *shape)
        self.drawn += count
        a, b = (lane.view(n, *(1,) * len(shape)) for lane in (a, b))  # (n, 1, …) each
        bits = mix32(a ^ combine(b, counter))  # (n, *shape)
        return (bits >> 8).float() * 2.0**-24


class SeededPatches(Dataset):
    """dataset[i] → (transform(image), label) drawn from torch's generator seeded by :func:`image_seed`.

    Indices may be ints (epoch 0) or (epoch, index) pairs, as
    :class:`dataset.sampler.ResumableSampler` yields, so the epoch reaches persistent DataLoader
    workers with every item. The caller's global torch generator is left as it was.
    """

    def __init__(self, dataset: Dataset, transform: Callable[[Any], Any], seed: int) -> None:
        self.dataset, self.transform, self.seed = dataset, transform, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[Any, int]:
        epoch, index = item if isinstance(item, tuple) else (0, item)
        image, label = self.dataset[index]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(image_seed(self.seed, epoch, index))
            return self.transform(image), label
