"""The EMP-SSL objective: cosine-to-mean invariance and the Total Coding Rate (TCR).

The criterion is called as ``criterion(z, z_global)`` with z (P, B, d) this rank's embeddings (P
patch groups, patch index p of every image; B images; the encoder's projection as it is) and
z_global (P, W·B, d) the same gathered from every rank, rank-major (z itself in one process), and
returns ``(loss, {name: detached value})``. The objective owns what it needs of z: EMP-SSL's puts
the rows on the unit sphere, u = z/‖z‖. The loss minimised is

    L = patch_sim · (−S) + tcr · (−mean_p R(U_p)),

with S the mean cosine similarity of each patch to its image's mean embedding (local images) and R
the coding rate of one patch group (the global batch). Both terms are negative in normal training.

Precision: the coding rate is computed in float32 with true float32 matrix products, forward and
backward, whatever the process allows elsewhere (autocast to bf16, TF32 matmuls on CUDA): in TF32
its gradient loses 2 to 5 digits. :func:`cuda_matmul_precision` scopes that setting.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

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
