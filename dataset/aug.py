"""The EMP-SSL patch augmentation (official ``dataset/aug.py``), built once per run.

Every patch of an image is an independent draw of the same PIL pipeline:

1. RandomResizedCrop to ``size`` with area scale exactly 0.25 (for CIFAR a 16×16 window at an
   integer offset 0..16, square, upsampled ×2 bilinearly; for ImageNet aspect ratio in
   [3/4, 4/3], bicubic),
2. horizontal flip (p 0.5), 3. colour jitter (0.4, 0.4, 0.4, 0.2; p 0.8, random order of the
   four operations per call), 4. grayscale (p 0.2), 5. PIL Gaussian blur with σ ~ U[0.1, 2.0]
   (p 0.1), 6. PIL solarize at 128 (p 0.1), 7. ToTensor and Normalize(0.5, 0.5): values in [-1, 1].

``MultiPatch`` draws P patches per image; the default collate turns a batch of B images into a
list of P tensors (B, C, size, size), which the trainer stacks patch-major with ``torch.cat``.
"""

from collections.abc import Callable

import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision import transforms as T


class PILGaussianBlur:
    """PIL ``ImageFilter.GaussianBlur`` with radius σ ~ U[sigma_min, sigma_max] per call.

    σ is drawn from torch's generator, which DataLoader seeds per worker. PIL's filter is a
    box-blur approximation of a Gaussian (as in the official code), not torchvision's kernel.
    """

    def __init__(self, sigma_min: float = 0.1, sigma_max: float = 2.0) -> None:
        """Blur radius range in pixels."""
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

    def __init__(self, threshold: int = 128) -> None:
        """Values at or above ``threshold`` (0..255) are inverted."""
        self.threshold = threshold

    def __call__(self, img: Image.Image) -> Image.Image:
        """Solarize ``img``."""
        return ImageOps.solarize(img, threshold=self.threshold)

    def __repr__(self) -> str:
        """Name and threshold, for printing the pipeline."""
        return f"{type(self).__name__}(threshold={self.threshold})"


def patch_transform(kind: str, size: int) -> T.Compose:
    """The per-patch augmentation: PIL RGB image -> float tensor (3, size, size) in [-1, 1].

    ``kind`` is "cifar" (square crop, bilinear) or "imagenet" (aspect ratio 3/4..4/3, bicubic);
    any other value is a programming error (ValueError).
    """
    if kind == "cifar":
        crop = T.RandomResizedCrop(
            size, scale=(0.25, 0.25), ratio=(1.0, 1.0), interpolation=T.InterpolationMode.BILINEAR
        )
    elif kind == "imagenet":
        crop = T.RandomResizedCrop(
            size, scale=(0.25, 0.25), interpolation=T.InterpolationMode.BICUBIC
        )
    else:
        raise ValueError(f"unknown augmentation kind {kind!r}: expected 'cifar' or 'imagenet'")
    return T.Compose([
        crop,
        T.RandomHorizontalFlip(p=0.5),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.2)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([PILGaussianBlur(0.1, 2.0)], p=0.1),
        T.RandomApply([PILSolarize(128)], p=0.1),
        T.ToTensor(),
        T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    ])


class MultiPatch:
    """P independent draws of one transform: image -> list of P tensors (C, size, size).

    After the default collate a batch is a list of P tensors (B, C, size, size); the trainer's
    ``torch.cat(views)`` gives the patch-major (P·B, C, size, size) layout of the official code.
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
