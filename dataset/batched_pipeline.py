"""The EMP-SSL patch augmentation for a whole batch at once, on the batch's device.

The official pipeline (dataset/pil_pipeline.py) augments every patch separately with PIL. Here the
random parameters of all P·B patches of a step are drawn first (:func:`sample_crops`,
:func:`sample_colors`, from exactly the official distributions) and then applied by batched
tensor operations (dataset/image_ops.py) computed for all patches and kept where a patch drew
them (a blend with a 0/1 mask): no Python loop over patches, no index sets, and no value read
back by the host, so a GPU never waits for the CPU. Sizes (the crop window, the blur kernel)
follow from the image size and the constants. Separating the draws from the operations lets
tests replay identical parameters through torchvision's functional ops on PIL images.

The randomness is a torch.Generator (training: the stream of (seed, epoch, step)) or any draw
callable ``rand(n, *shape) → (n, *shape)`` float32 uniforms in [0, 1), such as
:class:`dataset.seeding.KeyedUniform` (evaluation: each image's draws keyed by its index). Every
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

from dataset import image_ops as ops
from dataset.pil_pipeline import BLUR_SIGMA, CROP_SCALE, JITTER, P_BLUR, P_FLIP, P_GRAY, P_JITTER, P_SOLARIZE, SOLARIZE_THRESHOLD

CROP_TRIES = 10  # torchvision's RandomResizedCrop tries 10 boxes before its central fallback
CPU_CHUNK_BYTES = 4 << 20  # on a CPU the photometric steps go by chunks of patches of about this size

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


def crop_window(height: int, width: int, ratio: tuple[float, float], scale: tuple[float, float] = CROP_SCALE) -> int:
    """A bound on the box sides :func:`sample_crops` can draw on a height×width image, from the
    constants alone (host arithmetic), so that cutting the boxes needs no read from the device.

    A try has sides w = round(√(A·r)) ≤ round(√(H·W·s_max·r_max)) and h ≤ round(√(H·W·s_max/r_min))
    and is kept if 0 < w ≤ W and 0 < h ≤ H; the central fallback, of sides min(W, round(H·r_max))
    and min(H, round(W/r_min)), counts only when some try can fail. The bounds are widened by
    10⁻⁶ against float32 rounding of the draws. Exact when every try fits: 16 for CIFAR (32×32,
    scale 0.25, ratio 1), 41 for 64×80 at ratios 3/4 … 4/3.
    """
    slack, area = 1 + 1e-6, height * width
    longest_w = math.floor(math.sqrt(area * scale[1] * ratio[1] * slack) + 0.5)
    longest_h = math.floor(math.sqrt(area * scale[1] / ratio[0] * slack) + 0.5)
    shortest = math.ceil(math.sqrt(area * scale[0] * min(ratio[0], 1 / ratio[1]) / slack) - 0.5)
    window = max(min(longest_w, width), min(longest_h, height))
    if longest_w > width or longest_h > height or shortest < 1:
        window = max(window, min(width, round(height * ratio[1])), min(height, round(width / ratio[0])))
    return window


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
    x = ops.resized_crop(images.float() / 255, c, size, crop_window(height, width, ratio))  # (P·B, 3, S, S)
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
