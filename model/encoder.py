"""The EMP-SSL encoder: backbone → pre_feature (the representation) → projection (what the objective receives)."""
from __future__ import annotations

import torch
import torch.nn as nn

from model.resnet import build_backbone

ENCODER_DEFAULTS = {"arch": "resnet18-cifar", "hidden_dim": 4096, "z_dim": 1024}  # the official encoder


class Encoder(nn.Module):
    """backbone (N, F) → pre_feature: Linear(F, h) → BN → ReLU, the h-d representation that
    evaluation uses → projection: Linear(h, h) → BN → ReLU → Linear(h, z). The projection is
    returned as it is: the objective owns its normalisation (loss.py: EMP-SSL's loss puts the rows
    on the unit sphere, VICReg's uses them as they are).

    Parameter names (`backbone.*`, `pre_feature.*`, `projection.*`) match the official encoder,
    so official state dicts load once their `module.` prefix is stripped. The official backbone
    and widths are :data:`ENCODER_DEFAULTS` (main.py's defaults of --arch, --hidden_dim, --z_dim).
    """

    def __init__(self, arch: str, hidden_dim: int, z_dim: int) -> None:
        super().__init__()
        self.backbone, feature_dim = build_backbone(arch)
        self.pre_feature = nn.Sequential(
            nn.Linear(feature_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU()
        )
        self.projection = nn.Sequential(
            nn.Linear(hidden_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, z_dim),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (N, 3, H, W) → (z (N, z_dim), the projection, not normalised; pre_feature (N, hidden_dim))."""
        feature = self.features(x)
        return self.projection(feature), feature

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, 3, H, W) → pre_feature(backbone(x)) (N, hidden_dim), the representation alone:
        what evaluation needs, without running the projection."""
        return self.pre_feature(self.backbone(x))
