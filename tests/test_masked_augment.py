"""The masked photometric steps and the host-known sizes against today's index-set formulation
(bc4c6cf), kept here as small references, on the same random parameters."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dataset import batched_pipeline as batched
from dataset import image_ops as ops
from dataset.batched_pipeline import color_augment, crop_window, normalize, photometric, sample_colors, sample_crops

JITTER = (ops.adjust_brightness, ops.adjust_contrast, ops.adjust_saturation, ops.adjust_hue)


def color_by_index_sets(x: torch.Tensor, p) -> torch.Tensor:
    """Reference: every step applied to the index set of the patches that drew it, in place."""
    def apply(mask: torch.Tensor, op, *factors: torch.Tensor) -> None:
        index = mask.nonzero().squeeze(1)  # (K,)
        x.index_copy_(0, index, op(x[index], *(f[index] for f in factors)))

    factors = (p.brightness, p.contrast, p.saturation, p.hue)
    for position in range(4):
        for op_id, op in enumerate(JITTER):
            apply(p.jitter & (p.order[:, position] == op_id), op, factors[op_id])
    apply(p.gray, ops.grayscale)
    apply(p.blur, ops.gaussian_blur, p.sigma)
    apply(p.solarize, lambda patches: ops.solarize(patches, 128))
    return x


def blur_by_passes(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Reference: three box passes per axis with replicated edges, the kernel as wide as the
    largest σ of the batch needs (read from the data)."""
    l, a = (t.view(-1, 1) for t in ops.box_radius(sigma))  # (N, 1)
    reach = int(l.max()) + 1
    offset = torch.arange(-reach, reach + 1).abs()  # (K,)
    kernel = torch.where(offset <= l, 1.0, torch.where(offset == l + 1, a, 0.0)) / (2 * l + 1 + 2 * a)  # (N, K)
    for dim in (3, 2):
        for _ in range(3):
            padded = F.pad(x, (reach, reach, 0, 0) if dim == 3 else (0, 0, reach, reach), mode="replicate")
            x = (padded.unfold(dim, 2 * reach + 1, 1) * kernel.view(-1, 1, 1, 1, 2 * reach + 1)).sum(-1)  # (N, C, H, W)
    return x


class TestMaskedEqualsIndexSets:
    @pytest.mark.parametrize("seed", [0, 1])
    def test_color_augment(self, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        x = torch.rand(400, 3, 12, 12, generator=generator)  # (N, 3, S, S) in [0, 1]
        p = sample_colors(len(x), generator)
        assert p.jitter.sum() > 250 and p.blur.sum() > 20 and p.solarize.sum() > 20  # every group is met
        masked = color_augment(x.clone(), p)
        torch.testing.assert_close(masked, color_by_index_sets(x.clone(), p), atol=1e-6, rtol=0)
        assert not torch.allclose(masked, x, atol=1e-2)  # not vacuous: the steps change the patches

    @pytest.mark.parametrize("height,width,ratio", [(32, 32, (1.0, 1.0)), (64, 80, (3 / 4, 4 / 3))])
    def test_crop_window_from_the_constants(self, height: int, width: int, ratio: tuple[float, float]) -> None:
        generator = torch.Generator().manual_seed(0)
        images = torch.rand(8, 3, height, width, generator=generator)
        c = sample_crops(20_000, height, width, ratio, generator)
        window = crop_window(height, width, ratio)
        assert window == max(c.height.max(), c.width.max())  # the bound is met, no wider
        c = sample_crops(64, height, width, ratio, generator)
        data_window = int(max(c.height.max(), c.width.max()))  # today's window, read from the boxes
        torch.testing.assert_close(ops.resized_crop(images, c, 24, window),
                                   ops.resized_crop(images, c, 24, data_window),
                                   atol=1e-6, rtol=0)

    def test_crop_window_holds_the_fallback(self) -> None:
        c = sample_crops(200, 10, 10, (1.0, 1.0), torch.Generator().manual_seed(0), scale=(0.001, 0.002))
        assert (c.height == 10).all() and crop_window(10, 10, (1.0, 1.0), (0.001, 0.002)) == 10  # all tries fail
        c = sample_crops(2000, 4, 400, (3 / 4, 4 / 3), torch.Generator().manual_seed(0))
        assert crop_window(4, 400, (3 / 4, 4 / 3)) >= max(c.height.max(), c.width.max())

    def test_blur_reach_from_the_largest_sigma(self) -> None:
        sigma = torch.linspace(0.0, 2.0, 2001)
        assert ops.blur_reach(2.0) == int(ops.box_radius(sigma)[0].max()) + 1 == 2
        x = torch.rand(40, 3, 16, 12, generator=torch.Generator().manual_seed(0))
        sigma = torch.linspace(0.1, 2.0, 40)
        torch.testing.assert_close(ops.gaussian_blur(x, sigma), blur_by_passes(x, sigma), atol=1e-6, rtol=0)
        small = torch.full((40,), 0.3)  # a batch whose data would give a narrower kernel
        torch.testing.assert_close(ops.gaussian_blur(x, small), blur_by_passes(x, small), atol=1e-6, rtol=0)
        assert torch.equal(ops.gaussian_blur(x, torch.zeros(40)), x)  # σ = 0 leaves a patch as it is

    def test_cpu_chunks_change_nothing(self, monkeypatch: pytest.MonkeyPatch) -> None:
        generator = torch.Generator().manual_seed(2)
        x = torch.rand(50, 3, 16, 16, generator=generator)  # (N, 3, S, S), 3 KiB per patch
        p = sample_colors(len(x), generator)
        monkeypatch.setattr(batched, "CPU_CHUNK_BYTES", 3072 * 16)  # chunks of 16, the last of 2
        assert torch.equal(photometric(x.clone(), p), normalize(color_augment(x.clone(), p)))
