"""The objectives of main.py's --loss: EMP-SSL's (the default) and VICReg's, over P patches.

Every criterion is called as ``criterion(z, z_global)`` with z (P, B, d) this rank's embeddings (P
patch groups, patch index p of every image; B images; the encoder's projection as it is) and
z_global (P, W·B, d) the same gathered from every rank, rank-major (z itself in one process), and
returns ``(loss, {name: detached value})``. Each objective owns what it needs of z: EMP-SSL's puts
the rows on the unit sphere, VICReg's uses them as they are. :data:`LOSSES` is the one table of
them (a line of help, the flags each reads with their defaults, how it is built); adding an
objective is one class and one entry.

EMP-SSL (Tong et al. 2023), for unit rows u = z/‖z‖:

    L = patch_sim · (−S) + tcr · (−mean_p R(U_p)),

with S the mean cosine similarity of each patch to its image's mean embedding (local images) and R
the coding rate of one patch group (the global batch). Both terms are negative in normal training.

VICReg (Bardes, Ponce, LeCun 2022), generalised from two views to P patches so that P = 2 is the
published loss exactly:

    L = sim · mean_{p<q} mse(z_p, z_q) + std · mean_p v(Z_p) + cov · 2 · mean_p c(Z_p),

with the invariance over the local images, and the variance hinge v and the covariance penalty c
of each patch group over the global batch (:class:`VICRegLoss`).

Precision: both losses run in float32 under bf16 autocast. The coding rate is computed with true
float32 matrix products, forward and backward, whatever the process allows elsewhere (TF32 matmuls
on CUDA): in TF32 its gradient loses 2 to 5 digits. :func:`cuda_matmul_precision` scopes that setting.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@contextmanager
def cuda_matmul_precision(precision: str) -> Iterator[None]:
    """Inside the block, CUDA float32 matrix products run in `precision`: "ieee" (true float32) or
    "tf32" (TensorFloat-32 tensor cores: a 10-bit mantissa, on Ampere and later). The previous
    setting (torch.backends.cuda.matmul.fp32_precision, process-wide) is restored on exit, also
    on error. No effect on CPU products."""
    matmul = torch.backends.cuda.matmul
    previous = matmul.fp32_precision
    matmul.fp32_precision = precision
    try:
        yield
    finally:
        matmul.fp32_precision = previous


class _LogdetRate(torch.autograd.Function):
    """ρ_p = ½ · logdet(A_p), A_p = I_n + c · Y_p Y_pᵀ, for y (P, n, m): (P,) float32, with true
    float32 matrix products in both passes.

    Forward: A_p is symmetric with eigenvalues in [1, 1 + c·‖Y_p‖²], so one batched Cholesky
    factorisation L Lᵀ = A gives ρ = ½ · 2 · Σ log diag(L) stably for all P groups at once; it can
    fail only on NaN or infinite input, and then that group's ρ is NaN (no exception).
    Backward: dρ = ½ tr(A⁻¹ dA) with dA = c (dY Yᵀ + Y dYᵀ) and A⁻¹ symmetric gives
    dρ = c ⟨A⁻¹ Y, dY⟩, so ∂ρ/∂Y = c · A⁻¹ Y (P, n, m), solved with the saved factor L.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, y: torch.Tensor, scale: float) -> torch.Tensor:
        with cuda_matmul_precision("ieee"):
            gram = y @ y.transpose(1, 2)  # (P, n, n)
            eye = torch.eye(gram.shape[-1], device=y.device, dtype=y.dtype)
            chol, info = torch.linalg.cholesky_ex(eye + scale * gram)  # (P, n, n) lower-triangular, (P,)
        ctx.save_for_backward(y, chol)
        ctx.scale = scale
        rate = torch.diagonal(chol, dim1=-2, dim2=-1).log().sum(-1)  # (P,) ½ · 2 · Σ log diag
        return torch.where(info == 0, rate, torch.nan)  # only non-finite y fails: NaN, no exception

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        y, chol = ctx.saved_tensors
        with cuda_matmul_precision("ieee"):
            solved = torch.cholesky_solve(y, chol)  # (P, n, m) A⁻¹ Y
        return grad[:, None, None] * ctx.scale * solved, None


