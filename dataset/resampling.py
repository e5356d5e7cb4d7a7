"""torchvision's RandomResizedCrop on PIL images, for a whole batch on its device: PIL's own separable
resampling by taps, and the box draws for images of different sizes.

**Resampling.** ``F.resized_crop(pil, top, left, h, w, [S, S], mode)`` is ``img.crop(box)`` (an integer
box) then ``img.resize((S, S), mode)``. Pillow resamples each axis of a crop of length n to S pixels
(``precompute_coeffs`` in its Resample.c), all in float64: with s = n / S, f = max(s, 1), support
R = r·f (filter radius r: 1 bilinear, 2 bicubic), output pixel i has centre c_i = (i + ½)·s, taps
k = x_min … x_max − 1 with x_min = max(0, ⌊c_i − R + ½⌋), x_max = min(n, ⌊c_i + R + ½⌋), and weights
K((k − c_i + ½)/f) divided by their sum; K is the triangle 1 − |x| (bilinear) or Keys' cubic with
a = −½ (bicubic). An 8-bit image goes horizontally first, into an 8-bit intermediate, then
vertically (from Pillow 13, a box much taller than wide goes vertically first: :func:`vertical_first`);
each pass turns the weights into fixed point k·2²² (rounded half away from zero), sums
2²¹ + Σ pixel·k in int32 and keeps clamp(⌊sum / 2²²⌋, 0, 255). A horizontal flip comes after the
resize (RandomHorizontalFlip), so it reverses the output columns.

:func:`resized_crops` does the same by gathers: per patch and output pixel the T taps of
:func:`pil_taps` (T = :func:`taps_bound`, from the host-known bound on the box sides, so nothing is
read back from the device), in Pillow's order of the passes. ``exact=True`` runs Pillow's integer
arithmetic (uint8 images only); the default runs it in float32 with float weights and no rounding
of the intermediate, both passes clamped to the value range as Pillow clips.

Measured against torchvision 0.29 + Pillow 13.0 on uniform-noise images (the worst case for the
rounding), 64 patches each, tests/test_resampling.py asserting the tolerances:

- ``exact=True``: identical bytes (0 levels) for bicubic 64×64 and 350×400 → 224 (area 0.25),
  375×500 → 224 (area 0.08–1, with downscales and vertical-first boxes) and bilinear CIFAR
  32×32 → 32. Tolerance: 0.
- float (default): at most 1.10 levels from Pillow (mean 0.31), ≤ 1 level once rounded, on 21 %
  of the values for bicubic and 25 % for bilinear CIFAR: Pillow's rounding of the intermediate
  (± ½ level, times Σ|k| ≤ 1.2 of the second pass) plus its final rounding. Tolerance: 1 level
  after rounding. Bilinear from float images equals dataset/image_ops.resized_crop to 10⁻⁵.

Speed on this CPU (1 thread, B = 8 images, P = 20 patches, area 0.25, bicubic → 224, with the flip),
against RandomResizedCrop + PILToTensor per patch: 64×64 1279 patches/s float, 968 exact, PIL 2061;
350×400 593 float, 529 exact, PIL 1643 (0.36× PIL); chunks of CHUNK_BYTES["cpu"] are the fastest
of 4 MiB … 1 GiB.

**Draws.** The boxes come from :func:`dataset.draws.sample_crops` with each patch's image size, and
:func:`dataset.draws.crop_window_sized` bounds their sides over a set of image sizes.

Images of different sizes come as one batch padded to the largest height and width: a box never
leaves its image, so the padding is never read, and the patches equal those of each image alone.
"""
from __future__ import annotations

import math

import torch
from PIL import __version__ as PILLOW_VERSION

from dataset.draws import CropParams

FILTER_RADIUS = {"bilinear": 1.0, "bicubic": 2.0}  # Pillow's filter supports at scale 1
CUBIC_A = -0.5  # Pillow's bicubic: Keys' cubic convolution with a = −½
PRECISION_BITS = 22  # Pillow's fixed point for 8-bit images: 32 bits − 8 − 2 for overshoot
PILLOW_ORDERS_PASSES = int(PILLOW_VERSION.split(".")[0]) >= 13  # see vertical_first
CHUNK_BYTES = {"cpu": 32 << 20, "other": 1 << 30}  # working memory of one chunk of patches, by device


def taps_bound(window: int, size: int, filter: str) -> int:
    """T, the taps any output pixel needs when no box side exceeds ``window``: ⌈2R⌉ with R =
    r·max(window/size, 1), the support of the longest side (R grows with the side). A pixel's taps
    ⌊c + R + ½⌋ − ⌊c − R + ½⌋ ≤ ⌈2R⌉; Pillow allocates 2⌈R⌉ + 1. Where float rounding of c gives
    Pillow one more (2R an integer), that tap lies at distance R, where K is 0 (up to rounding)."""
    return math.ceil(2 * FILTER_RADIUS[filter] * max(window / size, 1.0))


