"""The batched patch augmentation against the official per-patch PIL path, and its random draws."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageFilter, ImageOps
from torchvision.transforms import InterpolationMode, RandomResizedCrop

from dataset import batched_pipeline
from dataset import image_ops as ops
from dataset.batched_pipeline import augment_crops, augment_images, color_augment, normalize, photometric
from dataset.draws import crop_window, sample_colors, sample_crops
from dataset.synthetic import SyntheticShapes
from plumbing.host_sync import HostSyncs

N_DRAWS = 20_000


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """20 natural-looking RGB images (20, 32, 32, 3) uint8."""
    return SyntheticShapes(train=False, num_per_class=2).data


def as_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) → float (N, 3, H, W) in [0, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255


def grey_levels_apart(pils: list[Image.Image], x: torch.Tensor) -> float:
    """Mean absolute difference, in grey levels, of PIL images and float patches x in [0, 1]."""
    ref = torch.from_numpy(np.stack([np.asarray(p.convert("RGB")) for p in pils])).permute(0, 3, 1, 2).float()
    return (ref - x * 255).abs().mean().item()


def draws(n: int, seed: int = 0):
    """(crop parameters on 32×32 images, colour parameters) of n CIFAR patches."""
    generator = torch.Generator().manual_seed(seed)
    return sample_crops(n, 32, 32, (1.0, 1.0), generator), sample_colors(n, generator)


def blend(op: int):
    """ColorJitter's blend number op (0 brightness, 1 contrast, 2 saturation) on every patch, as the
    batched jitter applies it: x (N, 3, H, W), factor (N,) → (N, 3, H, W)."""
    return lambda x, factor: ops.adjust_blend(x, torch.full((len(x),), op), factor)


def replay_pil(image: Image.Image, crop, color, n: int) -> Image.Image:
    """The official pipeline on one PIL image with the drawn parameters of patch n."""
    out = TF.resized_crop(image, crop.top[n].item(), crop.left[n].item(), crop.height[n].item(),
                          crop.width[n].item(), [32, 32], InterpolationMode.BILINEAR)
    out = TF.hflip(out) if crop.flip[n] else out
    if color.jitter[n]:
        jitter = (lambda im: TF.adjust_brightness(im, color.brightness[n].item()),
                  lambda im: TF.adjust_contrast(im, color.contrast[n].item()),
                  lambda im: TF.adjust_saturation(im, color.saturation[n].item()),
                  lambda im: TF.adjust_hue(im, color.hue[n].item()))
        for op_id in color.order[n].tolist():
            out = jitter[op_id](out)
    out = TF.rgb_to_grayscale(out, 3) if color.gray[n] else out
    out = out.filter(ImageFilter.GaussianBlur(color.sigma[n].item())) if color.blur[n] else out
    return ImageOps.solarize(out, 128) if color.solarize[n] else out


class TestOperationsMatchPIL:
    """Identical parameters through torchvision's functional ops on PIL images and the batched ops."""

    def test_crop_resize_and_flip(self, images: np.ndarray) -> None:
        crop, _ = draws(len(images))
        pils = [TF.resized_crop(Image.fromarray(im), t, l, h, w, [32, 32], InterpolationMode.BILINEAR)
                for im, t, l, h, w in zip(images, crop.top.tolist(), crop.left.tolist(),
                                          crop.height.tolist(), crop.width.tolist())]
        pils = [TF.hflip(p) if f else p for p, f in zip(pils, crop.flip.tolist())]
        x = ops.resized_crop(as_tensor(images), crop, 32)
        assert grey_levels_apart(pils, x) <= 1

    def test_downscaling_crop_is_antialiased_as_pil(self, images: np.ndarray) -> None:
        big = np.stack([np.asarray(Image.fromarray(im).resize((64, 64))) for im in images])  # (20, 64, 64, 3)
        crop = sample_crops(len(big), 64, 64, (3 / 4, 4 / 3), torch.Generator().manual_seed(1), scale=(0.4, 0.6))
        pils = [TF.resized_crop(Image.fromarray(im), t, l, h, w, [16, 16], InterpolationMode.BILINEAR)
                for im, t, l, h, w in zip(big, crop.top.tolist(), crop.left.tolist(),
                                          crop.height.tolist(), crop.width.tolist())]
        no_flip = dataclasses.replace(crop, flip=torch.zeros(len(big), dtype=torch.bool))
        x = ops.resized_crop(as_tensor(big), no_flip, 16)
        assert grey_levels_apart(pils, x) <= 1

    @pytest.mark.parametrize("name,pil_op,op,low,high,limit", [
        ("brightness", TF.adjust_brightness, blend(0), 0.6, 1.4, 1),
        ("contrast", TF.adjust_contrast, blend(1), 0.6, 1.4, 1),
        ("saturation", TF.adjust_saturation, blend(2), 0.6, 1.4, 1),
        ("hue", TF.adjust_hue, ops.adjust_hue, -0.2, 0.2, 2),
        ("blur", lambda im, s: im.filter(ImageFilter.GaussianBlur(s)), ops.gaussian_blur, 0.1, 2.0, 2),
    ])
    def test_jitter_and_blur(self, images: np.ndarray, name: str, pil_op, op, low: float, high: float,
                             limit: float) -> None:
        factor = torch.linspace(low, high, len(images))  # (20,) one factor per image, both ends included
        pils = [pil_op(Image.fromarray(im), f) for im, f in zip(images, factor.tolist())]
        assert grey_levels_apart(pils, op(as_tensor(images), factor)) <= limit, name

    def test_grayscale_and_solarize(self, images: np.ndarray) -> None:
        pils = [Image.fromarray(im) for im in images]
        grey = ops.grey(as_tensor(images)).expand(-1, 3, -1, -1)  # (N, 3, H, W): the luma on every channel
        assert grey_levels_apart([TF.rgb_to_grayscale(p, 3) for p in pils], grey) <= 1
        assert grey_levels_apart([ImageOps.solarize(p, 128) for p in pils], ops.solarize(as_tensor(images), 128)) <= 1

    def test_hue_shift_of_zero_and_grey_pixels_change_nothing(self, images: np.ndarray) -> None:
        x = as_tensor(images)
        torch.testing.assert_close(ops.adjust_hue(x, torch.zeros(len(x))), x, atol=1e-5, rtol=0)
        grey = ops.grey(x).expand(-1, 3, -1, -1).contiguous()  # (N, 3, H, W)
        torch.testing.assert_close(ops.adjust_hue(grey, torch.full((len(x),), 0.3)), grey, atol=1e-6, rtol=0)

    def test_whole_pipeline_replays_the_pil_pipeline(self, images: np.ndarray) -> None:
        """Every patch of augment_images equals the official steps, in that patch's jitter order."""
        num_patches, n = 10, len(images)
        out = augment_images(torch.from_numpy(images).permute(0, 3, 1, 2), num_patches, 32, (1.0, 1.0),
                             torch.Generator().manual_seed(3))  # (P·B, 3, 32, 32)
        crop, color = draws(num_patches * n, seed=3)  # the same draws, in the same order
        pils = [replay_pil(Image.fromarray(images[k % n]), crop, color, k) for k in range(num_patches * n)]
        assert grey_levels_apart(pils, out * 0.5 + 0.5) <= 2
        # Patch by patch too (the worst is 2.6): a step applied to the wrong patches shows here; the
        # blur, gray, solarize or jitter flags negated move the worst patch by 19 to 170 grey levels.
        assert max(grey_levels_apart([pil], x[None]) for pil, x in zip(pils, out * 0.5 + 0.5)) <= 3
        assert color.jitter.sum() > 100 and color.gray.any() and color.blur.any() and color.solarize.any()