def total_coding_rate(z: torch.Tensor, eps: float) -> torch.Tensor:
    """Coding rate of each patch group: R(Z_p) = ½ · logdet(I_d + d/(B·ε) · Z_pᵀ Z_p).

    Args:
        z: (P, B, d) embeddings, P groups of B rows.
        eps: distortion ε > 0, used as ε directly as in the official code (main.py's --eps).
    Returns:
        (P,) float32 rates. They grow as the rows of each Z_p spread apart.

    By Sylvester's identity logdet(I_d + c·ZᵀZ) = logdet(I_B + c·ZZᵀ), so the smaller of the
    two Gram matrices is used (B×B when B < d), and one batched Cholesky factorisation gives the
    rates of all P groups at once (:class:`_LogdetRate`). A group with NaN or infinite input gets
    a NaN rate (the trainer's non-finite guard sees it) rather than an exception. The Gram matrix
    is formed in float32 even under bf16 autocast, and with true float32 products (no TF32) in
    the forward and the backward pass whatever the process-wide setting: the rate's gradient
    loses digits in lower precision.
    """
    with torch.autocast(device_type=z.device.type, enabled=False):
        z = z.float()
        _, b, d = z.shape
        rows = z if b <= d else z.transpose(1, 2)  # (P, n, m): Y Yᵀ is ZZᵀ (B×B) or ZᵀZ (d×d)
        return _LogdetRate.apply(rows, d / (b * eps))


