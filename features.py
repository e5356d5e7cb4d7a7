"""Bag-of-features extraction (the official evaluation's representation), its cache on disk, and
the cheap kNN monitor that training runs every few epochs.

The feature of an image is the mean of the encoder's pre_feature over P patches drawn with the
training augmentation: f(x) = 1/P Σ_p pre_feature(aug_p(x)), a (hidden_dim,) float32 vector.
Patches come from any iterable of (patches, labels) batches, with patches a (P, B, C, H, W)
tensor or a list of P tensors (B, C, H, W); :func:`patch_loader` is the CPU source (PIL
augmentation in DataLoader workers), and an on-device augmenter can feed the same function.
"""
from __future__ import annotations

import hashlib
import json
import pickle
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from checkpoint import atomic_write
from dataset import MultiPatch, augmentation_kind, build_dataset, class_balanced_subset, patch_transform
from dataset.seeded import SeededPatches
from probes import knn_accuracy

Batches = Iterable[tuple[torch.Tensor | Sequence[torch.Tensor], torch.Tensor]]
CACHE_VERSION = 1  # bump when the meaning of a cached feature changes


def eval_split(data: str, data_dir: Path, split: str, subset: int | None,
               download: bool = True) -> tuple[Dataset, int]:
    """(split of the data set, or a fixed class-balanced subset of `subset` images, number of classes)."""
    dataset = build_dataset(data, data_dir, split, download=download)
    num_classes = len(dataset.classes)
    if subset is not None:
        dataset = Subset(dataset, class_balanced_subset(dataset.targets, min(subset, len(dataset)), seed=0))
    return dataset, num_classes


def patch_loader(dataset: Dataset, data: str, num_patches: int, seed: int, eval_bs: int, workers: int,
                 pin_memory: bool = False) -> DataLoader:
    """Batches ([P tensors (B, C, H, W)], labels (B,)) of `eval_bs` images in data-set order, each
    image's P patches drawn with the training augmentation of `data` as a pure function of
    (seed, index in `dataset`): the same seed gives the same patches whatever the batch size or
    worker count."""
    kind, size = augmentation_kind(data)
    patches = SeededPatches(dataset, MultiPatch(patch_transform(kind, size), num_patches), seed)
    return DataLoader(patches, batch_size=eval_bs, shuffle=False, num_workers=workers, pin_memory=pin_memory,
                      generator=torch.Generator())  # own generator: the caller's random stream is untouched


@torch.no_grad()
def bag_of_features(model: nn.Module, batches: Batches, device: torch.device, forward_bs: int = 2048,
                    dtype: torch.dtype | None = None, desc: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean pre_feature over the P patches of every image: (features (N, hidden) float32, labels (N,)),
    both on the CPU, in the order of `batches`.

    Runs in eval mode (BatchNorm uses its running statistics, so an image's feature does not depend
    on its batch) and restores the model's mode afterwards. Each forward pass takes
    max(1, forward_bs // B) patch groups of B images, so memory stays bounded for any P; with
    `dtype` (e.g. torch.bfloat16) the forward runs under autocast, the sum stays float32.
    """
    was_training = model.training
    model.eval()
    features, labels = [], []
    for patches, targets in tqdm(batches, desc=desc, disable=desc is None, leave=False, dynamic_ncols=True):
        views = list(patches)  # P tensors (B, C, H, W)
        group = max(1, forward_bs // views[0].shape[0])
        total = None
        for start in range(0, len(views), group):
            x = torch.cat([v.to(device, non_blocking=True) for v in views[start:start + group]])  # (g·B, C, H, W)
            with torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext():
                _, pre = model(x)  # (g·B, hidden)
            part = pre.float().view(-1, views[0].shape[0], pre.shape[1]).sum(0)  # (B, hidden)
            total = part if total is None else total + part
        features.append((total / len(views)).cpu())
        labels.append(torch.as_tensor(targets).cpu())
    model.train(was_training)
    return torch.cat(features), torch.cat(labels)  # (N, hidden), (N,)


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes (read in 1 MiB blocks), the identity of a checkpoint in cache keys."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_path(folder: Path, prefix: str, key: dict[str, Any]) -> Path:
    """`<folder>/<prefix>.<split>-<16 hex digits of the key's hash>.features`."""
    text = json.dumps({**key, "version": CACHE_VERSION}, sort_keys=True, default=str)
    return folder / f"{prefix}.{key['split']}-{hashlib.sha256(text.encode()).hexdigest()[:16]}.features"


def cached_features(path: Path, key: dict[str, Any], compute: Callable[[], tuple[torch.Tensor, torch.Tensor]],
                    recompute: bool = False) -> tuple[tuple[torch.Tensor, torch.Tensor], bool]:
    """((features, labels), whether they came from the cache): read from `path` when it holds
    exactly `key` and not `recompute`, else compute() and store at `path` atomically (a failed or
    interrupted run never leaves a partial file; an unwritable folder only skips the cache)."""
    if path.is_file() and not recompute:
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError):
            stored = {}
        if stored.get("key") == key:
            return (stored["features"], stored["labels"]), True
    features, labels = compute()
    record = {"key": key, "features": features, "labels": labels}
    try:
        atomic_write(path, lambda tmp: torch.save(record, tmp))
    except OSError as err:
        print(f"warning: could not cache features at {path} ({err.strerror or err}); continuing without")
    return (features, labels), False


class KNNMonitor:
    """The training-time learning check: weighted kNN top-1 of the test split against the
    training split, on bags of a few patches (fixed seed, so the patches never change)."""

    def __init__(self, data: str, data_dir: Path, download: bool, num_patches: int, subset: int | None,
                 seed: int, eval_bs: int, workers: int, device: torch.device) -> None:
        self.device, self.num_patches = device, num_patches
        self.loaders, self.num_classes = {}, 0
        for split in ("train", "test"):
            dataset, self.num_classes = eval_split(data, data_dir, split, subset, download)
            self.loaders[split] = patch_loader(dataset, data, num_patches, seed, eval_bs, workers,
                                               pin_memory=device.type == "cuda")

    def __call__(self, model: nn.Module) -> float:
        """kNN top-1 (percent, k 20, T 0.07) of the model's current bag-of-features."""
        dtype = torch.bfloat16 if self.device.type == "cuda" else None
        train_f, train_y = bag_of_features(model, self.loaders["train"], self.device, dtype=dtype, desc="kNN memory")
        test_f, test_y = bag_of_features(model, self.loaders["test"], self.device, dtype=dtype, desc="kNN test")
        device = self.device
        return knn_accuracy(train_f.to(device), train_y.to(device), test_f.to(device), test_y.to(device),
                            self.num_classes)["top1"]