class TestSampling:
    """Over 20,000 draws, the parameters follow the official distributions."""

    @staticmethod
    def assert_frequency(flags: torch.Tensor, p: float) -> None:
        """The frequency of flags is p within 5 binomial standard deviations."""
        sd = math.sqrt(p * (1 - p) / len(flags))
        assert abs(flags.float().mean().item() - p) < 5 * sd

    def test_probabilities(self) -> None:
        crop, color = draws(N_DRAWS)
        for flags, p in [(crop.flip, 0.5), (color.jitter, 0.8), (color.gray, 0.2), (color.blur, 0.1),
                         (color.solarize, 0.1)]:
            self.assert_frequency(flags, p)

    def test_factor_ranges_are_filled(self) -> None:
        _, color = draws(N_DRAWS)
        for values, low, high in [(color.brightness, 0.6, 1.4), (color.contrast, 0.6, 1.4),
                                  (color.saturation, 0.6, 1.4), (color.hue, -0.2, 0.2), (color.sigma, 0.1, 2.0)]:
            assert low <= values.min() < low + 0.01 and high - 0.01 < values.max() <= high
            assert abs(values.mean().item() - (low + high) / 2) < 0.01 * (high - low)

    def test_jitter_order_is_a_uniform_permutation_per_patch(self) -> None:
        _, color = draws(N_DRAWS)
        assert torch.equal(color.order.sort(1).values, torch.arange(4).expand(N_DRAWS, 4))
        assert len({tuple(row) for row in color.order.tolist()}) == 24  # all orders occur
        for position in range(4):
            for op_id in range(4):
                self.assert_frequency(color.order[:, position] == op_id, 0.25)

    def test_cifar_crops_are_16_pixel_windows_at_every_offset(self) -> None:
        crop, _ = draws(N_DRAWS)
        assert (crop.height == 16).all() and (crop.width == 16).all()
        assert set(crop.top.tolist()) == set(range(17)) == set(crop.left.tolist())
        self.assert_frequency(crop.top == 0, 1 / 17)

    def test_imagenet_crops_lie_inside_with_a_quarter_of_the_area(self) -> None:
        height, width = 48, 80
        crop = sample_crops(N_DRAWS, height, width, (3 / 4, 4 / 3), torch.Generator().manual_seed(0))
        assert (crop.top >= 0).all() and (crop.left >= 0).all()
        assert (crop.top + crop.height <= height).all() and (crop.left + crop.width <= width).all()
        area = (crop.height * crop.width).float()
        assert ((area - 0.25 * height * width).abs() <= (crop.height + crop.width) / 2 + 1).all()
        aspect = crop.width / crop.height
        assert aspect.min() < 0.8 and aspect.max() > 1.25 and (aspect > 0.7).all() and (aspect < 1.4).all()

    def test_impossible_ratio_falls_back_to_torchvision_central_crop(self) -> None:
        crop = sample_crops(50, 4, 400, (3 / 4, 4 / 3), torch.Generator().manual_seed(0))
        expected = RandomResizedCrop.get_params(torch.zeros(3, 4, 400), [0.25, 0.25], [3 / 4, 4 / 3])
        assert {(t, l, h, w) for t, l, h, w in zip(crop.top.tolist(), crop.left.tolist(), crop.height.tolist(),
                                                    crop.width.tolist())} == {expected}