def invariance(z: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity of every patch embedding to its image's mean embedding.

    S = mean_p mean_b cos(z_{p,b}, z̄_b) with z̄_b = mean_p z_{p,b} (not re-normalised;
    the gradient flows through the mean too, as in the official code).

    Args:
        z: (P, B, d) embeddings.
    Returns:
        scalar S in [−1, 1]; 1 when all patches of each image agree.
    """
    z_mean = z.mean(dim=0, keepdim=True)  # (1, B, d)
    return F.cosine_similarity(z, z_mean, dim=-1).mean()


def unit_rows(z: torch.Tensor) -> torch.Tensor:
    """z / ‖z‖ along the last dimension (F.normalize: ‖z‖ clamped at 1e-12), for z (..., d); same shape.

    The rows are normalised as one (rows, d) matrix and viewed back: the view's backward then hands
    the normalisation's backward a contiguous gradient. The coding rate's gradient comes
    column-major, and summed over d along that layout it rounds differently; this way float32
    training is bit for bit what it was when the encoder normalised its (P·B, d) output
    (tests/test_placement.py).
    """
    return F.normalize(z.reshape(-1, z.shape[-1]), dim=1).view(z.shape)  # (rows, d) → (..., d)


class EMPSSLLoss(nn.Module):
    """L = patch_sim · (−S) + tcr · (−mean_p R(U_p)) with distortion ε in R, on the rows of z put
    on the unit sphere (official signs; the official values are the defaults of main.py's
    --patch_sim, --tcr and --eps). Usage::

        loss, parts = EMPSSLLoss(200.0, 1.0, 0.2)(z, z_global)  # (P, B, d), (P, W·B, d)
    """

    def __init__(self, patch_sim: float, tcr: float, eps: float) -> None:
        super().__init__()
        self.patch_sim, self.tcr, self.eps = patch_sim, tcr, eps

    def forward(self, z: torch.Tensor, z_global: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss for embeddings z (P, B, d) and the gathered z_global (P, W·B, d).

        Both are put on the unit sphere (u = z/‖z‖ along d) here; z_global that is z itself (one
        process) is normalised once, so its two uses add their gradients before the normalisation's
        backward, as when the encoder normalised. The coding rate is taken over the global batch,
        the invariance over this rank's images. Returns (loss, {"invariance": S, "coding_rate":
        mean_p R}) with both parts detached (the measured rate; tcr is its weight).
        """
        unit = unit_rows(z)  # (P, B, d)
        unit_global = unit if z_global is z else unit_rows(z_global)  # (P, W·B, d)
        sim = invariance(unit)
        rate = total_coding_rate(unit_global, self.eps).mean()
        loss = self.patch_sim * (-sim) + self.tcr * (-rate)
        return loss, {"invariance": sim.detach(), "coding_rate": rate.detach()}


VICREG_STD_EPS = 1e-4  # added to each variance under the square root, as the published code does


def pair_mse(z: torch.Tensor) -> torch.Tensor:
    """VICReg's invariance over P patches: the mean over patch pairs p < q of mse(z_p, z_q), the mean
    squared difference over images and dimensions.

    In O(P) instead of O(P²) pairs, from each image's mean z̄_b = mean_p z_pb: for every image and
    dimension Σ_{p<q} (z_p − z_q)² = P · Σ_p (z_p − z̄)², and there are P(P − 1)/2 pairs, so

        mean_{p<q} mse(z_p, z_q) = 2P/(P − 1) · mean_{p,b,k} (z_pbk − z̄_bk)².

    At P = 2 this is mse(z_1, z_2), the published term. z: (P, B, d), P ≥ 2. Returns a scalar ≥ 0,
    0 when all patches of each image agree.
    """
    p = z.shape[0]
    centred = z - z.mean(dim=0, keepdim=True)  # (P, B, d)
    return centred.pow(2).mean() * (2 * p / (p - 1))


def batch_covariance(z: torch.Tensor) -> torch.Tensor:
    """The covariance of the dimensions of each patch group over its N rows: C_p = Y_pᵀ Y_p / (N − 1),
    Y_p the rows of z[p] centred on their mean (unbiased; diagonal: each dimension's variance).
    z: (P, N, d), N ≥ 2. Returns (P, d, d)."""
    centred = z - z.mean(dim=1, keepdim=True)  # (P, N, d)
    return centred.transpose(1, 2) @ centred / (z.shape[1] - 1)  # (P, d, d)


def variance_hinge(cov: torch.Tensor) -> torch.Tensor:
    """VICReg's variance term of each group: v_p = mean_k relu(1 − sqrt(C_p[k, k] + 1e-4)), a hinge
    that pushes the standard deviation of every dimension up to 1 over the batch.
    cov: (P, d, d) from :func:`batch_covariance`. Returns (P,) values in [0, 1)."""
    std = torch.sqrt(torch.diagonal(cov, dim1=1, dim2=2) + VICREG_STD_EPS)  # (P, d)
    return F.relu(1 - std).mean(dim=1)


def covariance_penalty(cov: torch.Tensor) -> torch.Tensor:
    """VICReg's covariance term of each group: c_p = Σ_{k≠l} C_p[k, l]² / d, pushing the dimensions
    apart (decorrelated). cov: (P, d, d) from :func:`batch_covariance`. Returns (P,) values ≥ 0."""
    d = cov.shape[-1]
    off_diagonal = cov.masked_fill(torch.eye(d, dtype=torch.bool, device=cov.device), 0.0)  # (P, d, d)
    return off_diagonal.pow(2).sum(dim=(1, 2)) / d


class VICRegLoss(nn.Module):
    """VICReg's objective (Bardes, Ponce, LeCun 2022) over P patches, on z as it is (no normalisation):

        L = sim · I + std · V + cov · C,
        I = mean_{p<q} mse(z_p, z_q)     (this rank's images, :func:`pair_mse`),
        V = mean_p v(Z_p)                (Z_p = z_global[p], the global batch, :func:`variance_hinge`),
        C = 2 · mean_p c(Z_p)            (the same, :func:`covariance_penalty`).

    At P = 2 this is the published loss exactly: one pair for I, V the mean of the two views'
    hinges (the published halves), and C the SUM of the two views' penalties, which is why C is
    twice the mean over patches. Every term is an average over patches (pairs for I), so the scale
    of the coefficients does not change with P. The covariance uses the gathered batch size N,
    C_p = Y_pᵀY_p/(N − 1). Computed in float32 (float64 for float64 z), also under bf16 autocast.
    The defaults 25, 25, 1 of main.py's --sim_coeff, --std_coeff, --cov_coeff are the published
    ones. Usage::

        loss, parts = VICRegLoss(25.0, 25.0, 1.0)(z, z_global)  # (P, B, d), (P, W·B, d)
    """

    def __init__(self, sim_coeff: float, std_coeff: float, cov_coeff: float) -> None:
        super().__init__()
        self.sim_coeff, self.std_coeff, self.cov_coeff = sim_coeff, std_coeff, cov_coeff

    def forward(self, z: torch.Tensor, z_global: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss for embeddings z (P, B, d) and the gathered z_global (P, W·B, d). Returns (loss,
        {"invariance": I, "variance": V, "covariance": C}) with the terms detached (unweighted)."""
        dtype = torch.promote_types(z.dtype, torch.float32)  # float32, or float64 as given
        with torch.autocast(device_type=z.device.type, enabled=False):
            cov = batch_covariance(z_global.to(dtype))  # (P, d, d)
            inv = pair_mse(z.to(dtype))
            var = variance_hinge(cov).mean()
            decorrelation = 2 * covariance_penalty(cov).mean()
            loss = self.sim_coeff * inv + self.std_coeff * var + self.cov_coeff * decorrelation
        return loss, {"invariance": inv.detach(), "variance": var.detach(), "covariance": decorrelation.detach()}


@dataclass(frozen=True)
class Objective:
    """One --loss: what it is (for --help); the main.py flags it reads, with their defaults (main.py
    fills those left unset, and refuses a flag of another objective given explicitly); and
    make(args), which builds the criterion from main.py's args namespace."""

    help: str
    defaults: dict[str, float]
    make: Callable[[argparse.Namespace], nn.Module]


LOSSES: dict[str, Objective] = {
    "emp": Objective("EMP-SSL, the official: cosine of each patch to its image's mean and the total coding rate, "
                     "on z put on the unit sphere", {"patch_sim": 200.0, "tcr": 1.0, "eps": 0.2},
                     make=lambda args: EMPSSLLoss(args.patch_sim, args.tcr, args.eps)),
    "vicreg": Objective("VICReg over the P patches: mean squared difference of patch pairs, a hinge on each "
                        "dimension's standard deviation, off-diagonal covariance; z as it is",
                        {"sim_coeff": 25.0, "std_coeff": 25.0, "cov_coeff": 1.0},
                        make=lambda args: VICRegLoss(args.sim_coeff, args.std_coeff, args.cov_coeff)),
}
