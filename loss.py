"""The EMP-SSL objective: cosine-to-mean invariance and the Total Coding Rate (TCR).

Embeddings come as z of shape (P, B, d): P patch groups (patch index p of every image),
B images, d-dimensional rows on the unit sphere. The loss minimised is

    L = patch_sim · (−S) + tcr · (−mean_p R(Z_p)),

with S the mean cosine similarity of each patch to its image's mean embedding and R the
coding rate of one patch group. Both terms are negative in normal training.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def total_coding_rate(z: torch.Tensor, eps: float) -> torch.Tensor:
    """Coding rate of each patch group: R(Z_p) = ½ · logdet(I_d + d/(B·ε) · Z_pᵀ Z_p).

    Args:
        z: (P, B, d) embeddings, P groups of B rows.
        eps: distortion ε > 0, used as ε directly as in the official code (main.py's --eps).
    Returns:
        (P,) float32 rates. They grow as the rows of each Z_p spread apart.

    By Sylvester's identity logdet(I_d + c·ZᵀZ) = logdet(I_B + c·ZZᵀ), so the smaller of the
    two Gram matrices is used (B×B when B < d). The matrix is symmetric with eigenvalues in
    [1, 1 + c·B], so one batched Cholesky factorisation L Lᵀ gives
    logdet = 2 · Σ log diag(L) stably for all P groups at once; it can fail only on NaN or
    infinite input, and then that group's rate is NaN (the trainer's non-finite guard sees it)
    rather than an exception. The Gram matrix is formed in
    float32 even under bf16 autocast: the rate's gradient loses digits in lower precision.
    """
    with torch.autocast(device_type=z.device.type, enabled=False):
        z = z.float()
        _, b, d = z.shape
        scale = d / (b * eps)
        if b <= d:
            gram = z @ z.transpose(1, 2)  # (P, B, B)
        else:
            gram = z.transpose(1, 2) @ z  # (P, d, d)
        eye = torch.eye(gram.shape[-1], device=z.device, dtype=z.dtype)
        chol, info = torch.linalg.cholesky_ex(eye + scale * gram)  # (P, n, n) lower-triangular, (P,)
        rate = torch.diagonal(chol, dim1=-2, dim2=-1).log().sum(-1)  # ½ · 2 · Σ log diag
        return torch.where(info == 0, rate, torch.nan)  # only non-finite z fails: NaN, no exception


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


class EMPSSLLoss(nn.Module):
    """L = patch_sim · (−S) + tcr · (−mean_p R(Z_p)) with distortion ε in R (official signs; the
    official values are main.py's defaults of --patch_sim, --tcr and --eps)."""

    def __init__(self, patch_sim: float, tcr: float, eps: float) -> None:
        super().__init__()
        self.patch_sim, self.tcr, self.eps = patch_sim, tcr, eps

    def forward(
        self, z: torch.Tensor, z_for_rate: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss for embeddings z (P, B, d).

        z_for_rate (P, B_global, d), when given, is used for the coding rate instead of z: under
        data parallelism the rate is taken over the batch gathered from every rank, while the
        invariance term needs only the local images.
        Returns (loss, {"invariance": S, "tcr": mean_p R}) with both parts detached.
        """
        sim = invariance(z)
        rate = total_coding_rate(z if z_for_rate is None else z_for_rate, self.eps).mean()
        loss = self.patch_sim * (-sim) + self.tcr * (-rate)
        return loss, {"invariance": sim.detach(), "tcr": rate.detach()}