class TestHostKnownSizes:
    """The crop window follows from the constants, on the host, and holds every box drawn."""

    @pytest.mark.parametrize("height,width,ratio", [(32, 32, (1.0, 1.0)), (64, 80, (3 / 4, 4 / 3))])
    def test_crop_window_is_the_longest_box_side(self, height: int, width: int, ratio: tuple[float, float]) -> None:
        generator = torch.Generator().manual_seed(0)
        c = sample_crops(N_DRAWS, height, width, ratio, generator)
        window = crop_window(height, width, ratio)
        assert window == max(c.height.max(), c.width.max()) == (16 if height == 32 else 41)  # met, no wider
        images = torch.rand(8, 3, height, width, generator=generator)
        c = sample_crops(64, height, width, ratio, generator)
        torch.testing.assert_close(ops.resized_crop(images, c, 24, window), ops.resized_crop(images, c, 24),
                                   atol=1e-6, rtol=0)  # a wider window (the default max(H, W)) changes nothing

    def test_crop_window_holds_the_fallback(self) -> None:
        c = sample_crops(200, 10, 10, (1.0, 1.0), torch.Generator().manual_seed(0), scale=(0.001, 0.002))
        assert (c.height == 10).all() and crop_window(10, 10, (1.0, 1.0), (0.001, 0.002)) == 10  # all tries fail
        c = sample_crops(2000, 4, 400, (3 / 4, 4 / 3), torch.Generator().manual_seed(0))
        assert crop_window(4, 400, (3 / 4, 4 / 3)) >= max(c.height.max(), c.width.max())


