"""Export a trained EMP-SSL backbone as a torchvision ResNet-18 state dict, plus the pre_feature head.

Usage:
    python scripts/export.py --ckpt logs/EMP-SSL-Training/<run>/save_models/29.pt --out emp_ssl_resnet18.pt
    python scripts/export.py --ckpt official.pt --arch resnet18-imagenet --out in100.pt   # an official state dict

The output is one file, `torch.save` of a dict that `torch.load(path, weights_only=True)` reads:
    "backbone":    state dict of torchvision.models.resnet18 with fc = nn.Identity() (no fc.* keys)
    "pre_feature": state dict of nn.Sequential(nn.Linear(512, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU())
    "stem":        "cifar" (3×3 stride-1 conv1, no max-pool) or "imagenet" (torchvision's own stem)
    "hidden_dim":  width of pre_feature (4096 in the paper);  "source": the checkpoint exported
Load it with:
    model = torchvision.models.resnet18()
    model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)  # "cifar" stem only
    model.maxpool = nn.Identity()                        # "cifar" stem only
    model.fc = nn.Identity()                             # the output is the 512-d feature
    model.load_state_dict(torch.load(path, weights_only=True)["backbone"])
Inputs are normalised with mean 0.5 and std 0.5 per channel, as in training.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if __name__ == "__main__":  # first: Ctrl-C while the modules below load ends in one line, status 130
    from plumbing.errors import interrupt_in_one_line
    interrupt_in_one_line()

import torch  # noqa: E402

from hubconf import emp_ssl_resnet18  # noqa: E402
from model import ENCODER_DEFAULTS, RESNET18_ARCHS, Encoder  # noqa: E402
from plumbing.cli import ArgumentParser, run_cli  # noqa: E402
from plumbing.files import check_file_writable, write_file  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser("EMP-SSL export", description="Write a trained backbone as a torchvision resnet18 "
                            "state dict plus the pre_feature head (format: see the module docstring).")
    parser.add_argument("--ckpt", type=Path, required=True, help="our checkpoint, or an official state dict")
    parser.add_argument("--arch", default=None, choices=RESNET18_ARCHS,
                        help="backbone (default: the checkpoint's; an official state dict: "
                             f"{ENCODER_DEFAULTS['arch']})")
    parser.add_argument("--out", type=Path, required=True, help="file to write")
    return parser


def export_state(encoder: Encoder, source: Path) -> dict[str, Any]:
    """The exported dict. Our ResNet-18 backbones are torchvision's resnet18 with fc = Identity
    (and, for CIFAR, the 3×3 stem without max-pool), so their parameter names are torchvision's."""
    backbone = encoder.backbone
    return {"backbone": backbone.state_dict(), "pre_feature": encoder.pre_feature.state_dict(),
            "stem": "cifar" if backbone.conv1.kernel_size == (3, 3) else "imagenet",
            "hidden_dim": encoder.pre_feature[0].out_features, "source": str(source)}


def main(args: argparse.Namespace) -> None:
    check_file_writable(args.out, "--out")
    state = export_state(emp_ssl_resnet18(args.ckpt, args.arch), args.ckpt)
    write_file(args.out, lambda tmp: torch.save(state, tmp), "choose another --out")
    print(f"wrote {args.out}: torchvision resnet18 backbone ({state['stem']} stem, fc = Identity) and "
          f"pre_feature (512 → {state['hidden_dim']})")


if __name__ == "__main__":
    run_cli(main, get_args_parser())
