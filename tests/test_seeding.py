"""The seeding scheme (dataset/seeding.py): seeds of nearby keys and of different streams are
unrelated and never meet; the counter-based random source of the evaluation patches is uniform,
independent between neighbouring keys, a function of (seed, image, patch, draw) alone, and free
of host reads."""
from __future__ import annotations

import math

import pytest
import torch

from dataset.draws import sample_colors, sample_crops
from dataset.seeding import KeyedUniform, eval_seed, image_seed, mix32, order_seed, step_seed
from plumbing.host_sync import HostSyncs

IMAGES, PATCHES, DRAWS = 1000, 16, 16  # 256,000 values: the bounds below are 4-5 standard errors


def draws(seed: int = 0, images: torch.Tensor | None = None, num_patches: int = PATCHES) -> torch.Tensor:
    """(P, B, DRAWS) uniforms of images 0 … IMAGES − 1 (or `images`), one call of DRAWS per patch."""
    images = torch.arange(IMAGES) if images is None else images
    return KeyedUniform(seed, images, num_patches)(num_patches * len(images), DRAWS).view(num_patches, len(images), -1)


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two equally shaped tensors, flattened."""
    a, b = a.flatten().double() - a.double().mean(), b.flatten().double() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def pair_chi_square(a: torch.Tensor, b: torch.Tensor, bins: int = 8) -> float:
    """χ² of the pairs (a, b) over a bins × bins grid of [0, 1)², against the uniform joint law
    (bins² − 1 degrees of freedom: mean 63, standard deviation √126 ≈ 11.2 for 8 bins)."""
    cell = (a.flatten() * bins).long() * bins + (b.flatten() * bins).long()
    counts = torch.bincount(cell, minlength=bins * bins).double()
    expected = a.numel() / bins**2
    return float(((counts - expected) ** 2 / expected).sum())


class TestHash:
    def test_mix32_is_lowbias32_with_32_bit_wrap_around(self) -> None:
        def reference(x: int) -> int:  # Wellons' lowbias32 in unbounded Python integers, reduced mod 2³²
            x ^= x >> 16
            x = x * 0x7FEB352D % 2**32
            x ^= x >> 15
            x = x * 0x846CA68B % 2**32
            return x ^ (x >> 16)

        values = [0, 1, 2, 12345, 2**31 - 1, 2**31, 2**32 - 1]
        assert [mix32(v) for v in values] == [reference(v) for v in values]
        assert mix32(torch.tensor(values)).tolist() == [reference(v) for v in values]



class TestSeeds:
    """The 63-bit seeds of ORDER, PATCHES, STEP and the evaluation streams."""

    SEEDS = (0, 1, 2, 2**40 + 1)  # nearby user seeds, and one whose high half is not zero

    def test_a_grid_of_keys_and_streams_never_shares_a_seed(self) -> None:
        index = torch.arange(1000)  # (1000,)
        grid = torch.cat([stream(seed, epoch, index) for stream in (image_seed, step_seed)
                          for seed in self.SEEDS for epoch in range(50)])  # (2·4·50·1000,) = (400,000,)
        single = [order_seed(seed, epoch) for seed in self.SEEDS for epoch in range(50)]
        single += [eval_seed(seed, split) for seed in self.SEEDS for split in ("train", "test")]
        every = torch.cat([grid, torch.tensor(single)])
        assert len(every.unique()) == len(every) == 400_208
        assert all(0 <= s < 2**63 for s in single) and every.min() >= 0 and every.max() > 2**62  # 63 bits
        assert image_seed(5, 3, 7) == int(image_seed(5, 3, torch.tensor(7)))  # ints and tensors alike

    @pytest.mark.parametrize("neighbour", ["index", "epoch", "seed", "stream"])
    def test_neighbouring_keys_give_unrelated_seeds(self, neighbour: str) -> None:
        """Every bit of the seed flips with probability ½ between neighbouring keys (a linear mix
        such as seed·1,000,003 + epoch flips a few low bits), over 10,000 pairs."""
        i = torch.arange(10_000)  # (10,000,)
        base = image_seed(0, 0, i)
        other = {"index": image_seed(0, 0, i + 1), "epoch": image_seed(0, 1, i), "seed": image_seed(1, 0, i),
                 "stream": step_seed(0, 0, i)}[neighbour]
        flips = ((base ^ other).view(-1, 1) >> torch.arange(63)) & 1  # (10,000, 63)
        assert ((flips.double().mean(0) - 0.5).abs() < 5 * 0.005).all()  # 5 standard errors per bit


class TestUniformity:
    def test_mean_variance_and_kolmogorov_smirnov(self) -> None:
        u = draws().flatten().double()
        n = u.numel()
        assert u.dtype == torch.float64 and 0 <= u.min() and u.max() < 1
        assert abs(u.mean() - 0.5) < 4 * math.sqrt(1 / 12 / n)  # standard error of the mean
        assert abs(u.var() - 1 / 12) < 4 * math.sqrt((1 / 80 - 1 / 144) / n)  # of the variance
        cdf = torch.arange(1, n + 1, dtype=torch.float64) / n
        ks = float((u.sort().values - cdf).abs().max())
        assert ks * math.sqrt(n) < 1.95, ks  # Kolmogorov's 0.1 % critical value

    def test_neighbouring_images_patches_and_draws_are_independent(self) -> None:
        u = draws()  # (P, B, D)
        neighbours = {"image": (u[:, :-1], u[:, 1:]), "patch": (u[:-1], u[1:]), "draw": (u[..., :-1], u[..., 1:])}
        for name, (a, b) in neighbours.items():
            assert abs(correlation(a, b)) < 4 / math.sqrt(a.numel()), name
            assert pair_chi_square(a, b) < 63 + 5 * math.sqrt(126), name

    def test_seeds_give_independent_streams(self) -> None:
        a, b = draws(seed=0), draws(seed=1)
        assert abs(correlation(a, b)) < 4 / math.sqrt(a.numel()) and pair_chi_square(a, b) < 63 + 5 * math.sqrt(126)


class TestKeys:
    def test_an_images_draws_do_not_depend_on_its_batch(self) -> None:
        alone = [draws(images=torch.tensor([i]), num_patches=4)[:, 0] for i in (7, 500, 999)]  # (P, D) each
        together = draws(images=torch.tensor([999, 3, 7, 500]), num_patches=4)  # (P, 4, D)
        for image, position in ((0, 2), (1, 3), (2, 0)):
            assert torch.equal(together[:, position], alone[image])

    def test_calls_continue_the_draw_counter(self) -> None:
        rand = KeyedUniform(0, torch.arange(3), 2)
        first, second = rand(6, 5), rand(6, 3)
        assert torch.equal(torch.cat([first, second], 1), KeyedUniform(0, torch.arange(3), 2)(6, 8))  # (6, 8)

    def test_wrong_row_count_is_refused(self) -> None:
        with pytest.raises(ValueError, match="6 patches, not 5"):
            KeyedUniform(0, torch.arange(3), 2)(5, 1)


class TestNoHostReads:
    def test_keyed_draws_and_the_parameter_sampling(self) -> None:
        images = torch.arange(20)
        with HostSyncs() as reads:
            rand = KeyedUniform(eval_seed(0, "test"), images, 8)
            crops = sample_crops(160, 40, 48, (3 / 4, 4 / 3), rand)
            colors = sample_colors(160, rand)
        assert reads.syncs == []
        assert crops.top.shape == colors.order.shape[:1] == (160,)