class TestBatchedPipeline:
    def test_shapes_range_and_patch_major_layout(self, images: np.ndarray) -> None:
        uint8 = torch.from_numpy(images).permute(0, 3, 1, 2)  # (20, 3, 32, 32)
        out = augment_images(uint8, 3, 32, (1.0, 1.0), torch.Generator().manual_seed(0))
        assert out.shape == (60, 3, 32, 32) and out.dtype == torch.float32
        assert -1 <= out.min() and out.max() <= 1
        # patch-major: rows 0..19 are patch 0 of images 0..19; each image's patches differ
        assert not torch.allclose(out.view(3, 20, -1)[0], out.view(3, 20, -1)[1])

    def test_a_slice_of_the_global_batch_makes_that_slice_of_patches(self, images: np.ndarray) -> None:
        uint8 = torch.from_numpy(images).permute(0, 3, 1, 2)  # (20, 3, 32, 32)
        whole = augment_images(uint8, 3, 32, (1.0, 1.0), torch.Generator().manual_seed(5))
        half = augment_images(uint8[10:], 3, 32, (1.0, 1.0), torch.Generator().manual_seed(5),
                              global_batch=20, first=10)
        torch.testing.assert_close(half.view(3, 10, -1), whole.view(3, 20, -1)[:, 10:])
        crops = uint8.repeat(3, 1, 1, 1)  # (60, 3, 32, 32): as if cut in workers, patch-major
        whole = augment_crops(crops, torch.Generator().manual_seed(5), 3)
        half = augment_crops(crops.view(3, 20, 3, 32, 32)[:, 10:].reshape(30, 3, 32, 32),
                             torch.Generator().manual_seed(5), 3, global_batch=20, first=10)
        torch.testing.assert_close(half.view(3, 10, -1), whole.view(3, 20, -1)[:, 10:])


    def test_cpu_chunks_change_nothing(self, monkeypatch: pytest.MonkeyPatch) -> None:
        generator = torch.Generator().manual_seed(2)
        x = torch.rand(50, 3, 16, 16, generator=generator)  # (N, 3, S, S), 3 KiB per patch
        p = sample_colors(len(x), generator)
        monkeypatch.setattr(batched_pipeline, "CPU_CHUNK_BYTES", 3072 * 16)  # chunks of 16, the last of 2
        assert batched_pipeline.patches_per_chunk(x) == 16
        assert torch.equal(photometric(x.clone(), p), normalize(color_augment(x.clone(), p)))


class TestNoHostSyncs:
    """Nothing is read back from the device and no tensor is made from host values: on a GPU the
    CPU never waits for the patches. A first call may build the constants it keeps on the device."""

    @pytest.mark.parametrize("height,width,size,ratio", [(32, 32, 32, (1.0, 1.0)), (64, 80, 48, (3 / 4, 4 / 3))])
    def test_augment_images(self, height: int, width: int, size: int, ratio: tuple[float, float]) -> None:
        images = torch.randint(0, 256, (8, 3, height, width), dtype=torch.uint8)
        augment_images(images, 4, size, ratio, torch.Generator().manual_seed(1))  # warm-up
        with HostSyncs() as h:
            out = augment_images(images, 4, size, ratio, torch.Generator().manual_seed(0))
        assert h.syncs == [] and out.shape == (32, 3, size, size)

    def test_augment_crops(self) -> None:
        crops = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8)
        augment_crops(crops, torch.Generator().manual_seed(1), 4)  # warm-up
        with HostSyncs() as h:
            augment_crops(crops, torch.Generator().manual_seed(0), 4, global_batch=16, first=8)
        assert h.syncs == []

    def test_the_counter_sees_a_tensor_made_from_host_values(self) -> None:
        """What the old grey() did seven times per call: x.new_tensor of a Python tuple."""
        x = torch.rand(2, 3, 4, 4)
        with HostSyncs() as h:
            x.new_tensor((0.299, 0.587, 0.114)) @ x.reshape(2, 3, 16)
        assert h.syncs == ["lift_fresh"]
