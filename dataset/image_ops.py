"""Image operations on a batch of patches, each patch with its own parameter.

Images are float tensors x (N, 3, H, W) with values in [0, 1]; every per-patch parameter is a
tensor (N,). Each operation reproduces what the official pipeline does to a PIL image with
torchvision's functional ops, in floating point instead of PIL's 8-bit steps:

- crop + resize: PIL's own separable resampling (triangle filter widened by the downscale factor,
  so downscales are antialiased as PIL's are; only pixels inside the crop contribute),
- brightness, contrast, saturation: PIL's blends with a black image, the mean grey level and the
  grey image (PIL truncates each blend to uint8; here values are only clamped to [0, 1]),
- hue: a rotation of the hue in HSV (PIL rotates its 8-bit hue),
- grayscale: ITU-R 601-2 luma 0.299 R + 0.587 G + 0.114 B,
- blur: PIL's GaussianBlur, which is three passes of an extended box filter per axis whose
  variance is σ² (Gwosdek et al. 2011), with replicated edges, each pass a weighted sum of 2R + 1
  shifted copies of the edge-padded patch (linear in the pixels),
- solarize: values at or above the threshold are inverted.

No operation reads a value back to the host: sizes (the crop window, the blur kernel's reach)
are given by the caller from the constants, so a GPU never waits for the CPU.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from dataset.draws import CropParams
from dataset.pil_pipeline import BLUR_SIGMA

LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as PIL's convert("L")
BLUR_PASSES = 3  # PIL's GaussianBlur: three box-blur passes per axis


def _per_patch(factor: torch.Tensor) -> torch.Tensor:
    """A (N,) factor as (N, 1, 1, 1), to broadcast over (N, C, H, W)."""
    return factor.view(-1, 1, 1, 1)


def resample_weights(length: torch.Tensor, window: int, out_size: int) -> torch.Tensor:
    """PIL's bilinear resampling of the first ``length`` of ``window`` input pixels to out_size pixels.

    Output pixel i has its centre at c_i = (i + ½)·s in input coordinates (input pixel k covers
    [k, k + 1]), s = length / out_size. Input pixel k gets the weight
    max(0, 1 − |k + ½ − c_i| / max(s, 1)) if k < length, else 0; rows are normalised to sum 1.
    For upscales (s < 1) this is bilinear interpolation with half-pixel centres; for downscales
    the widened triangle antialiases, exactly as PIL.

    Args:
        length: (N,) integer crop lengths, at most ``window``.
    Returns:
        (N, out_size, window) float32 weights.
    """
    length = length.float().view(-1, 1, 1)  # (N, 1, 1)
    scale = length / out_size
    centre = (torch.arange(out_size, device=length.device).view(1, -1, 1) + 0.5) * scale  # (N, out, 1)
    pixel = torch.arange(window, device=length.device).view(1, 1, -1) + 0.5  # (1, 1, window)
    weight = (1 - (pixel - centre).abs() / scale.clamp(min=1)).clamp(min=0) * (pixel < length)  # (N, out, window)
    return weight / weight.sum(-1, keepdim=True)


def resized_crop(images: torch.Tensor, crop: CropParams, size: int, window: int | None = None) -> torch.Tensor:
    """Crop boxes of images resized to size×size (PIL bilinear, see :func:`resample_weights`), then
    flipped horizontally where crop.flip is set: out = W_y · crop · W_xᵀ for every patch.

    The crops are gathered as square windows of side L = ``window``, known on the host (default
    max(H, W)), so the products cost O(L·size) per pixel row; pixels of a window beyond its box
    get weight 0, so any L at least every box side gives the same patches.

    Args:
        images: (B, C, H, W) float images.
        crop: boxes (top, left, height, width) and flips, each (P·B,), in patch-major order: patch n
            crops image n mod B; no side longer than ``window``.
    Returns:
        (P·B, C, size, size) float patches.
    """
    b, c, h, w = images.shape
    window = max(h, w) if window is None else window
    offsets = torch.arange(window, device=images.device)
    rows = (crop.top.view(-1, 1) + offsets).clamp(max=h - 1)  # (N, L); rows past the box get weight 0
    cols = (crop.left.view(-1, 1) + offsets).clamp(max=w - 1)  # (N, L)
    source = torch.arange(len(crop.top), device=images.device) % b  # (N,) image of every patch
    crops = images[source.view(-1, 1, 1), :, rows.view(-1, window, 1), cols.view(-1, 1, window)]  # (N, L, L, C)
    wy = resample_weights(crop.height, window, size)  # (N, S, L)
    wx = resample_weights(crop.width, window, size)  # (N, S, L)
    wx = torch.where(crop.flip.view(-1, 1, 1), wx.flip(1), wx)  # a flip reverses the output columns
    return torch.einsum("nsh,nhwc,ntw->ncst", wy, crops, wx)  # (N, C, S, S)


@functools.cache
def _luma(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """LUMA as a (3,) tensor on a device, made once per (device, dtype): a tensor built from host
    values costs a blocking copy on a GPU, so no step builds one."""
    return torch.tensor(LUMA, device=device, dtype=dtype)


def grey(x: torch.Tensor) -> torch.Tensor:
    """Luma of RGB patches (N, 3, H, W) → (N, 1, H, W): 0.299 R + 0.587 G + 0.114 B, as one
    product over the channels (a single pass over x)."""
    n, c, h, w = x.shape
    return (_luma(x.device, x.dtype) @ x.reshape(n, c, h * w)).view(n, 1, h, w)  # (N, 1, H, W)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """factor·x + (1 − factor)·other, clamped to [0, 1] (PIL's Image.blend(other, x, factor))."""
    return torch.lerp(other, x, _per_patch(factor)).clamp_(0, 1)  # other broadcasts over the channels


def adjust_blend(x: torch.Tensor, op: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Per patch one of ColorJitter's three blends, by op (N,) in its numbering, each with that
    patch's factor (N,): 0 brightness blends with black (factor·x), 1 contrast with the patch's
    mean grey level, 2 saturation with the patch's grey image; all clamped to [0, 1]."""
    grey_image = grey(x)  # (N, 1, H, W)
    mean = grey_image.mean(dim=(1, 2, 3), keepdim=True)  # (N, 1, 1, 1)
    op = _per_patch(op)
    return _blend(x, torch.where(op == 2, grey_image, torch.where(op == 1, mean, 0.0)), factor)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue by shift (a fraction of a turn, in [−½, ½]) in HSV; S and V are unchanged.

    With V = max, C = max − min and the hue in sixths of a turn, h = (G − B)/C, 2 + (B − R)/C or
    4 + (R − G)/C for a dominant R, G or B, the rotated hue h' = (h + 6·shift) mod 6 gives back
    channel_n = V − C·clamp(min(k, 4 − k), 0, 1) with k = (n + h') mod 6, n = 5, 3, 1 for R, G, B.
    """
    r, g, b = x.unbind(1)  # (N, H, W) each
    value = x.amax(1)
    chroma = value - x.amin(1)
    safe = chroma.clamp(min=1e-12)
    hue = torch.where(value == r, g - b, torch.where(value == g, b - r + 2 * safe, r - g + 4 * safe)) / safe
    hue = hue.add_(6 * shift.view(-1, 1, 1))  # (N, H, W) in sixths of a turn
    k = torch.stack([hue + 5, hue + 3, hue + 1], 1).remainder_(6)  # (N, 3, H, W)
    ramp = torch.minimum(k, 4 - k).clamp_(0, 1)
    return value.unsqueeze(1) - chroma.unsqueeze(1) * ramp


def solarize(x: torch.Tensor, threshold: int | torch.Tensor) -> torch.Tensor:
    """Invert values v at or above threshold/255: v → 1 − v. A per-patch threshold (N,) above 255
    leaves a patch unchanged. (A lerp with a 0/1 weight gives exactly v or 1 − v; on CPUs it is
    faster than torch.where with a full-size boolean mask.)"""
    limit = threshold / 255 if isinstance(threshold, int) else _per_patch(threshold) / 255
    return torch.lerp(x, 1 - x, (x >= limit).to(x.dtype))


def box_radius(sigma: torch.Tensor, passes: int = BLUR_PASSES) -> tuple[torch.Tensor, torch.Tensor]:
    """PIL's extended box (integer radius l, weight a of the two outer pixels) per pass, such that
    `passes` box passes have variance σ² (Gwosdek et al., "Theoretical foundations of Gaussian
    convolution by extended box filtering", 2011, eqs. 7, 11 and 14). Returns (l, a), each (N,)."""
    var = sigma.double() ** 2 / passes
    box = torch.sqrt(12 * var + 1)
    l = torch.floor((box - 1) / 2)
    a = (2 * l + 1) * (l * (l + 1) - 3 * var) / (6 * (var - (l + 1) ** 2))
    return l.float(), a.float()


def blur_reach(sigma_max: float, passes: int = BLUR_PASSES) -> int:
    """Half-width R of a box kernel that holds the box of every σ ≤ sigma_max: l(σ) + 1, with
    l(σ) = ⌊(√(12σ²/passes + 1) − 1)/2⌋ of :func:`box_radius`, which grows with σ. Host arithmetic
    on a constant (σ widened by 10⁻⁶ against float32 draws a rounding above the maximum), so the
    kernel's size is known without reading σ back from the device: 2 for the official σ ≤ 2."""
    var = (sigma_max * (1 + 1e-6)) ** 2 / passes
    return math.floor((math.sqrt(12 * var + 1) - 1) / 2) + 1


def box_kernel(sigma: torch.Tensor, reach: int) -> torch.Tensor:
    """PIL's extended box of :func:`box_radius` as weights on the offsets o = −reach … reach:
    k_o = 1 on |o| ≤ l, a on |o| = l + 1 and 0 beyond, divided by 2l + 1 + 2a (so Σ_o k_o = 1).
    σ = 0 gives l = a = 0: the unit impulse, exactly.

    Args:
        sigma: (N,) blur radii, none beyond what ``reach`` holds (see :func:`blur_reach`).
    Returns:
        (N, 2·reach + 1) float32 weights k.
    """
    l, a = (t.view(-1, 1) for t in box_radius(sigma))  # (N, 1) each
    offset = torch.arange(-reach, reach + 1, device=sigma.device).abs()  # (K,)
    return torch.where(offset <= l, 1.0, torch.where(offset == l + 1, a, 0.0)) / (2 * l + 1 + 2 * a)  # (N, K)


def box_pass(x: torch.Tensor, kernel: torch.Tensor, dim: int) -> torch.Tensor:
    """One extended-box pass with replicated edges along dim of n pixels (3: the rows, 2: the columns):
    y_i = Σ_o k_o x_clamp(i+o, 0, n−1), o = −R … R, as the weighted sum of the 2R + 1 shifted
    copies p[o + R : o + R + n] of x padded with R replicated pixels p on both sides: 2R + 1
    multiply-adds per pixel. The first copy is multiplied and the others added (addcmul), so an
    exact zero weight adds exact zeros and the unit impulse gives x back bit for bit.

    Args:
        x: (N, C, H, W); kernel: (N, 2R + 1) weights k from :func:`box_kernel`.
    Returns:
        (N, C, H, W) y.
    """
    n = x.shape[dim]
    reach = kernel.shape[1] // 2
    pad = (reach, reach, 0, 0) if dim == 3 else (0, 0, reach, reach)  # R pixels either side along dim
    padded = F.pad(x, pad, mode="replicate")  # (N, C, H, W + 2R) or (N, C, H + 2R, W)
    weights = kernel.T.reshape(-1, len(kernel), 1, 1, 1)  # (K, N, 1, 1, 1): k_o per patch
    y = padded.narrow(dim, 0, n) * weights[0]  # (N, C, H, W)
    for shift in range(1, len(weights)):
        y.addcmul_(padded.narrow(dim, shift, n), weights[shift])
    return y


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, sigma_max: float = BLUR_SIGMA[1]) -> torch.Tensor:
    """PIL's GaussianBlur(radius=σ) per patch: three extended-box passes (:func:`box_pass`) along
    the rows and three along the columns, with the kernel k of :func:`box_kernel` on R =
    blur_reach(sigma_max) pixels either side: 6·(2R + 1) multiply-adds per pixel (30 for the
    official σ ≤ 2), whatever the patch size. A patch with σ = 0 comes back unchanged, bit for bit.
    Every pass reads and writes the whole batch, so on a CPU it is fastest on batches that fit in
    the cache (photometric goes by chunks of about 4 MiB).

    Args:
        x: (N, C, H, W); sigma: (N,) radii in [0, sigma_max] (default the official maximum), which
            fixes the kernel size on the host.
    """
    kernel = box_kernel(sigma, blur_reach(sigma_max))  # (N, 2R + 1)
    for dim in (3,) * BLUR_PASSES + (2,) * BLUR_PASSES:
        x = box_pass(x, kernel, dim)
    return x
