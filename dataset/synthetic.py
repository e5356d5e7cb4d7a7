"""SyntheticShapes: a generated 10-class RGB image set for tests and a first run anywhere.

Every image is one object on a background. Each class has its own shape (disc, square, ...)
and its own colour/texture family: a hue family shared with exactly one other class and a fill
texture shared with exactly one other class, so that neither the mean colour nor the texture
alone identifies the class, but shape, colour and texture together do. Per image, the object's
position, size, small rotation, hue/saturation/value, texture period and phase, the background
colour and its linear shading, and pixel noise are drawn at random.

Generation is vectorised numpy over all images of a class and seeded by a fixed
``numpy.random.SeedSequence`` per split (no global RNG): the same split gives the same images on
every call and machine, and train and test hold different images from the same distribution.
"""

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image

_SEED = 20230408
_HUES = {"red": 0.0, "yellow": 0.14, "green": 0.33, "blue": 0.6, "purple": 0.8}

Shape = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
Texture = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def _disc(u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Filled disc ``u² + v² < r²``; u, v are (n, S, S) object coordinates, r is (n, 1, 1)."""
    return u**2 + v**2 < r**2


def _square(u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Filled square ``max(|u|, |v|) < 0.85 r``."""
    return np.maximum(abs(u), abs(v)) < 0.85 * r


def _triangle(u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Upright triangle: apex at ``v = -r`` (image y points down), base at ``v = 0.6 r``."""
    return (v < 0.6 * r) & (v > -r + 1.7 * abs(u))


def _ring(u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Annulus ``0.55 r < √(u² + v²) < r``."""
    d2 = u**2 + v**2
    return (d2 < r**2) & (d2 > (0.55 * r) ** 2)


def _cross(u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Plus sign: two bars of half-length r and half-width r/3."""
    au, av = abs(u), abs(v)
    return ((au < r / 3) & (av < r)) | ((av < r / 3) & (au < r))


def _diamond(u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Square standing on a corner: ``|u| + |v| < 1.1 r``."""
    return abs(u) + abs(v) < 1.1 * r


def _ellipse(u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Wide ellipse with half-axes 1.2 r and 0.55 r."""
    return (u / (1.2 * r)) ** 2 + (v / (0.55 * r)) ** 2 < 1


def _frame(u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Square outline: ``0.5 r < max(|u|, |v|) < 0.9 r``."""
    m = np.maximum(abs(u), abs(v))
    return (m < 0.9 * r) & (m > 0.5 * r)


def _crescent(u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Disc of radius r minus a disc of radius 0.8 r shifted right by 0.45 r."""
    return _disc(u, v, r) & ~_disc(u - 0.45 * r, v, 0.8 * r)


def _star(u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Five-petal star in polar form: ``ρ < r (0.6 + 0.4 cos 5φ)``."""
    rho, phi = np.sqrt(u**2 + v**2), np.arctan2(v, u)
    return rho < r * (0.6 + 0.4 * np.cos(5 * phi))


def _solid(x: np.ndarray, y: np.ndarray, period: np.ndarray) -> np.ndarray:
    """Uniform fill: 1 everywhere. x, y are (n, S, S) phase-shifted pixel coordinates."""
    return np.ones_like(x)


def _hstripes(x: np.ndarray, y: np.ndarray, period: np.ndarray) -> np.ndarray:
    """Horizontal stripes: 1 where ``sin(2π y / period) > 0``, else 0."""
    return (np.sin(2 * np.pi * y / period) > 0).astype(np.float32)


def _vstripes(x: np.ndarray, y: np.ndarray, period: np.ndarray) -> np.ndarray:
    """Vertical stripes: 1 where ``sin(2π x / period) > 0``, else 0."""
    return (np.sin(2 * np.pi * x / period) > 0).astype(np.float32)


def _checker(x: np.ndarray, y: np.ndarray, period: np.ndarray) -> np.ndarray:
    """Checkerboard with cells of half a period: ``(⌊2x/p⌋ + ⌊2y/p⌋) mod 2``."""
    return ((np.floor(2 * x / period) + np.floor(2 * y / period)) % 2).astype(np.float32)


def _dots(x: np.ndarray, y: np.ndarray, period: np.ndarray) -> np.ndarray:
    """A diagonal lattice of blobs: 1 where ``cos(2πx/p) cos(2πy/p) > 0.3``, else 0."""
    w = 2 * np.pi / period
    return (np.cos(w * x) * np.cos(w * y) > 0.3).astype(np.float32)


# name: (shape, hue family, texture); each hue family and each texture is used by two classes.
_CLASSES: dict[str, tuple[Shape, str, Texture]] = {
    "disc": (_disc, "red", _solid),
    "square": (_square, "red", _checker),
    "triangle": (_triangle, "yellow", _hstripes),
    "ring": (_ring, "yellow", _solid),
    "cross": (_cross, "green", _dots),
    "diamond": (_diamond, "green", _vstripes),
    "ellipse": (_ellipse, "blue", _checker),
    "frame": (_frame, "blue", _hstripes),
    "crescent": (_crescent, "purple", _vstripes),
    "star": (_star, "purple", _dots),
}


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """HSV in [0, 1] (each (n,)) to RGB in [0, 1], shape (n, 3).

    Channel ``c`` with ``n_c = (5, 3, 1)`` is ``v − v·s·clip(min(k, 4 − k), 0, 1)``,
    ``k = (n_c + 6h) mod 6``.
    """
    k = (np.array([5.0, 3.0, 1.0]) + 6 * h[:, None]) % 6  # (n, 3)
    return v[:, None] * (1 - s[:, None] * np.clip(np.minimum(k, 4 - k), 0, 1))


def _col(a: np.ndarray) -> np.ndarray:
    """A per-image parameter (n,) as float32 (n, 1, 1), to broadcast over (n, S, S) pixels."""
    return a.astype(np.float32)[:, None, None]  # (n, 1, 1)


def _render_class(rng: np.random.Generator, label: int, n: int, size: int) -> np.ndarray:
    """Render n images of class ``label`` as uint8 RGB, shape (n, size, size, 3).

    Pixel = object colour × texture fill inside the shape mask, else background colour ×
    linear shading, plus Gaussian noise (std 0.04 of full range), then quantised to 0..255.
    """
    shape, hue_family, texture = list(_CLASSES.values())[label]
    grid = np.arange(size, dtype=np.float32) + 0.5
    x, y = grid[None, None, :], grid[None, :, None]  # (1, 1, S), (1, S, 1)

    r = rng.uniform(0.22, 0.36, n) * size
    cx, cy = (rng.uniform(0.8 * r, size - 0.8 * r) for _ in range(2))
    theta = rng.uniform(-0.3, 0.3, n)
    dx, dy = x - _col(cx), y - _col(cy)  # (n, S, S)
    cos, sin = _col(np.cos(theta)), _col(np.sin(theta))
    mask = shape(cos * dx + sin * dy, cos * dy - sin * dx, _col(r))  # (n, S, S)

    period = _col(rng.uniform(size / 9, size / 5, n))
    phase_x, phase_y = (_col(rng.uniform(0, 1, n)) * period for _ in range(2))
    fill = 0.45 + 0.55 * texture(x + phase_x, y + phase_y, period)  # (n, S, S)
    hue = (_HUES[hue_family] + rng.uniform(-0.04, 0.04, n)) % 1
    obj_rgb = _hsv_to_rgb(hue, rng.uniform(0.55, 1, n), rng.uniform(0.6, 1, n))  # (n, 3)

    bg_rgb = _hsv_to_rgb(rng.uniform(0, 1, n), rng.uniform(0, 0.35, n), rng.uniform(0.15, 0.85, n))
    angle = rng.uniform(0, 2 * np.pi, n)
    ramp = (_col(np.cos(angle)) * (x - size / 2) + _col(np.sin(angle)) * (y - size / 2)) / size
    shade = 1 + _col(rng.uniform(0, 0.5, n)) * ramp  # (n, S, S)

    obj = fill[..., None] * obj_rgb[:, None, None, :].astype(np.float32)  # (n, S, S, 3)
    bg = shade[..., None] * bg_rgb[:, None, None, :].astype(np.float32)  # (n, S, S, 3)
    img = np.where(mask[..., None], obj, bg)  # (n, S, S, 3)
    img += 0.04 * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)


def generate(train: bool, size: int, num_per_class: int) -> tuple[np.ndarray, list[int]]:
    """All images of one split: uint8 array (10·num_per_class, size, size, 3) and its labels.

    Classes are rendered one at a time from independent child seeds of the split's
    ``SeedSequence((_SEED, split))``, then shuffled with one more child seed.
    """
    children = np.random.SeedSequence((_SEED, 0 if train else 1)).spawn(len(_CLASSES) + 1)
    images = [
        _render_class(np.random.default_rng(children[c]), c, num_per_class, size)
        for c in range(len(_CLASSES))
    ]
    data = np.concatenate(images)  # (N, S, S, 3), class-major
    labels = np.repeat(np.arange(len(_CLASSES)), num_per_class)  # (N,)
    order = np.random.default_rng(children[-1]).permutation(len(labels))
    return data[order], labels[order].tolist()


class SyntheticShapes(torch.utils.data.Dataset):
    """A deterministic 10-class set of generated shapes, laid out like torchvision's CIFAR10.

    Attributes: ``data`` uint8 (N, size, size, 3), ``targets`` list[int] of length N,
    ``classes`` the 10 class names. ``N = 10 · num_per_class``, by default 500 per class for
    train (5,000 images) and 100 per class for test (1,000 images).
    """

    def __init__(
        self,
        train: bool = True,
        transform: Callable | None = None,
        size: int = 32,
        num_per_class: int | None = None,
    ) -> None:
        """Generate the split (about 0.6 s for 5,000 images at 32×32 on one core)."""
        if num_per_class is None:
            num_per_class = 500 if train else 100
        if num_per_class < 1 or size < 8:
            raise ValueError(f"need num_per_class >= 1 and size >= 8, got {num_per_class}, {size}")
        self.classes = list(_CLASSES)
        self.train, self.transform = train, transform
        self.data, self.targets = generate(train, size, num_per_class)

    def __len__(self) -> int:
        """Number of images N."""
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        """(PIL RGB image, or ``transform`` of it, label) for image ``index``."""
        img = Image.fromarray(self.data[index])
        return (img if self.transform is None else self.transform(img)), self.targets[index]
