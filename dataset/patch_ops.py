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
  variance is σ² (Gwosdek et al. 2011), with replicated edges,
- solarize: values at or above the threshold are inverted.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

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


def resized_crop(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, height: torch.Tensor,
                 width: torch.Tensor, flip: torch.Tensor, size: int) -> torch.Tensor:
    """Crop boxes of images resized to size×size (PIL bilinear, see :func:`resample_weights`), then
    flipped horizontally where flip is set: out = W_y · crop · W_xᵀ for every patch.

    The crops are gathered as windows of the largest box side L (a device-to-host copy), so the
    products cost O(L·size) per pixel row instead of O(H·size).

    Args:
        images: (B, C, H, W) float images.
        top, left, height, width, flip: (P·B,) boxes in patch-major order: patch n crops image n mod B.
    Returns:
        (P·B, C, size, size) float patches.
    """
    b, c, h, w = images.shape
    window = int(torch.maximum(height.max(), width.max()).item())
    offsets = torch.arange(window, device=images.device)
    rows = (top.view(-1, 1) + offsets).clamp(max=h - 1)  # (N, L); rows past the box get weight 0
    cols = (left.view(-1, 1) + offsets).clamp(max=w - 1)  # (N, L)
    source = torch.arange(len(top), device=images.device) % b  # (N,) image of every patch
    crops = images[source.view(-1, 1, 1), :, rows.view(-1, window, 1), cols.view(-1, 1, window)]  # (N, L, L, C)
    wy = resample_weights(height, window, size)  # (N, S, L)
    wx = resample_weights(width, window, size)  # (N, S, L)
    wx = torch.where(flip.view(-1, 1, 1), wx.flip(1), wx)  # a flip reverses the output columns
    return torch.einsum("nsh,nhwc,ntw->ncst", wy, crops, wx)  # (N, C, S, S)


def grey(x: torch.Tensor) -> torch.Tensor:
    """Luma of RGB patches (N, 3, H, W) → (N, 1, H, W): 0.299 R + 0.587 G + 0.114 B."""
    r, g, b = x.unbind(1)  # (N, H, W) each
    return (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """factor·x + (1 − factor)·other, clamped to [0, 1] (PIL's Image.blend(other, x, factor))."""
    return torch.lerp(other.expand_as(x), x, _per_patch(factor)).clamp_(0, 1)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with black: factor·x, clamped."""
    return _blend(x, torch.zeros_like(x), factor)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the patch's mean grey level."""
    return _blend(x, grey(x).mean(dim=(1, 2, 3), keepdim=True), factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the patch's grey image."""
    return _blend(x, grey(x), factor)


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


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """Grey image repeated on the three channels (N, 3, H, W)."""
    return grey(x).expand_as(x).contiguous()


def solarize(x: torch.Tensor, threshold: int = 128) -> torch.Tensor:
    """Invert values v at or above threshold/255: v → 1 − v."""
    return torch.where(x >= threshold / 255, 1 - x, x)


def box_radius(sigma: torch.Tensor, passes: int = BLUR_PASSES) -> tuple[torch.Tensor, torch.Tensor]:
    """PIL's extended box (integer radius l, weight a of the two outer pixels) per pass, such that
    `passes` box passes have variance σ² (Gwosdek et al., "Theoretical foundations of Gaussian
    convolution by extended box filtering", 2011, eqs. 7, 11 and 14). Returns (l, a), each (N,)."""
    var = sigma.double() ** 2 / passes
    box = torch.sqrt(12 * var + 1)
    l = torch.floor((box - 1) / 2)
    a = (2 * l + 1) * (l * (l + 1) - 3 * var) / (6 * (var - (l + 1) ** 2))
    return l.float(), a.float()


def _box_pass(x: torch.Tensor, kernel: torch.Tensor, dim: int) -> torch.Tensor:
    """One per-patch box pass along dim (2: rows, 3: columns) with replicated edges.

    Args:
        x: (N, C, H, W); kernel: (N, K) odd length K, centred.
    """
    n, c, h, w = x.shape
    half = kernel.shape[1] // 2
    weight = kernel.repeat_interleave(c, dim=0)  # (N·C, K)
    if dim == 3:
        padded = F.pad(x.reshape(1, n * c, h, w), (half, half, 0, 0), mode="replicate")
        out = F.conv2d(padded, weight.view(n * c, 1, 1, -1), groups=n * c)
    else:
        padded = F.pad(x.reshape(1, n * c, h, w), (0, 0, half, half), mode="replicate")
        out = F.conv2d(padded, weight.view(n * c, 1, -1, 1), groups=n * c)
    return out.view(n, c, h, w)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """PIL's GaussianBlur(radius=σ) per patch: three extended-box passes along the rows, then three
    along the columns. A box of radius l + a has weights 1 on |o| ≤ l and a on |o| = l + 1,
    divided by 2l + 1 + 2a."""
    l, a = box_radius(sigma)  # (N,), (N,)
    reach = int(l.max().item()) + 1 if len(sigma) else 1
    offset = torch.arange(-reach, reach + 1, device=x.device).abs().view(1, -1)  # (1, K)
    l, a = l.view(-1, 1), a.view(-1, 1)
    kernel = torch.where(offset <= l, 1.0, torch.where(offset == l + 1, a, 0.0)) / (2 * l + 1 + 2 * a)  # (N, K)
    for dim in (3, 2):
        for _ in range(BLUR_PASSES):
            x = _box_pass(x, kernel, dim)
    return x
