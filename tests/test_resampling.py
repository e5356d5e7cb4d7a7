"""PIL's resampling by taps (dataset/resampling.py) against torchvision + Pillow, and its box draws
for images of different sizes against torchvision's RandomResizedCrop.get_params."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode, RandomResizedCrop

from dataset import image_ops, resampling
from dataset.draws import CropParams, crop_window, crop_window_sized, sample_crops
from dataset.resampling import resized_crops
from plumbing.host_sync import HostSyncs

IMAGENET_RATIO = (3 / 4, 4 / 3)
SIZES = [(64, 64), (350, 400), (375, 500)]  # (height, width)
N_DRAWS = 10_000
KS_ALPHA = 1e-3  # false alarm rate of one two-sample Kolmogorov–Smirnov comparison
MODES = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR}


def ks_bound(n: int, m: int, alpha: float = KS_ALPHA) -> float:
    """The two-sample KS critical value c(α)·√((n + m)/(n·m)), c(α) = √(−ln(α/2)/2): the largest
    gap of the empirical CDFs of two samples of one continuous law is below it with probability
    1 − α (a discrete law, such as box sides, only makes the gap smaller)."""
    return math.sqrt(-math.log(alpha / 2) / 2) * math.sqrt((n + m) / (n * m))


def ks_statistic(a: torch.Tensor, b: torch.Tensor) -> float:
    """max_v |F_a(v) − F_b(v)| of two integer samples, over every value either takes."""
    values = torch.cat([a, b]).unique()
    cdf_a = torch.searchsorted(a.sort().values, values, right=True) / len(a)
    cdf_b = torch.searchsorted(b.sort().values, values, right=True) / len(b)
    return (cdf_a - cdf_b).abs().max().item()


def torchvision_boxes(height: int, width: int, scale: tuple[float, float], n: int, seed: int) -> torch.Tensor:
    """n boxes (n, 4) = (top, left, h, w) of RandomResizedCrop.get_params on a height×width image."""
    torch.manual_seed(seed)
    image = torch.empty(1, height, width)
    return torch.tensor([RandomResizedCrop.get_params(image, list(scale), list(IMAGENET_RATIO)) for _ in range(n)])


def as_boxes(crop: CropParams) -> torch.Tensor:
    """(n, 4) = (top, left, h, w)."""
    return torch.stack([crop.top, crop.left, crop.height, crop.width], 1)


def pil_patches(images: torch.Tensor, crop: CropParams, size: int, filter: str) -> torch.Tensor:
    """torchvision's resized_crop + hflip on PIL images, patch n from image n mod B: (N, C, S, S) uint8 levels."""
    pils = [Image.fromarray(image.permute(1, 2, 0).numpy()) for image in images]
    patches = []
    for n, (top, left, h, w, flip) in enumerate(zip(*(t.tolist() for t in (crop.top, crop.left, crop.height,
                                                                               crop.width, crop.flip)))):
        patch = TF.resized_crop(pils[n % len(pils)], top, left, h, w, [size, size], MODES[filter])
        patches.append(np.array(TF.hflip(patch) if flip else patch))
    return torch.from_numpy(np.stack(patches)).permute(0, 3, 1, 2).float()