def _kernel(x: torch.Tensor, filter: str) -> torch.Tensor:
    """Pillow's filter K at float64 offsets x, with its order of operations (bit-equal weights):
    triangle 1 − |x| on |x| < 1; cubic ((a + 2)|x| − (a + 3))·x² + 1 on |x| < 1 and
    (((|x| − 5)|x| + 8)|x| − 4)·a on 1 ≤ |x| < 2; 0 beyond."""
    x = x.abs()
    if filter == "bilinear":
        return torch.where(x < 1, 1 - x, 0.0)
    near = ((CUBIC_A + 2) * x - (CUBIC_A + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * CUBIC_A
    return torch.where(x < 1, near, torch.where(x < 2, far, 0.0))


def pil_taps(length: torch.Tensor, size: int, filter: str, taps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pillow's resampling of lengths n (N,) to ``size`` pixels, as taps (see the module docstring).

    Args:
        length: (N,) integer box sides; taps: T from :func:`taps_bound`.
    Returns:
        index (N, S, T) long: the input pixel of every tap, in 0 … n − 1 (taps past x_max repeat
        the last pixel with weight 0); weight (N, S, T) float64, each row summing to 1.
    """
    n = length.double().view(-1, 1, 1)  # (N, 1, 1)
    scale = n / size
    stretch = scale.clamp(min=1.0)
    support = FILTER_RADIUS[filter] * stretch
    centre = (torch.arange(size, device=n.device, dtype=torch.float64).view(1, -1, 1) + 0.5) * scale  # (N, S, 1)
    first = torch.trunc(centre - support + 0.5).clamp(min=0)  # (N, S, 1)
    last = torch.minimum(torch.trunc(centre + support + 0.5), n)  # one past the last tap
    k = first + torch.arange(taps, device=n.device, dtype=torch.float64)  # (N, S, T)
    weight = torch.where(k < last, _kernel((k - centre + 0.5) * (1.0 / stretch), filter), 0.0)
    total = weight[..., 0]
    for t in range(1, taps):  # Pillow's order of summation
        total = total + weight[..., t]
    index = torch.minimum(k, n - 1).long()  # (N, S, T)
    return index, weight / total.unsqueeze(-1)


def fixed_point(weight: torch.Tensor) -> torch.Tensor:
    """Pillow's 8-bit coefficients: k·2²² rounded half away from zero, int32 (same shape)."""
    scaled = weight * (1 << PRECISION_BITS)
    return torch.trunc(torch.where(scaled < 0, scaled - 0.5, scaled + 0.5)).to(torch.int32)


def _resample(x: torch.Tensor, index: torch.Tensor, weight: torch.Tensor, exact: bool) -> torch.Tensor:
    """One pass along the rows of x (n, R, K, C): out[:, s] = Σ_t w[:, s, t]·x[:, idx[:, s, t]], each
    tap a gather of whole rows (K·C contiguous values) and one multiply-add.

    Args:
        index, weight: (n, S, T) taps; weight int32 fixed point if exact, else float32.
    Returns:
        (n, S, K, C): uint8 levels clamp(⌊(2²¹ + Σ)/2²²⌋, 0, 255) if exact, else the float32 sums.
    """
    n, s, taps = index.shape
    patch = torch.arange(n, device=x.device).view(-1, 1)  # (n, 1)
    acc = torch.full((n, s, *x.shape[2:]), 1 << (PRECISION_BITS - 1) if exact else 0, dtype=weight.dtype,
                     device=x.device)  # (n, S, K, C)
    for t in range(taps):
        acc.addcmul_(x[patch, index[..., t]].to(weight.dtype), weight[..., t].view(n, s, 1, 1))
    if exact:
        return (acc >> PRECISION_BITS).clamp_(0, 255).to(torch.uint8)
    return acc


def bytes_per_patch(window: int, size: int, channels: int, exact: bool) -> int:
    """Working memory of one patch in :func:`resized_crops`, an upper bound in bytes: its L×L window
    (L = window) and a transposed copy, ≤ 4 bytes a value; per pass the accumulator and a gathered
    tap with its cast (12 bytes a value); the transposed intermediate (1 byte if exact, else 4);
    the output and its copies (12 bytes): C·(8L² + (12 + 2·m)·L·S + 24·S²) with m the intermediate's
    bytes: 7.6 MB for L = 216, S = 224, C = 3, float (4.1 MB for L = 37)."""
    middle = 1 if exact else 4
    return channels * (8 * window * window + (12 + 2 * middle) * window * size + 24 * size * size)


def vertical_first(height: torch.Tensor, width: torch.Tensor, size: int) -> torch.Tensor:
    """Whether Pillow resamples a height×width box (N,) each to size×size vertically first: from
    Pillow 13 on (its pull request 9549, "if height is scaled down significantly more than width"),
    when h > S and h − S > 2·(w − S), found by matching its output bit for bit on a grid of boxes;
    before, never."""
    if not PILLOW_ORDERS_PASSES:
        return torch.zeros_like(height, dtype=torch.bool)
    return (height > size) & (height - size > 2 * (width - size))


def _axis_taps(side: torch.Tensor, flip: torch.Tensor, size: int, filter: str, taps: int) -> tuple[torch.Tensor, ...]:
    """:func:`pil_taps` of the sides (n,), with the output order reversed where flip (n,) is set."""
    index, weight = pil_taps(side, size, filter, taps)  # (n, S, T) each
    flip = flip.view(-1, 1, 1)
    return torch.where(flip, index.flip(1), index), torch.where(flip, weight.flip(1), weight)


def _chunk_patches(x: torch.Tensor, crop: CropParams, size: int, filter: str, window: int,
                   exact: bool) -> torch.Tensor:
    """:func:`resized_crops` for patches whose boxes all lie in the windows x (n, L, L, C), stored
    transposed (x[:, j, i] is the pixel of row i, column j), so that both passes gather rows.

    The first pass resamples the columns (x) and the second the rows (y), with the intermediate
    transposed in between; a patch that Pillow resamples vertically first (:func:`vertical_first`)
    is transposed before (so its first pass is along y) and after; its flip then reverses the
    second pass's output.
    """
    taps = taps_bound(window, size, filter)
    turn = vertical_first(crop.height, crop.width, size)  # (n,); never when window ≤ size
    if window > size:
        x = torch.where(turn.view(-1, 1, 1, 1), x.transpose(1, 2), x)  # (n, L, L, C)
    first_side, second_side = torch.where(turn, crop.height, crop.width), torch.where(turn, crop.width, crop.height)
    index_a, weight_a = _axis_taps(first_side, crop.flip & ~turn, size, filter, taps)  # (n, S, T) each
    index_b, weight_b = _axis_taps(second_side, crop.flip & turn, size, filter, taps)
    cast = fixed_point if exact else (lambda w: w.float())
    top = 1.0 if x.is_floating_point() else 255.0
    middle = _resample(x, index_a, cast(weight_a), exact)  # (n, S, L, C)
    middle = middle if exact else middle.clamp_(0, top)  # Pillow clips the intermediate
    out = _resample(middle.transpose(1, 2).contiguous(), index_b, cast(weight_b), exact)  # (n, S, S, C)
    if window > size:
        out = torch.where(turn.view(-1, 1, 1, 1), out.transpose(1, 2), out)
    out = out.float().div_(255) if exact else out.clamp_(0, top).div_(top)
    return out.permute(0, 3, 1, 2)  # (n, C, S, S)


def resized_crops(images: torch.Tensor, crop: CropParams, size: int, filter: str, window: int | None = None,
                  exact: bool = False) -> torch.Tensor:
    """Boxes of images resized to size×size by PIL's resampling (``filter`` "bicubic" or
    "bilinear"), then flipped horizontally where crop.flip is set: torchvision's RandomResizedCrop +
    RandomHorizontalFlip with given parameters, for all patches at once, nothing read by the host.

    Each patch gathers its L×L window at (top, left) (L = ``window``, a host-known bound on every
    box side; default max(H, W)), then T taps per output pixel along x and along y: 2·T multiply-adds
    per value instead of the 2·L of a dense weight matrix. Patches go by chunks of at most
    CHUNK_BYTES of working memory (:func:`bytes_per_patch`).

    Args:
        images: (B, C, H, W) uint8, or float in [0, 1]; a padded batch of images of different sizes
            works as it is (no box reaches the padding).
        crop: boxes and flips, each (P·B,), patch-major: patch n crops image n mod B.
        exact: Pillow's 8-bit arithmetic, bit for bit (uint8 images only); else float32.
    Returns:
        (P·B, C, size, size) float32 patches in [0, 1].
    """
    if exact and images.dtype != torch.uint8:
        raise ValueError(f"exact resampling is Pillow's 8-bit arithmetic: images must be uint8, not {images.dtype}")
    b, c, height, width = images.shape
    window = max(height, width) if window is None else window
    offsets = torch.arange(window, device=images.device)
    budget = CHUNK_BYTES["cpu" if images.device.type == "cpu" else "other"]
    step = max(1, budget // bytes_per_patch(window, size, c, exact))
    pixels = images.permute(0, 2, 3, 1)  # (B, H, W, C): a gathered tap reads C neighbouring values
    out = torch.empty(len(crop.top), c, size, size, device=images.device)
    for start in range(0, len(out), step):
        part = crop.take(torch.arange(start, min(start + step, len(out)), device=images.device))
        source = torch.arange(start, start + len(part.top), device=images.device) % b  # (n,) image of every patch
        rows = (part.top.view(-1, 1) + offsets).clamp(max=height - 1)  # (n, L); rows past the box are not read
        cols = (part.left.view(-1, 1) + offsets).clamp(max=width - 1)  # (n, L)
        x = pixels[source.view(-1, 1, 1), rows.view(-1, 1, window), cols.view(-1, window, 1)]  # (n, L, L, C) transposed
        out[start:start + len(part.top)] = _chunk_patches(x, part, size, filter, window, exact)
    return out
