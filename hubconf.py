"""torch.hub entry point: a trained EMP-SSL encoder from a local clone, offline.

    model = torch.hub.load("path/to/this/repo", "emp_ssl_resnet18", source="local",
                           checkpoint="logs/EMP-SSL-Training/<run>/save_models/29.pt")
    z, feature = model(x)  # x (N, 3, H, W), normalised with mean 0.5 and std 0.5 per channel

Returns our `model.Encoder` in eval mode on the CPU with the checkpoint's weights loaded strictly.
`model(x)` gives (z (N, z_dim), unit rows: the projection the loss trains on; feature (N, hidden_dim):
the pre_feature representation that the paper evaluates, there averaged over 128 augmented patches
per image). `model.backbone(x)` gives the 512-d ResNet-18 feature. No weights are hosted, so
`checkpoint` is required: one of our training checkpoints or an official (DataParallel) state dict.
"""
from __future__ import annotations

import os
from pathlib import Path

from checkpoint import load_state_strict, read_checkpoint
from errors import UserError
from model import ENCODER_DEFAULTS, Encoder

dependencies = ["torch", "torchvision", "numpy"]

RESNET18_ARCHS = ("resnet18-cifar", "resnet18-imagenet", "resnet18-tinyimagenet")


def emp_ssl_resnet18(checkpoint: str | os.PathLike, arch: str | None = None) -> Encoder:
    """The EMP-SSL encoder of a checkpoint, in eval mode on the CPU.

    arch defaults to the checkpoint's training flag (an official state dict has none: then
    resnet18-cifar); the pre_feature and projection widths are read from the weights.
    """
    path = Path(checkpoint)
    state, record = read_checkpoint(path)
    arch = arch or record["args"].get("arch", ENCODER_DEFAULTS["arch"])  # an official state dict names none
    if arch not in RESNET18_ARCHS:
        raise UserError(f"{path} holds a {arch} encoder, not a ResNet-18 (resnet10-cifar has widths 32-256 and one "
                        f"block per stage): use a checkpoint of {', '.join(RESNET18_ARCHS)}")
    hidden_dim, z_dim = (state[key].shape[0] if key in state else ENCODER_DEFAULTS[name]
                         for name, key in (("hidden_dim", "pre_feature.0.weight"), ("z_dim", "projection.3.weight")))
    model = Encoder(arch, hidden_dim, z_dim)
    load_state_strict(model, state, path)
    return model.eval()
