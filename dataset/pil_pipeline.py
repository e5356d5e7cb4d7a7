"""The EMP-SSL patch augmentation (official ``dataset/aug.py``), built once per run.

Every patch of an image is an independent draw of the same PIL pipeline:

1. RandomResizedCrop to ``size`` with area scale exactly S (--crop_scale; official 0.25: for CIFAR a
   16×16 window at an integer offset 0..16, square, upsampled ×2 bilinearly; for ImageNet aspect
   ratio in [3/4, 4/3], bicubic),
2. horizontal flip (p 0.5), 3. colour jitter (0.4, 0.4, 0.4, 0.2; p 0.8, random order of the
   four operations per call), 4. grayscale (p 0.2), 5. PIL Gaussian blur with σ ~ U[0.1, 2.0]
   (p 0.1), 6. PIL solarize at 128 (p 0.1), 7. ToTensor and Normalize(0.5, 0.5): values in [-1, 1].

``MultiPatch`` draws P patches per image; the default collate turns a batch of B images into a
list of P tensors (B, C, size, size), which :func:`dataset.patch_sources.finish` joins
patch-major with ``torch.cat`` on the training device.
"""

from collections.abc import Callable

import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision import transforms as T

# The official parameters, shared with the batched draws and operations (dataset/draws.py, dataset/image_ops.py).
DEFAULT_CROP_SCALE = 0.25  # share S of the image's area each crop covers (--crop_scale), the official quarter
CROP_SCALE = (DEFAULT_CROP_SCALE, DEFAULT_CROP_SCALE)  # RandomResizedCrop's area range: exactly S at both ends
CROP_RATIO = {"cifar": (1.0, 1.0), "imagenet": (3 / 4, 4 / 3)}  # aspect ratio range of the crop
P_FLIP, P_JITTER, P_GRAY, P_BLUR, P_SOLARIZE = 0.5, 0.8, 0.2, 0.1, 0.1
JITTER = (0.4, 0.4, 0.4, 0.2)  # brightness, contrast, saturation, hue strengths of ColorJitter
BLUR_SIGMA = (0.1, 2.0)  # range of the Gaussian blur's σ in pixels
SOLARIZE_THRESHOLD = 128  # grey levels at or above it are inverted


class PILGaussianBlur:
    """PIL ``ImageFilter.GaussianBlur`` with radius σ ~ U[sigma_min, sigma_max] per call.

    σ is drawn from torch's generator, which DataLoader seeds per worker. PIL's filter is a
    box-blur approximation of a Gaussian (as in the official code), not torchvision's kernel.
    """

    def __init__(self, sigma_min: float, sigma_max: float) -> None:
        """Blur radius range in pixels (the official one: BLUR_SIGMA)."""
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def __call__(self, img: Image.Image) -> Image.Image:
        """Blur ``img`` with a freshly drawn σ."""
        sigma = torch.empty(()).uniform_(self.sigma_min, self.sigma_max).item()
        return img.filter(ImageFilter.GaussianBlur(radius=sigma))

    def __repr__(self) -> str:
        """Name and σ range, for printing the pipeline."""
        return f"{type(self).__name__}(sigma=({self.sigma_min}, {self.sigma_max}))"


class PILSolarize:
    """PIL ``ImageOps.solarize``: every channel value v ≥ threshold becomes 255 − v."""

    def __init__(self, threshold: int) -> None:
        """Values at or above ``threshold`` (0..255) are inverted (the official one: SOLARIZE_THRESHOLD)."""
        self.threshold = threshold

    def __call__(self, img: Image.Image) -> Image.Image:
        """Solarize ``img``."""
        return ImageOps.solarize(img, threshold=self.threshold)

    def __repr__(self) -> str:
        """Name and threshold, for printing the pipeline."""
        return f"{type(self).__name__}(threshold={self.threshold})"


def crop_scale_range(crop_scale: float) -> tuple[float, float]:
    """RandomResizedCrop's ``scale`` for an area share S in (0, 1]: (S, S), every crop exactly S of
    the image's area (before rounding its sides to pixels). Another S is a programming error
    (ValueError; the flags refuse it first, dataset.patch_sources.crop_scale_flag)."""
    if not 0 < crop_scale <= 1:
        raise ValueError(f"crop_scale must be in (0, 1], got {crop_scale}")
    return crop_scale, crop_scale


def patch_transform(kind: str, size: int, crop_scale: float = DEFAULT_CROP_SCALE) -> T.Compose:
    """The per-patch augmentation: PIL RGB image -> float tensor (3, size, size) in [-1, 1].

    ``kind`` is "cifar" (square crop, bilinear) or "imagenet" (aspect ratio 3/4..4/3, bicubic);
    any other value is a programming error (ValueError). Each crop covers ``crop_scale`` of the
    image's area.
    """
    return T.Compose([
        *geometric_transform(kind, size, crop_scale).transforms,
        T.RandomApply([T.ColorJitter(*JITTER)], p=P_JITTER),
        T.RandomGrayscale(p=P_GRAY),
        T.RandomApply([PILGaussianBlur(*BLUR_SIGMA)], p=P_BLUR),
        T.RandomApply([PILSolarize(SOLARIZE_THRESHOLD)], p=P_SOLARIZE),
        T.ToTensor(),
        T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    ])


def geometric_transform(kind: str, size: int, crop_scale: float = DEFAULT_CROP_SCALE) -> T.Compose:
    """The geometric first half of :func:`patch_transform`: RandomResizedCrop of ``crop_scale`` of
    the area, and flip (PIL → PIL).

    ``kind`` is "cifar" (square crop, bilinear) or "imagenet" (aspect ratio 3/4..4/3, bicubic);
    any other value is a programming error (ValueError).
    """
    if kind not in CROP_RATIO:
        raise ValueError(f"unknown augmentation kind {kind!r}: expected 'cifar' or 'imagenet'")
    mode = T.InterpolationMode.BILINEAR if kind == "cifar" else T.InterpolationMode.BICUBIC
    return T.Compose([
        T.RandomResizedCrop(size, scale=crop_scale_range(crop_scale), ratio=CROP_RATIO[kind], interpolation=mode),
        T.RandomHorizontalFlip(p=P_FLIP),
    ])


def crop_transform(kind: str, size: int, crop_scale: float = DEFAULT_CROP_SCALE) -> T.Compose:
    """:func:`geometric_transform` ending in a uint8 tensor (3, size, size): the crops that DataLoader
    workers cut for the batched photometric half on the device."""
    return T.Compose([*geometric_transform(kind, size, crop_scale).transforms, T.PILToTensor()])


class MultiPatch:
    """P independent draws of one transform: image -> list of P tensors (C, size, size).

    After the default collate a batch is a list of P tensors (B, C, size, size);
    ``torch.cat(views)`` in :func:`dataset.patch_sources.finish` gives the patch-major
    (P·B, C, size, size) layout of the official code.
    """

    def __init__(self, transform: Callable[[Image.Image], torch.Tensor], num_patches: int) -> None:
        """``num_patches`` ≥ 1 patches per image, each from ``transform``."""
        if num_patches < 1:
            raise ValueError(f"num_patches must be at least 1, got {num_patches}")
        self.transform, self.num_patches = transform, num_patches

    def __call__(self, img: Image.Image) -> list[torch.Tensor]:
        """``num_patches`` independently augmented tensors of ``img``."""
        return [self.transform(img) for _ in range(self.num_patches)]

    def __repr__(self) -> str:
        """Patch count and the per-patch transform."""
        return f"{type(self).__name__}(num_patches={self.num_patches}, transform={self.transform})"
