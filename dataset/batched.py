"""The EMP-SSL patch augmentation for a whole batch at once, on the batch's device.

The official pipeline (dataset/aug.py) augments every patch separately with PIL. Here the
random parameters of all P·B patches of a step are drawn first (:func:`sample_crops`,
:func:`sample_colors`, from exactly the official distributions) and then applied by batched
tensor operations (dataset/patch_ops.py), grouped by operation with index sets: no Python loop
over patches. Separating the draws from the operations lets tests replay identical parameters
through torchvision's functional ops on PIL images.

The randomness is a torch.Generator (training: the stream of (seed, epoch, step)) or any draw
callable ``rand(n, *shape) → (n, *shape)`` float32 uniforms in [0, 1), such as
:class:`dataset.seeded.KeyedUniform` (evaluation: each image's draws keyed by its index). Every
draw is one call per parameter for all n patches, in a fixed order, so a callable whose row r
depends only on r's own key gives each patch parameters independent of the rest of the batch.

Patches are patch-major, as the official ``torch.cat(views)``: patch n is patch n // B of
image n mod B, so a (P·B, ...) tensor views as (P, B, ...).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch

from dataset import patch_ops as ops
from dataset.aug import (BLUR_SIGMA, CROP_SCALE, JITTER, P_BLUR, P_FLIP, P_GRAY, P_JITTER, P_SOLARIZE,
                         SOLARIZE_THRESHOLD)

CROP_TRIES = 10  # torchvision's RandomResizedCrop tries 10 boxes before its central fallback
JITTER_OPS = (ops.adjust_brightness, ops.adjust_contrast, ops.adjust_saturation, ops.adjust_hue)  # ColorJitter's numbering

Draw = Callable[..., torch.Tensor]  # rand(n, *shape) → (n, *shape) float32 uniforms in [0, 1)
Randomness = torch.Generator | Draw


@dataclasses.dataclass
class Params:
    """Per-patch parameters: every field is a tensor whose first dimension is the patch."""

    def take(self, index: torch.Tensor) -> Params:
        """The parameters of the patches ``index`` (K,), in that order."""
        return dataclasses.replace(self, **{f.name: getattr(self, f.name)[index] for f in dataclasses.fields(self)})


@dataclasses.dataclass
class CropParams(Params):
    """Crop box (top, left, height, width) in pixels, long (N,), and horizontal flip, bool (N,)."""

    top: torch.Tensor
    left: torch.Tensor
    height: torch.Tensor
    width: torch.Tensor
    flip: torch.Tensor


@dataclasses.dataclass
class ColorParams(Params):
    """Photometric parameters. Booleans (N,) say whether a step applies; ``order`` (N, 4) is the
    patch's permutation of the jitter operations (0 brightness, 1 contrast, 2 saturation, 3 hue)."""

    jitter: torch.Tensor
    order: torch.Tensor
    brightness: torch.Tensor
    contrast: torch.Tensor
    saturation: torch.Tensor
    hue: torch.Tensor
    gray: torch.Tensor
    blur: torch.Tensor
    sigma: torch.Tensor
    solarize: torch.Tensor


def as_draw(randomness: Randomness) -> Draw:
    """The draw callable of a random source: for a torch.Generator, torch.rand on it and its device
    (so the draws are exactly the generator's stream); a callable as it is."""
    if isinstance(randomness, torch.Generator):
        return lambda n, *shape: torch.rand(n, *shape, generator=randomness, device=randomness.device)
    return randomness


def _uniform(n: int, low: float, high: float, rand: Draw, *shape: int) -> torch.Tensor:
    """(n, *shape) float32 draws from U[low, high)."""
    return rand(n, *shape) * (high - low) + low


