"""The random parameters of every patch, drawn before any pixel is touched.

:func:`sample_crops` and :func:`sample_colors` draw, for n patches at once, exactly the official
distributions of dataset/pil_pipeline.py (torchvision's RandomResizedCrop box and flip; the colour
jitter with its random order, grayscale, blur σ, solarize), as per-patch tensors
(:class:`CropParams`, :class:`ColorParams`). dataset/batched_pipeline.py applies them with the
batched image operations of dataset/image_ops.py; tests replay the same parameters through
torchvision's functional ops on PIL images. :func:`crop_window` bounds the box sides from the
constants alone (:func:`crop_window_sized` over several image sizes), so that cutting the boxes
reads nothing back from the device. The boxes of images of different sizes come from the same
:func:`sample_crops`, given each patch's image size.

The randomness is a torch.Generator (training: the stream of (seed, epoch, step)) or any draw
callable ``rand(n, *shape) → (n, *shape)`` float32 uniforms in [0, 1), such as
:class:`dataset.seeding.KeyedUniform` (evaluation: each image's draws keyed by its index). Every
draw is one call per parameter for all n patches, in a fixed order, so a callable whose row r
depends only on r's own key gives each patch parameters independent of the rest of the batch.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable

import torch

from dataset.pil_pipeline import BLUR_SIGMA, CROP_SCALE, JITTER, P_BLUR, P_FLIP, P_GRAY, P_JITTER, P_SOLARIZE

CROP_TRIES = 10  # torchvision's RandomResizedCrop tries 10 boxes before its central fallback

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


def sample_crops(n: int, height: int | torch.Tensor, width: int | torch.Tensor, ratio: tuple[float, float],
                 generator: Randomness, scale: tuple[float, float] = CROP_SCALE) -> CropParams:
    """n draws of torchvision's RandomResizedCrop box and of the flip, on height×width images: one
    size for all (ints), or each patch's own (long tensors (n,), e.g. a batch of different images).

    As torchvision: up to 10 tries of an area fraction ~ U(scale) and a log-uniform aspect ratio,
    w = round(√(area·ratio)), h = round(√(area/ratio)); the first try with 0 < w ≤ W and 0 < h ≤ H
    is placed at a uniform integer offset top ~ U{0 … H − h}, left ~ U{0 … W − w}; if none fits,
    the central crop of the whole image clamped to the ratio range (W/H < r_min: w = W,
    h = round(W/r_min); W/H > r_max: h = H, w = round(H·r_max)), the ratio tests in float64 as
    torchvision's. For CIFAR at the official scale (0.25, 0.25) this is always a 16×16 window at
    offsets 0..16; at (S, S) a square of side round(32·√S), the whole image at S = 1. Sizes given as
    ints are filled on the draws' device (no copy from the host).
    """
    rand = as_draw(generator)
    fraction = _uniform(n, scale[0], scale[1], rand, CROP_TRIES)  # (n, tries)
    heights, widths = (torch.full((n,), side, device=fraction.device) if isinstance(side, int) else side
                       for side in (height, width))  # (n,) each
    h_col, w_col = heights.view(-1, 1), widths.view(-1, 1)  # (n, 1)
    area = h_col * w_col * fraction  # (n, tries)
    aspect = torch.exp(_uniform(n, math.log(ratio[0]), math.log(ratio[1]), rand, CROP_TRIES))
    w = torch.round(torch.sqrt(area * aspect)).long()
    h = torch.round(torch.sqrt(area / aspect)).long()
    fits = (w > 0) & (w <= w_col) & (h > 0) & (h <= h_col)  # (n, tries)
    first = fits.int().argmax(1, keepdim=True)  # (n, 1) the first fitting try
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)  # (n,)
    in_ratio = widths.double() / heights.double()
    fallback_w = torch.where(in_ratio <= ratio[1], widths, torch.round(heights.double() * ratio[1]).long())
    fallback_h = torch.where(in_ratio >= ratio[0], heights, torch.round(widths.double() / ratio[0]).long())
    found = fits.any(1)
    w, h = torch.where(found, w, fallback_w), torch.where(found, h, fallback_h)
    u = rand(n, 2)  # (n, 2) uniform offsets
    top = torch.where(found, torch.minimum((u[:, 0] * (heights - h + 1)).long(), heights - h), (heights - h) // 2)
    left = torch.where(found, torch.minimum((u[:, 1] * (widths - w + 1)).long(), widths - w), (widths - w) // 2)
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


def crop_window_sized(sizes: Iterable[tuple[int, int]], ratio: tuple[float, float],
                      scale: tuple[float, float] = CROP_SCALE) -> int:
    """A bound on every box side :func:`sample_crops` can draw on images of the given (height, width)
    sizes: the largest :func:`crop_window` over the distinct sizes (host arithmetic, e.g. once per batch)."""
    return max(crop_window(h, w, ratio, scale) for h, w in set(sizes))
