"""torch.hub entry point: a trained EMP-SSL encoder from a local clone, offline.

    model = torch.hub.load("path/to/this/repo", "emp_ssl_resnet18", source="local",
                           checkpoint="logs/EMP-SSL-Training/<run>/save_models/29.pt")
    z, feature = model(x)  # x (N, 3, H, W), normalised with mean 0.5 and std 0.5 per channel

Returns our `model.Encoder` in eval mode on the CPU with the checkpoint's weights loaded strictly.
`model(x)` gives (z (N, z_dim): the projection as the objective receives it, not normalised (EMP-SSL's
loss trains on its rows put on the unit sphere, `torch.nn.functional.normalize(z, dim=1)`); feature
(N, hidden_dim): the pre_feature representation that the paper evaluates, there averaged over 128
augmented patches per image). `model.backbone(x)` gives the 512-d ResNet-18 feature. No weights are hosted, so
`checkpoint` is required: one of our training checkpoints or an official (DataParallel) state dict.

The caller's modules are left alone: this repository's packages (`model`, `plumbing`) are imported
only inside the call, past any module of the same name the caller has imported, and taken out of
``sys.modules`` again afterwards unless they were there before (:func:`own_packages`), so the
caller's `model` is neither shadowed nor used. The returned encoder works as any module; save its
``state_dict()`` rather than pickling the whole object.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from model import Encoder

dependencies = ["torch", "torchvision", "numpy"]

ROOT = Path(__file__).resolve().parent
PACKAGES = ("model", "plumbing")  # the top-level packages of this repository that the entry point imports


def is_ours(module: ModuleType) -> bool:
    """Whether an imported module is a file of this repository."""
    file = getattr(module, "__file__", None)
    return file is not None and Path(file).resolve().is_relative_to(ROOT)


@contextmanager
def own_packages() -> Iterator[None]:
    """While entered, `import model` (and plumbing) reach this repository's packages; on exit,
    sys.modules and sys.path are as before for every other module: a caller's module of the same
    name comes back, and ours leave unless they had been imported before (by our own scripts)."""
    def owned(name: str) -> bool:
        return name.split(".")[0] in PACKAGES

    before = {name: module for name, module in sys.modules.items() if owned(name)}
    foreign = {name: module for name, module in before.items() if not is_ours(module)}
    for name in foreign:
        del sys.modules[name]
    sys.path.insert(0, str(ROOT))
    try:
        yield
    finally:
        sys.path.remove(str(ROOT))
        for name in [name for name in sys.modules if owned(name) and name not in before]:
            del sys.modules[name]
        sys.modules.update(foreign)


def emp_ssl_resnet18(checkpoint: str | os.PathLike, arch: str | None = None) -> Encoder:
    """The EMP-SSL encoder of a checkpoint, in eval mode on the CPU.

    arch defaults to the checkpoint's training flag (an official state dict has none: then
    resnet18-cifar); the pre_feature and projection widths are read from the weights.
    """
    with own_packages():
        from model import ENCODER_DEFAULTS, RESNET18_ARCHS, Encoder
        from plumbing.checkpoint import load_state_strict, read_checkpoint
        from plumbing.errors import UserError

        path = Path(checkpoint)
        state, record = read_checkpoint(path)
        arch = arch or record["args"].get("arch", ENCODER_DEFAULTS["arch"])  # an official state dict names none
        if arch not in RESNET18_ARCHS:
            raise UserError(f"{path} holds a {arch} encoder, not a ResNet-18 (resnet10-cifar has widths 32-256 and "
                            f"one block per stage): use a checkpoint of {', '.join(RESNET18_ARCHS)}")
        hidden_dim, z_dim = (state[key].shape[0] if key in state else ENCODER_DEFAULTS[name]
                             for name, key in (("hidden_dim", "pre_feature.0.weight"),
                                               ("z_dim", "projection.3.weight")))
        model = Encoder(arch, hidden_dim, z_dim)
        load_state_strict(model, state, path)
        return model.eval()