def sample_crops(n: int, height: int, width: int, ratio: tuple[float, float], generator: Randomness,
                 scale: tuple[float, float] = CROP_SCALE) -> CropParams:
    """n draws of torchvision's RandomResizedCrop box on a height×width image, and of the flip.

    As torchvision: up to 10 tries of an area fraction ~ U(scale) and a log-uniform aspect ratio,
    w = round(√(area·ratio)), h = round(√(area/ratio)); the first try that fits is placed at a
    uniform integer offset; if none fits, the central crop of the ratio range. For CIFAR this is
    always a 16×16 window at offsets 0..16.
    """
    rand = as_draw(generator)
    area = height * width * _uniform(n, scale[0], scale[1], rand, CROP_TRIES)  # (n, tries)
    aspect = torch.exp(_uniform(n, math.log(ratio[0]), math.log(ratio[1]), rand, CROP_TRIES))
    w = torch.round(torch.sqrt(area * aspect)).long()
    h = torch.round(torch.sqrt(area / aspect)).long()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)  # (n, tries)
    first = fits.int().argmax(1, keepdim=True)  # (n, 1) the first fitting try
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)  # (n,)
    in_ratio = width / height
    fallback_w = width if in_ratio <= ratio[1] else int(round(height * ratio[1]))
    fallback_h = height if in_ratio >= ratio[0] else int(round(width / ratio[0]))
    found = fits.any(1)
    w, h = torch.where(found, w, fallback_w), torch.where(found, h, fallback_h)
    u = rand(n, 2)  # (n, 2) uniform offsets
    top = torch.where(found, (u[:, 0] * (height - h + 1)).long().clamp(max=height - h), (height - h) // 2)
    left = torch.where(found, (u[:, 1] * (width - w + 1)).long().clamp(max=width - w), (width - w) // 2)
    flip = rand(n) < P_FLIP
    return CropParams(top, left, h, w, flip)


def sample_colors(n: int, generator: Randomness) -> ColorParams:
    """n draws of the official photometric parameters: jitter with probability 0.8 in a uniformly
    random order, brightness, contrast, saturation ~ U[0.6, 1.4], hue ~ U[−0.2, 0.2]; grayscale
    with probability 0.2; blur with probability 0.1 and σ ~ U[0.1, 2.0]; solarize with
    probability 0.1."""
    rand = as_draw(generator)
    coin = rand(n, 4)  # (n, 4)
    order = rand(n, 4).argsort(1)  # (n, 4) permutations
    b, c, s, h = JITTER
    return ColorParams(
        jitter=coin[:, 0] < P_JITTER, order=order,
        brightness=_uniform(n, 1 - b, 1 + b, rand), contrast=_uniform(n, 1 - c, 1 + c, rand),
        saturation=_uniform(n, 1 - s, 1 + s, rand), hue=_uniform(n, -h, h, rand),
        gray=coin[:, 1] < P_GRAY, blur=coin[:, 2] < P_BLUR, sigma=_uniform(n, *BLUR_SIGMA, rand),
        solarize=coin[:, 3] < P_SOLARIZE)


def _apply(x: torch.Tensor, mask: torch.Tensor, op: Callable[..., torch.Tensor], *factors: torch.Tensor) -> None:
    """x[i] = op(x[i], factor[i]) for the patches i where mask is set, in place."""
    index = mask.nonzero().squeeze(1)  # (K,)
    if len(index):
        x.index_copy_(0, index, op(x.index_select(0, index), *(f.index_select(0, index) for f in factors)))


def color_augment(x: torch.Tensor, p: ColorParams) -> torch.Tensor:
    """The official photometric steps on patches x (N, 3, S, S) in [0, 1], in order: colour jitter
    (each patch its own order of the four operations), grayscale, blur, solarize. Returns x."""
    factors = (p.brightness, p.contrast, p.saturation, p.hue)
    for position in range(4):
        for op_id, op in enumerate(JITTER_OPS):
            _apply(x, p.jitter & (p.order[:, position] == op_id), op, factors[op_id])
    _apply(x, p.gray, ops.grayscale)
    _apply(x, p.blur, ops.gaussian_blur, p.sigma)
    _apply(x, p.solarize, lambda patches: ops.solarize(patches, SOLARIZE_THRESHOLD))
    return x


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Normalize(mean 0.5, std 0.5) per channel, in place: [0, 1] → [−1, 1]."""
    return x.sub_(0.5).div_(0.5)


def rank_patches(num_patches: int, global_batch: int, first: int, count: int, device: torch.device) -> torch.Tensor:
    """Patch-major indices (P·count,) of images first … first + count − 1 among P·global_batch patches."""
    patch = torch.arange(num_patches, device=device).view(-1, 1) * global_batch  # (P, 1)
    return (patch + first + torch.arange(count, device=device)).reshape(-1)  # (P·count,)


def augment_images(images: torch.Tensor, num_patches: int, size: int, ratio: tuple[float, float],
                   generator: Randomness, global_batch: int | None = None, first: int = 0) -> torch.Tensor:
    """P augmented patches of every image, patch-major, normalised: the batched official pipeline.

    Parameters are drawn for the global batch of ``global_batch`` images (default: these images)
    and the patches of images first … first + B − 1 of it are made, so that every rank of a
    data-parallel run, each with its slice of the batch, makes the patches one process would.

    Args:
        images: (B, 3, H, W) uint8 images on any device; generator (or draw callable) on that device.
    Returns:
        (P·B, 3, size, size) float32 patches in [−1, 1].
    """
    b, _, height, width = images.shape
    total = num_patches * (global_batch or b)
    rand = as_draw(generator)
    crops = sample_crops(total, height, width, ratio, rand)
    colors = sample_colors(total, rand)
    mine = rank_patches(num_patches, global_batch or b, first, b, images.device)  # (P·B,)
    c = crops.take(mine)
    x = ops.resized_crop(images.float() / 255, c.top, c.left, c.height, c.width, c.flip, size)  # (P·B, 3, S, S)
    return normalize(color_augment(x, colors.take(mine)))


def augment_crops(crops: torch.Tensor, generator: Randomness, num_patches: int,
                  global_batch: int | None = None, first: int = 0) -> torch.Tensor:
    """The photometric half for crops already cut (and flipped) elsewhere, e.g. in DataLoader workers.

    Args:
        crops: (P·B, 3, S, S) uint8 patch-major crops; parameters are drawn as in :func:`augment_images`.
    Returns:
        (P·B, 3, S, S) float32 patches in [−1, 1].
    """
    b = crops.shape[0] // num_patches
    colors = sample_colors(num_patches * (global_batch or b), generator)
    mine = rank_patches(num_patches, global_batch or b, first, b, crops.device)  # (P·B,)
    return normalize(color_augment(crops.float() / 255, colors.take(mine)))
