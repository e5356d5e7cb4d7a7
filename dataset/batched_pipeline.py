"""The EMP-SSL patch augmentation for a whole batch at once, on the batch's device.

The official pipeline (dataset/pil_pipeline.py) augments every patch separately with PIL. Here the
random parameters of all P·B patches of a step are drawn first (dataset/draws.py, from exactly the
official distributions) and then applied by batched tensor operations (dataset/image_ops.py)
computed for all patches and kept where a patch drew them (a blend with a 0/1 mask): no Python
loop over patches, no index sets, and no value read back by the host, so a GPU never waits for
the CPU. Sizes (the crop window, the blur kernel) follow from the image size and the constants.

Patches are patch-major, as the official ``torch.cat(views)``: patch n is patch n // B of
image n mod B, so a (P·B, ...) tensor views as (P, B, ...).

Two kinds of input: :func:`augment_images` cuts the CIFAR kind's crops (bilinear, float) from equally
sized images; :func:`augment_whole_images` cuts the ImageNet kind's (bicubic, aspect ratio 3/4 … 4/3)
from whole images of any sizes (:class:`WholeImages`, a padded batch) by Pillow's own 8-bit resampling
(dataset/resampling.py, ``exact=True``), so each crop equals byte for byte what torchvision's
RandomResizedCrop + RandomHorizontalFlip make of the PIL image for the same box and flip.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dataset import image_ops as ops
from dataset.draws import (
    ColorParams,
    CropParams,
    Draw,
    Randomness,
    as_draw,
    crop_window,
    sample_colors,
    sample_crops,
)
from dataset.pil_pipeline import BLUR_SIGMA, CROP_RATIO, CROP_SCALE, SOLARIZE_THRESHOLD
from dataset.resampling import resized_crops

CPU_CHUNK_BYTES = 4 << 20  # on a CPU the photometric steps go by chunks of patches of about this size
# augment_whole_images makes its patches by chunks of whole patch rows (B patches each) of at most this many bytes of
# float32 patches, by device; the photometric steps of one chunk hold a few copies of it at once
WHOLE_CHUNK_BYTES = {"cpu": 32 << 20, "other": 1 << 30}
IMAGENET_FILTER = "bicubic"  # the ImageNet kind's RandomResizedCrop interpolation (dataset/pil_pipeline.py)


def _where(mask: torch.Tensor, new: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """new for the patches where mask (N,) is set, x for the others: (N, C, H, W). A lerp with a
    0/1 weight per patch gives exactly one or the other (finite values), faster on CPUs than
    torch.where with a broadcast boolean."""
    return torch.lerp(x, new, mask.to(x.dtype).view(-1, 1, 1, 1))


def color_jitter(x: torch.Tensor, p: ColorParams) -> torch.Tensor:
    """ColorJitter on patches x (N, 3, S, S), each patch with its own order of the four operations,
    with no index sets: every round computes its operation for all patches.

    Hue, the costly operation, is computed once: first three rounds of the blends (brightness,
    contrast, saturation) that come before hue in a patch's order, then hue, then three rounds of
    the blends after it. With the patch's blends b₀ b₁ b₂ in order and hue at position t, round j
    applies b_j before hue if j < t and after hue if j ≥ t; elsewhere the patch's factor is 1,
    which leaves it unchanged (the blend's clamp to [0, 1] aside, which only trims float rounding
    of the crop).
    """
    hue_at = p.order.argmax(1)  # (N,) position of hue, operation 3
    blend_at = (p.order == 3).int().sort(dim=1, stable=True).indices[:, :3]  # (N, 3) positions of the blends
    blends = p.order.gather(1, blend_at)  # (N, 3) operations 0, 1, 2 in the patch's order
    factors = torch.stack([p.brightness, p.contrast, p.saturation], 1).gather(1, blends)  # (N, 3)
    for before_hue in (True, False):
        for j in range(3):
            applies = p.jitter & ((j < hue_at) if before_hue else (j >= hue_at))
            x = ops.adjust_blend(x, blends[:, j], torch.where(applies, factors[:, j], 1.0))
        if before_hue:
            x = _where(p.jitter, ops.adjust_hue(x, p.hue), x)
    return x


def color_augment(x: torch.Tensor, p: ColorParams) -> torch.Tensor:
    """The official photometric steps on patches x (N, 3, S, S) in [0, 1], in order: colour jitter
    (each patch its own order of the four operations), grayscale, blur, solarize. Every step is
    computed for all patches and kept where the patch drew it: no index sets, no host reads."""
    x = color_jitter(x, p)
    x = _where(p.gray, ops.grey(x), x)  # the grey image on all three channels
    x = _where(p.blur, ops.gaussian_blur(x, p.sigma, BLUR_SIGMA[1]), x)
    return ops.solarize(x, torch.where(p.solarize, SOLARIZE_THRESHOLD, 256))  # 256: never


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Normalize(mean 0.5, std 0.5) per channel, in place: [0, 1] → [−1, 1]."""
    return x.sub_(0.5).div_(0.5)


