"""Benchmark of the evaluation: bag-of-features extraction throughput and probe time.

Usage:
    python scripts/benchmark_eval.py                      # CPU-sized defaults, about a minute
    python scripts/benchmark_eval.py --device cuda --images 2000 --eval_bs 100 --workers 16 \
        --knn_train 50000 --knn_test 10000 --linear_train 50000 --linear_epochs 5

Extraction is timed three ways on synthetic 32×32 images at --test_patches patches each:
augmentation alone (the PIL pipeline in DataLoader workers), the encoder's forward alone (on
patches already in memory), and the two together as evaluate.py runs them. The probes run on
random features of the official shape; the linear probe's time is also scaled to 100 epochs.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import torch
from torch.utils.data import Subset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for `python scripts/…`

from dataset import SyntheticShapes
from errors import ArgumentParser, run_cli
from features import bag_of_features, patch_loader
from device import resolve_device
from model import ARCHS, Encoder
from probes import knn_accuracy, linear_probe


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser("EMP-SSL evaluation benchmark", description=__doc__.split("\n\n")[0])
    feats = parser.add_argument_group("Extraction")
    feats.add_argument("--arch", default="resnet18-cifar", choices=ARCHS, help="backbone (resnet18-cifar)")
    feats.add_argument("--hidden_dim", type=int, default=4096, help="pre_feature width (4096)")
    feats.add_argument("--images", type=int, default=8, help="images to extract (default 8, CPU-sized)")
    feats.add_argument("--test_patches", type=int, default=128, help="patches per image (official 128)")
    feats.add_argument("--eval_bs", type=int, default=4, help="images per batch (default 4)")
    feats.add_argument("--forward_bs", type=int, default=512, help="patches per forward pass (default 512)")
    feats.add_argument("--workers", type=int, default=2, help="DataLoader workers for the augmentation (2)")
    feats.add_argument("--precision", default=None, choices=("fp32", "bf16"),
                       help="forward precision (default: bf16 on CUDA, else fp32)")
    probes = parser.add_argument_group("Probes")
    probes.add_argument("--dim", type=int, default=4096, help="feature width of the probes (4096)")
    probes.add_argument("--classes", type=int, default=10, help="classes (10)")
    probes.add_argument("--knn_train", type=int, default=10000,
                        help="kNN memory size (default 10,000; official 50,000)")
    probes.add_argument("--knn_test", type=int, default=2000, help="kNN queries (default 2,000; official 10,000)")
    probes.add_argument("--linear_train", type=int, default=10000, help="linear-probe training features (10,000)")
    probes.add_argument("--linear_epochs", type=int, default=2, help="epochs timed (default 2; official 100)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N")
    return parser


def timed(fn, device: torch.device) -> tuple[float, object]:
    """(seconds, fn()) with the device synchronised on both sides."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    tick = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - tick, out


def main(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    dtype = torch.bfloat16 if (args.precision or ("bf16" if device.type == "cuda" else "fp32")) == "bf16" else None
    torch.manual_seed(0)
    model = Encoder(args.arch, args.hidden_dim, 128).to(device).eval()
    images = SyntheticShapes(train=False)
    images = Subset(images, range(min(args.images, len(images))))
    loader = patch_loader(images, "synthetic", args.test_patches, 0, args.eval_bs, args.workers)

    def bag(batches: Iterable) -> tuple[torch.Tensor, torch.Tensor]:
        return bag_of_features(model, batches, device, args.forward_bs, dtype)

    bag(list(patch_loader(Subset(images, range(1)), "synthetic", 2, 0, 1, 0)))  # warm-up
    aug_s, batches = timed(lambda: list(loader), device)
    forward_s, _ = timed(lambda: bag(batches), device)
    total_s, _ = timed(lambda: bag(loader), device)

    g = torch.Generator().manual_seed(0)
    sizes = (args.knn_train, args.knn_test)
    train_x, test_x = (torch.randn(n, args.dim, generator=g).to(device) for n in sizes)  # (N, dim), (M, dim)
    train_y, test_y = (torch.randint(args.classes, (n,), generator=g).to(device) for n in sizes)  # (N,), (M,)
    knn_s, _ = timed(lambda: knn_accuracy(train_x, train_y, test_x, test_y, args.classes), device)
    lin_x, lin_y = train_x[:args.linear_train], train_y[:args.linear_train]
    linear_s, _ = timed(lambda: linear_probe(lin_x, lin_y, test_x, test_y, args.classes, args.linear_epochs), device)

    n = len(images)
    rows = {
        f"augmentation only ({args.workers} workers), images/s": n / aug_s,
        f"forward only ({args.arch}, {dtype or torch.float32}), images/s": n / forward_s,
        "extraction (augmentation + forward), images/s": n / total_s,
        f"kNN {args.knn_train} x {args.knn_test} x {args.dim}, s": knn_s,
        f"linear probe on {len(lin_y)} features, s per epoch": linear_s / args.linear_epochs,
        "linear probe, 100 epochs (scaled), s": 100 * linear_s / args.linear_epochs,
    }
    print(f"device: {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}, "
          f"{torch.get_num_threads()} threads); {n} images x {args.test_patches} patches")
    print("| measure | value |\n|---|---|")
    for name, value in rows.items():
        print(f"| {name} | {value:.3g} |")
    print(json.dumps({**vars(args), "device": str(device), **rows}, default=str))


if __name__ == "__main__":
    run_cli(main, get_args_parser())