def noise(b: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """(b, 3, height, width) uniform uint8 noise: the hardest case for rounding (every overshoot)."""
    return torch.randint(0, 256, (b, 3, height, width), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def boxes(b: int, p: int, height: int, width: int, scale: tuple[float, float], ratio=IMAGENET_RATIO) -> CropParams:
    """P·B boxes with random flips on b height×width images."""
    n = b * p
    return sample_crops(n, torch.full((n,), height), torch.full((n,), width), ratio,
                        torch.Generator().manual_seed(1), scale)


class TestBoxDraws:
    def test_equal_sizes_give_the_boxes_of_sample_crops(self) -> None:
        ours = sample_crops(500, torch.full((500,), 350), torch.full((500,), 400), IMAGENET_RATIO,
                            torch.Generator().manual_seed(3), (0.08, 1.0))
        theirs = sample_crops(500, 350, 400, IMAGENET_RATIO, torch.Generator().manual_seed(3), (0.08, 1.0))
        for field in ("top", "left", "height", "width", "flip"):
            assert torch.equal(getattr(ours, field), getattr(theirs, field)), field

    @pytest.mark.parametrize("scale", [(0.25, 0.25), (0.08, 1.0)])
    def test_sides_and_offsets_follow_torchvision(self, scale: tuple[float, float]) -> None:
        """One call draws the boxes of all three image sizes mixed; per size, h, w, top and left have
        the law of torchvision's get_params (KS distance within the bound at α = 10⁻³)."""
        which = torch.arange(N_DRAWS * len(SIZES)) % len(SIZES)  # (3·N,) the size of every patch
        sizes = torch.tensor(SIZES)[which]  # (3·N, 2)
        ours = as_boxes(sample_crops(len(sizes), sizes[:, 0], sizes[:, 1], IMAGENET_RATIO,
                                     torch.Generator().manual_seed(0), scale))
        bound = ks_bound(N_DRAWS, N_DRAWS)
        for k, (height, width) in enumerate(SIZES):
            theirs = torchvision_boxes(height, width, scale, N_DRAWS, seed=k)
            for column, name in enumerate(("top", "left", "h", "w")):
                gap = ks_statistic(ours[which == k, column], theirs[:, column])
                assert gap < bound, f"{height}×{width} {name}: KS {gap:.4f} ≥ {bound:.4f}"

    @pytest.mark.parametrize("height, width", [(40, 400), (400, 40)])
    def test_fallback_box_and_frequency_on_an_extreme_aspect_ratio(self, height: int, width: int) -> None:
        """On 40×400 (and 400×40) most tries do not fit: the central box clamped to the ratio range
        comes as often as torchvision's (within 4 binomial standard deviations) and is the same box."""
        n = 4000
        ours = as_boxes(sample_crops(n, torch.full((n,), height), torch.full((n,), width), IMAGENET_RATIO,
                                     torch.Generator().manual_seed(0), (0.08, 1.0)))
        theirs = torchvision_boxes(height, width, (0.08, 1.0), n, seed=0)
        h = height if width / height > 4 / 3 else round(width / (3 / 4))
        w = width if width / height < 3 / 4 else round(height * 4 / 3)
        fallback = torch.tensor([(height - h) // 2, (width - w) // 2, h, w])
        p_ours = (ours == fallback).all(1).float().mean().item()
        p_theirs = (theirs == fallback).all(1).float().mean().item()
        sigma = math.sqrt(p_theirs * (1 - p_theirs) * 2 / n)
        assert 0.2 < p_theirs < 0.95  # both outcomes are common, so the comparison means something
        assert abs(p_ours - p_theirs) < 4 * sigma

    def test_boxes_fit_the_window_of_their_sizes(self) -> None:
        sizes = torch.tensor(SIZES * 2000)  # (6000, 2)
        for scale in ((0.25, 0.25), (0.08, 1.0)):
            crop = sample_crops(len(sizes), sizes[:, 0], sizes[:, 1], IMAGENET_RATIO,
                                torch.Generator().manual_seed(0), scale)
            window = crop_window_sized(SIZES, IMAGENET_RATIO, scale)
            assert torch.cat([crop.height, crop.width]).max() <= window
            assert (crop.top + crop.height <= sizes[:, 0]).all() and (crop.left + crop.width <= sizes[:, 1]).all()
        assert crop_window_sized(SIZES, IMAGENET_RATIO) == crop_window(375, 500, IMAGENET_RATIO) == 250


class TestPixelsMatchPIL:
    """Identical boxes through torchvision's F.resized_crop on PIL images and resized_crops."""

    @pytest.mark.parametrize("height, width, scale", [(64, 64, (0.25, 0.25)), (350, 400, (0.25, 0.25)),
                                                      (375, 500, (0.08, 1.0))])
    def test_bicubic_to_224(self, height: int, width: int, scale: tuple[float, float]) -> None:
        """Exact: identical bytes; float: at most 1 level once rounded (the dropped rounding of
        Pillow's 8-bit intermediate). 375×500 at scale 0.08–1 has downscales and boxes that Pillow
        resamples vertically first."""
        images, crop = noise(3, height, width), boxes(3, 4, height, width, scale)
        reference = pil_patches(images, crop, 224, "bicubic")
        window = crop_window(height, width, IMAGENET_RATIO, scale)
        exact = resized_crops(images, crop, 224, "bicubic", window, exact=True)
        assert (exact * 255 - reference).abs().max().item() < 1e-3
        close = resized_crops(images, crop, 224, "bicubic", window)
        assert (close * 255).round().sub(reference).abs().max().item() <= 1

    def test_bilinear_at_cifar_size(self) -> None:
        images, crop = noise(8, 32, 32), boxes(8, 4, 32, 32, (0.25, 0.25), ratio=(1.0, 1.0))
        reference = pil_patches(images, crop, 32, "bilinear")
        exact = resized_crops(images, crop, 32, "bilinear", 16, exact=True)
        assert (exact * 255 - reference).abs().max().item() < 1e-3
        close = resized_crops(images, crop, 32, "bilinear", 16)
        assert (close * 255).round().sub(reference).abs().max().item() <= 1

    def test_pass_order_of_pillow(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Boxes on both sides of vertical_first's boundary (h − S = 2·(w − S) at w = 312 for h = 400)
        match Pillow exactly; the other order would differ on the turned ones."""
        images = noise(1, 420, 420)
        sides = [(400, 311), (400, 312), (300, 200), (200, 300)]
        crop = CropParams(torch.tensor([3, 5, 7, 9]), torch.tensor([11, 13, 17, 19]), torch.tensor([h for h, _ in sides]),
                          torch.tensor([w for _, w in sides]), torch.tensor([False, True, True, False]))
        reference = pil_patches(images, crop, 224, "bicubic")
        exact = resized_crops(images, crop, 224, "bicubic", exact=True) * 255
        assert (exact - reference).abs().amax((1, 2, 3)).tolist() == [0, 0, 0, 0]
        monkeypatch.setattr(resampling, "PILLOW_ORDERS_PASSES", not resampling.PILLOW_ORDERS_PASSES)
        swapped = resized_crops(images, crop, 224, "bicubic", exact=True) * 255
        turned = [(swapped - reference).abs().amax((1, 2, 3))[k].item() > 0 for k in range(4)]
        assert turned == [True, False, True, False]

    def test_cifar_float_equals_the_dense_resize_of_image_ops(self) -> None:
        """Bilinear 32 → 32 from float images: the same weights as image_ops.resample_weights."""
        images = noise(8, 32, 32).float() / 255
        crop = sample_crops(32, 32, 32, (1.0, 1.0), torch.Generator().manual_seed(2))
        ours = resized_crops(images, crop, 32, "bilinear", 16)
        theirs = image_ops.resized_crop(images, crop, 32, 16)
        assert torch.allclose(ours, theirs, atol=1e-5)

    def test_exact_needs_uint8_images(self) -> None:
        with pytest.raises(ValueError, match="uint8"):
            resized_crops(torch.rand(1, 3, 8, 8), boxes(1, 1, 8, 8, (0.25, 0.25)), 8, "bicubic", exact=True)


class TestFlipAndPadding:
    @pytest.mark.parametrize("exact", [True, False])
    def test_flip_reverses_the_columns(self, exact: bool) -> None:
        """A flipped patch is its unflipped self with the columns reversed, for boxes resampled
        horizontally first and vertically first (where the flip is applied in the second pass)."""
        images = noise(2, 300, 260)
        crop = CropParams(torch.tensor([0, 20, 5, 0]), torch.tensor([0, 30, 7, 40]), torch.tensor([290, 150, 120, 280]),
                          torch.tensor([200, 100, 250, 220]), torch.tensor([False] * 4))
        plain = resized_crops(images, crop, 224, "bicubic", exact=exact)
        crop.flip = torch.tensor([True] * 4)
        flipped = resized_crops(images, crop, 224, "bicubic", exact=exact)
        assert torch.equal(flipped, plain.flip(3))
        assert not torch.equal(flipped, plain)

    @pytest.mark.parametrize("exact", [True, False])
    def test_a_padded_batch_equals_each_image_alone(self, exact: bool) -> None:
        """Images of 40×56, 64×48 and 30×30 padded with noise to 64×56: every patch equals the patch
        cut from its image alone."""
        sizes = [(40, 56), (64, 48), (30, 30)]
        padded = noise(3, 64, 56, seed=5)  # the padding is noise: reading it would show
        alone = [noise(3, 64, 56, seed=7)[k, :, :h, :w] for k, (h, w) in enumerate(sizes)]
        for k, (h, w) in enumerate(sizes):
            padded[k, :, :h, :w] = alone[k]
        p = 5
        per_patch = torch.tensor(sizes * p)  # (P·B, 2) patch-major
        crop = sample_crops(len(per_patch), per_patch[:, 0], per_patch[:, 1], IMAGENET_RATIO,
                            torch.Generator().manual_seed(0), (0.08, 1.0))
        window = crop_window_sized(sizes, IMAGENET_RATIO, (0.08, 1.0))
        together = resized_crops(padded, crop, 48, "bicubic", window, exact)
        for k in range(3):
            mine = torch.arange(k, 3 * p, 3)  # patches of image k
            single = resized_crops(alone[k][None], crop.take(mine), 48, "bicubic", window, exact)
            assert torch.equal(together[mine], single)


class TestNoHostSyncs:
    @pytest.mark.parametrize("exact", [True, False])
    def test_draws_and_resampling_read_nothing_back(self, exact: bool) -> None:
        """Boxes for per-image sizes and their patches, vertical-first ones included: nothing is read
        back from the device and no tensor is made from host values."""
        images = noise(4, 60, 50)
        sizes = torch.tensor([[60, 50], [40, 50], [60, 30], [20, 20]]).repeat(3, 1)  # (12, 2) patch-major
        with HostSyncs() as h:
            crop = sample_crops(len(sizes), sizes[:, 0], sizes[:, 1], IMAGENET_RATIO, torch.Generator().manual_seed(0),
                                (0.08, 1.0))
            out = resized_crops(images, crop, 24, "bicubic", 60, exact)
        assert h.syncs == [] and out.shape == (12, 3, 24, 24)
