"""The batched Gaussian blur (shifted sums, linear in the pixels) against an independent dense
reference: PIL's three extended-box passes per axis as float64 matrices M = B³, out = M_y · x · M_xᵀ."""
from __future__ import annotations

import pytest
import torch

from dataset import image_ops as ops

SIZES = [(32, 32), (64, 80), (224, 224)]


def box_matrices(sigma: torch.Tensor, n: int) -> torch.Tensor:
    """One box pass along n pixels with replicated edges as a float64 matrix per patch: row i
    adds 1 at the pixels clamp(i + o, 0, n − 1) for |o| ≤ l and a at those for |o| = l + 1
    (l, a from box_radius), all divided by 2l + 1 + 2a. Returns (N, n, n) B."""
    l, a = (t.double() for t in ops.box_radius(sigma))  # (N,) each
    box = torch.zeros(len(sigma), n, n, dtype=torch.float64)
    rows = torch.arange(n)
    for patch, (radius, outer) in enumerate(zip(l.tolist(), a.tolist())):
        for offset in range(-int(radius) - 1, int(radius) + 2):
            weight = (1.0 if abs(offset) <= radius else outer) / (2 * radius + 1 + 2 * outer)
            box[patch].index_put_((rows, (rows + offset).clamp(0, n - 1)), torch.tensor(weight, dtype=torch.float64),
                                  accumulate=True)
    return box


def dense_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Reference in float64: out = M_y · x · M_xᵀ with M = B³ per axis, x (N, C, H, W)."""
    _, _, h, w = x.shape
    m_y, m_x = (torch.linalg.matrix_power(box_matrices(sigma, n), ops.BLUR_PASSES) for n in (h, w))  # (N, n, n)
    return m_y.unsqueeze(1) @ x.double() @ m_x.transpose(1, 2).unsqueeze(1)  # (N, C, H, W)


def patches(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """n random patches (n, 3, h, w) in [0, 1]."""
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("h,w", SIZES)
def test_equals_the_dense_reference(h: int, w: int) -> None:
    sigma = torch.linspace(0.1, 2.0, 20 if h < 224 else 6)  # (N,) both ends of the official range
    x = patches(len(sigma), h, w)
    out = ops.gaussian_blur(x, sigma)
    assert out.dtype == torch.float32 and out.shape == x.shape
    torch.testing.assert_close(out.double(), dense_blur(x, sigma), atol=1e-6, rtol=0)


def test_every_box_of_the_range_and_the_edges() -> None:
    """σ every 0.005 over [0.1, 2] (every l and a the draws meet) on patches whose sides, 4 and 5
    pixels, are all edge: replicated pixels reach the whole patch."""
    sigma = torch.arange(0.1, 2.0 + 1e-6, 0.005)  # (381,)
    x = patches(len(sigma), 4, 5)
    torch.testing.assert_close(ops.gaussian_blur(x, sigma).double(), dense_blur(x, sigma), atol=1e-6, rtol=0)


def test_the_kernel_reach_holds_the_largest_box() -> None:
    """R = blur_reach(2) = 2 is one more than the largest l of any σ ≤ 2, and no more."""
    sigma = torch.linspace(0.0, 2.0, 2001)  # (2001,)
    assert ops.blur_reach(2.0) == int(ops.box_radius(sigma)[0].max()) + 1 == 2


@pytest.mark.parametrize("h,w", SIZES)
def test_sigma_zero_is_the_identity_bit_for_bit(h: int, w: int) -> None:
    sigma = torch.tensor([0.0, 1.3, 0.0, 0.1, 2.0, 0.0])  # σ = 0 among blurred patches
    x = patches(len(sigma), h, w)
    out = ops.gaussian_blur(x, sigma)
    assert torch.equal(out[sigma == 0], x[sigma == 0])
    assert (out[sigma > 0] - x[sigma > 0]).abs().amax(dim=(1, 2, 3)).min() > 1e-2  # the others are blurred
    assert torch.equal(ops.gaussian_blur(x, torch.zeros(len(x))), x)


def test_a_patch_does_not_depend_on_the_rest_of_the_batch() -> None:
    sigma = torch.tensor([0.1, 2.0, 0.0, 0.7, 1.0, 1.5, 0.35, 1.9])
    x = patches(len(sigma), 64, 80)
    whole = ops.gaussian_blur(x, sigma)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(1))
    assert torch.equal(ops.gaussian_blur(x[order], sigma[order]), whole[order])
    for n in range(len(x)):
        assert torch.equal(ops.gaussian_blur(x[n:n + 1], sigma[n:n + 1]), whole[n:n + 1])