def patches_per_chunk(x: torch.Tensor) -> int:
    """How many of the patches x (N, C, H, W) the photometric steps take at a time: on a CPU about
    CPU_CHUNK_BYTES of them (at least one), so that the temporaries of every step stay in the
    cache (about 1.6× faster at CIFAR size); on other devices all N."""
    if x.device.type != "cpu":
        return len(x)
    return max(1, CPU_CHUNK_BYTES // (math.prod(x.shape[1:]) * x.element_size()))


def photometric(x: torch.Tensor, p: ColorParams) -> torch.Tensor:
    """:func:`color_augment` then :func:`normalize` of patches x (N, 3, S, S) in [0, 1], by chunks
    of :func:`patches_per_chunk` patches."""
    step = patches_per_chunk(x)
    if step >= len(x):
        return normalize(color_augment(x, p))
    out = torch.empty_like(x)
    for start in range(0, len(x), step):
        chunk = torch.arange(start, min(start + step, len(x)))  # (≤ step,)
        out[start:start + step] = normalize(color_augment(x[start:start + step], p.take(chunk)))
    return out


def rank_patches(num_patches: int, global_batch: int, first: int, count: int, device: torch.device) -> torch.Tensor:
    """Patch-major indices (P·count,) of images first … first + count − 1 among P·global_batch patches."""
    patch = torch.arange(num_patches, device=device).view(-1, 1) * global_batch  # (P, 1)
    return (patch + first + torch.arange(count, device=device)).reshape(-1)  # (P·count,)


def augment_images(images: torch.Tensor, num_patches: int, size: int, ratio: tuple[float, float],
                   generator: Randomness, global_batch: int | None = None, first: int = 0,
                   scale: tuple[float, float] = CROP_SCALE) -> torch.Tensor:
    """P augmented patches of every image, patch-major, normalised: the batched official pipeline.

    Parameters are drawn for the global batch of ``global_batch`` images (default: these images)
    and the patches of images first … first + B − 1 of it are made, so that every rank of a
    data-parallel run, each with its slice of the batch, makes the patches one process would.
    The crops cover an area share drawn from ``scale`` (RandomResizedCrop's; default the official
    (0.25, 0.25)), and the crop window follows it.

    Args:
        images: (B, 3, H, W) uint8 images on any device; generator (or draw callable) on that device.
    Returns:
        (P·B, 3, size, size) float32 patches in [−1, 1].
    """
    b, _, height, width = images.shape
    total = num_patches * (global_batch or b)
    rand = as_draw(generator)
    crops = sample_crops(total, height, width, ratio, rand, scale)
    colors = sample_colors(total, rand)
    mine = rank_patches(num_patches, global_batch or b, first, b, images.device)  # (P·B,)
    c = crops.take(mine)
    x = ops.resized_crop(images.float() / 255, c, size, crop_window(height, width, ratio, scale))  # (P·B, 3, S, S)
    return photometric(x, colors.take(mine))


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
    return photometric(crops.float() / 255, colors.take(mine))


@dataclass(frozen=True)
class WholeImages:
    """A batch of whole images, the input of :func:`augment_whole_images`.

    pixels: (B, 3, H, W) uint8 on the device, image i in its top-left sizes[i] = (h_i, w_i) corner,
        the rest padding (any values: no box reaches it);
    sizes: (B, 2) long (height, width) of every image, on the same device;
    window: a host-known bound on every box side the draws can give on these sizes
        (:func:`dataset.draws.crop_window_sized`), which fixes the work on the host.
    """

    pixels: torch.Tensor
    sizes: torch.Tensor
    window: int

    @classmethod
    def equal(cls, pixels: torch.Tensor, scale: tuple[float, float] = CROP_SCALE) -> WholeImages:
        """Equally sized images (B, 3, H, W) uint8: the sizes from the shape (made on the device, no
        copy from the host), the window of :func:`dataset.draws.crop_window` at area range ``scale``."""
        b, _, height, width = pixels.shape
        full = [torch.full((b,), side, dtype=torch.long, device=pixels.device) for side in (height, width)]
        return cls(pixels, torch.stack(full, 1), crop_window(height, width, CROP_RATIO["imagenet"], scale))


def _rows_of(rand: Draw, total: int, mine: torch.Tensor) -> Draw:
    """A draw callable for the patches ``mine`` (K,) of ``total``: every call draws for all total
    patches, as one process drawing the global batch would, and keeps the rows mine."""
    return lambda n, *shape: rand(total, *shape)[mine]


def whole_image_crops(sizes: torch.Tensor, num_patches: int, generator: Randomness,
                      scale: tuple[float, float] = CROP_SCALE) -> CropParams:
    """torchvision's RandomResizedCrop box (aspect ratio 3/4 … 4/3, area range ``scale``) and flip
    for P patches of each of B images of sizes (B, 2): (P·B,) each, patch-major, patch n on image
    n mod B (:func:`dataset.draws.sample_crops` on each image's own size)."""
    per_patch = sizes.repeat(num_patches, 1)  # (P·B, 2)
    return sample_crops(len(per_patch), per_patch[:, 0], per_patch[:, 1], CROP_RATIO["imagenet"], generator, scale)


def whole_rows_per_chunk(images: int, size: int, device: torch.device) -> int:
    """How many patch rows (``images`` patches each) :func:`augment_whole_images` makes at a time: as
    many as keep the chunk's float32 patches (3·size²·4 bytes each) within WHOLE_CHUNK_BYTES, at least one."""
    budget = WHOLE_CHUNK_BYTES["cpu" if device.type == "cpu" else "other"]
    return max(1, budget // (images * 3 * size * size * 4))


def augment_whole_images(batch: WholeImages, num_patches: int, size: int, generator: Randomness,
                         global_batch: int | None = None, first: int = 0,
                         scale: tuple[float, float] = CROP_SCALE) -> torch.Tensor:
    """P ImageNet-kind patches of every whole image, patch-major, normalised: the official pipeline
    (RandomResizedCrop bicubic, flip, then the photometric half) for a batch of images of any sizes.

    The draws, in this order, for the P·G patches of the global batch of G = ``global_batch``
    images (default: these B), of which patches of images first … first + B − 1 are kept (as
    :func:`augment_images`, so ranks together make what one process would): the boxes and flips
    (:func:`whole_image_crops`, torchvision's distribution on each image's own size), then the
    colours (:func:`dataset.draws.sample_colors`). The crops are Pillow's 8-bit bicubic resampling
    (:func:`dataset.resampling.resized_crops` with exact=True): byte for byte the uint8 crop PIL makes
    of the same box and flip. Then :func:`photometric`, the function the worker-cut crops get.

    Memory: the result holds 3·size²·4 bytes a patch (602,112 at 224; the uint8 crop would be
    150,528). Beyond it, only one chunk of :func:`whole_rows_per_chunk` patch rows is worked on at a
    time: its float32 patches (≤ WHOLE_CHUNK_BYTES) with a few photometric temporaries of the same
    size, and the resampling's own chunks (≤ dataset.resampling.CHUNK_BYTES).

    Args:
        batch: B whole images, uint8 (:class:`WholeImages`); generator (or draw callable) on their device.
    Returns:
        (P·B, 3, size, size) float32 patches in [−1, 1]. Nothing is read back by the host.
    """
    b = len(batch.pixels)
    device = batch.pixels.device
    total = num_patches * (global_batch or b)
    rand = as_draw(generator)
    mine = rank_patches(num_patches, global_batch or b, first, b, device)  # (P·B,)
    draw = rand if total == len(mine) else _rows_of(rand, total, mine)  # the global batch's draws, mine kept
    crops = whole_image_crops(batch.sizes, num_patches, draw, scale)
    colors = sample_colors(total, rand).take(mine)
    out = torch.empty(num_patches * b, 3, size, size, device=device)
    rows = whole_rows_per_chunk(b, size, device)
    for row in range(0, num_patches, rows):
        part = slice(row * b, min(row + rows, num_patches) * b)  # whole rows: patch n of it is on image n mod B
        index = torch.arange(part.start, part.stop, device=device)
        x = resized_crops(batch.pixels, crops.take(index), size, IMAGENET_FILTER, batch.window, exact=True)
        out[part] = photometric(x, colors.take(index))
    return out
