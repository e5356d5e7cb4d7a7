"""What TensorBoard shows as pictures: the patches the encoder receives, and the embedding.

Open them with `tensorboard --logdir <run folder>`: the patch grids under IMAGES, the embedding
under PROJECTOR (PCA, t-SNE and UMAP of the features, each point a thumbnail of its image).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torchvision.utils import make_grid

if TYPE_CHECKING:  # TensorBoard is imported by the caller that writes, not at import
    from torch.utils.tensorboard import SummaryWriter

GRID_PADDING = 2  # pixels between the patches of a grid


def patch_grids(x: torch.Tensor, num_patches: int, images: int) -> list[torch.Tensor]:
    """One grid per image of the P patches it contributes to a step, de-normalised for display.

    Args:
        x: (P·B, 3, S, S) patch-major patches normalised to [−1, 1] (mean 0.5, std 0.5), as the
            encoder receives them.
    Returns:
        min(images, B) grids (3, H, W) in [0, 1], ⌈√P⌉ patches a row, GRID_PADDING pixels apart.
    """
    patches = (x.detach().float().cpu() * 0.5 + 0.5).clamp(0, 1)  # Normalize(0.5, 0.5) undone
    patches = patches.view(num_patches, -1, *x.shape[1:])  # (P, B, 3, S, S)
    per_row = math.ceil(math.sqrt(num_patches))
    return [make_grid(patches[:, b], nrow=per_row, padding=GRID_PADDING)
            for b in range(min(images, patches.shape[1]))]


def log_patch_grids(writer: SummaryWriter, x: torch.Tensor, num_patches: int, augment: str, images: int = 4) -> None:
    """Write the patch grids of the first `images` images of a step as `patches/<augment>/image_<b>`."""
    for b, grid in enumerate(patch_grids(x, num_patches, images)):
        writer.add_image(f"patches/{augment}/image_{b}", grid, 0)


def log_embedding(writer: SummaryWriter, features: torch.Tensor, labels: torch.Tensor, classes: Sequence[str],
                  thumbnails: torch.Tensor, tag: str) -> None:
    """Write features (N, D) with their class names and thumbnails (N, 3, h, w) in [0, 1] for
    TensorBoard's projector."""
    names = [str(classes[int(label)]) for label in labels]
    writer.add_embedding(features.float().cpu(), metadata=names, label_img=thumbnails.float().cpu(), tag=tag)
