"""Bag-of-features extraction (the official evaluation's representation), the single full view,
the feature cache on disk, and the training-time kNN of --eval_every (:class:`KNNMonitor`).

The feature of an image is the mean of the encoder's pre_feature over P patches drawn with the
training augmentation: f(x) = 1/P Σ_p pre_feature(aug_p(x)), a (hidden_dim,) float32 vector.
Patches come from any iterable of (patches, labels) batches, with patches a (P, B, C, H, W)
tensor or a list of P tensors (B, C, H, W): :class:`dataset.patch_sources.EvaluationPatches` makes them
with either --augment path, each image's patches a pure function of (seed, split, its index in
the full split), from a random stream of the split's own (:func:`dataset.seeding.eval_seed`).
"""
from __future__ import annotations

import hashlib
import importlib
import json
import pickle
import sys
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T
from tqdm import tqdm

from dataset import DataSpec
from model import Encoder
from plumbing.files import WriteFailed, write_file
from probes import KNN_K, KNN_T, knn_accuracy

PatchBatches = Iterable[tuple[torch.Tensor | Sequence[torch.Tensor], torch.Tensor]]  # (patches, labels (B,))
ROOT = Path(__file__).resolve().parent
FEATURE_CODE = ("dataset", "model", "features.py")  # what makes patches and features, relative to ROOT
FORWARD_BS = 2048  # patches per forward pass (evaluate.py's --forward_bs)
TEST_PATCHES = 128  # patches per image of the official bag-of-features (evaluate.py's --test_patches)


def full_view_loader(dataset: Dataset, patches: DataSpec, eval_bs: int, workers: int,
                     pin_memory: bool = False) -> DataLoader:
    """Batches ([one tensor (B, 3, S, S)], labels (B,)): every whole image once, without augmentation,
    normalised as in training (mean 0.5, std 0.5): the single-view protocol of most SSL papers, at the
    run's patch size S. CIFAR kind: the shorter side resized to S (bilinear) and the centre S×S, so
    32×32 images at S = 32 are used as they are; ImageNet kind: the shorter side resized to
    round(S·256/224) and the centre S×S, the standard 256 → 224 at S = 224. Through
    :func:`bag_of_features` the feature is pre_feature of that view."""
    size = patches.size
    steps = [T.Resize(round(size * 256 / 224)) if patches.kind == "imagenet" else T.Resize(size), T.CenterCrop(size)]
    view = T.Compose([*steps, T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3), one_view])
    return DataLoader(Transformed(dataset, view), batch_size=eval_bs, shuffle=False, num_workers=workers,
                      pin_memory=pin_memory)


def one_view(x: torch.Tensor) -> list[torch.Tensor]:
    """An image (3, S, S) as the list of views bag_of_features expects (picklable for workers)."""
    return [x]


class Transformed(Dataset):
    """dataset[i] → (transform(image), label) for a data set of (PIL image, label) pairs."""

    def __init__(self, dataset: Dataset, transform: Callable[[Any], Any]) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image, label = self.dataset[index]
        return self.transform(image), label


@torch.no_grad()
def bag_of_features(model: Encoder, batches: PatchBatches, device: torch.device, forward_bs: int = FORWARD_BS,
                    dtype: torch.dtype | None = None, desc: str | None = None,
                    memory_format: torch.memory_format = torch.contiguous_format) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean pre_feature over the P patches of every image: (features (N, hidden) float32, labels (N,)),
    both on the CPU, in the order of `batches`.

    Runs in eval mode (BatchNorm uses its running statistics, so an image's feature does not depend
    on its batch) and restores the model's mode afterwards; only :meth:`Encoder.features` runs, never
    the projection. Each forward pass takes max(1, forward_bs // B) patch groups of B images, so
    memory stays bounded for any P; with `dtype` (e.g. torch.bfloat16) the forward runs under
    autocast, the sum stays float32. The patches enter the forward in `memory_format` (pass
    torch.channels_last for a model in that layout).
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
            x = x.contiguous(memory_format=memory_format)
            with torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext():
                pre = model.features(x)  # (g·B, hidden)
            part = pre.float().view(-1, views[0].shape[0], pre.shape[1]).sum(0)  # (B, hidden)
            total = part if total is None else total + part
        features.append(total / len(views))  # kept on the device: no host read per batch
        labels.append(torch.as_tensor(targets).cpu())
    model.train(was_training)
    return torch.cat(features).cpu(), torch.cat(labels)  # (N, hidden), (N,)


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes (read in 1 MiB blocks), the identity of a checkpoint in cache keys."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_files(root: Path, parts: Sequence[str]) -> list[Path]:
    """The Python files of `parts` (folders, searched recursively, or files) under root, sorted."""
    files = []
    for part in parts:
        path = root / part
        files.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path])
    return files


def module_constants(package: str) -> dict[str, str]:
    """{"module.NAME": repr(value)} for every UPPER_CASE number, string, tuple or dict of every
    module of a package (each imported here, so the answer does not depend on what ran before):
    the values this process uses, also when one was set at run time."""
    constants = {}
    folder = Path(importlib.import_module(package).__file__).parent
    for path in sorted(folder.glob("*.py")):
        name = package if path.stem == "__init__" else f"{package}.{path.stem}"
        for attr, value in vars(importlib.import_module(name)).items():
            if attr.isupper() and isinstance(value, (int, float, str, tuple, dict)):
                constants[f"{name}.{attr}"] = repr(value)
    return constants


def code_fingerprint(root: Path = ROOT, parts: Sequence[str] = FEATURE_CODE) -> str:
    """SHA-256 (64 hex digits) of the code that makes patches and features: the bytes of every file
    of `parts` (dataset/, model/, features.py) with its path, then the constants of dataset/ as
    this process holds them (:func:`module_constants`). An edit to any line or constant there, saved
    or made at run time, gives a new fingerprint, so cached features are never read for other code."""
    digest = hashlib.sha256()
    for path in source_files(root, parts):
        digest.update(f"{path.relative_to(root)}\0".encode() + path.read_bytes() + b"\0")
    digest.update(json.dumps(module_constants("dataset"), sort_keys=True).encode())
    return digest.hexdigest()


def cache_path(folder: Path, prefix: str, key: dict[str, Any]) -> Path:
    """`<folder>/<prefix>.<split>-<16 hex digits of the key's hash>.features`; the key should hold
    the code's fingerprint (:func:`code_fingerprint`) beside what it was computed from."""
    text = json.dumps(key, sort_keys=True, default=str)
    return folder / f"{prefix}.{key['split']}-{hashlib.sha256(text.encode()).hexdigest()[:16]}.features"


def cached_features(path: Path, key: dict[str, Any], compute: Callable[[], tuple[torch.Tensor, torch.Tensor]],
                    recompute: bool = False, store: bool = True) -> tuple[tuple[torch.Tensor, torch.Tensor], bool]:
    """((features, labels), whether they came from the cache): read from `path` when it holds
    exactly `key` and not `recompute`, else compute() and, when `store`, store at `path` atomically
    (a failed or interrupted run never leaves a partial file). A cache that cannot be written (a
    full disk, a read-only folder) costs one warning: the computed features are returned all the same."""
    if path.is_file() and not recompute:
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError):
            stored = {}
        if stored.get("key") == key:
            return (stored["features"], stored["labels"]), True
    features, labels = compute()
    record = {"key": key, "features": features, "labels": labels}
    if store:
        try:
            write_file(path, lambda tmp: torch.save(record, tmp))
        except WriteFailed as err:
            print(f"warning: could not cache features at {path} ({err.cause}); they are kept in memory and the "
                  f"evaluation goes on", file=sys.stderr)
    return (features, labels), False


class KNNMonitor:
    """Weighted kNN top-1 of the test split against the training split (the official protocol's k
    and T, probes.KNN_K and KNN_T), on bags of a few patches that never change between calls.

    batches: {"train": …, "test": …} evaluation patches (dataset.patch_sources.EvaluationPatches, a fixed
    seed); the forward runs on `device`, under autocast to `dtype` when given (the run's precision).
    """

    def __init__(self, batches: dict[str, PatchBatches], num_classes: int, num_patches: int, device: torch.device,
                 dtype: torch.dtype | None) -> None:
        self.batches, self.num_classes, self.num_patches = batches, num_classes, num_patches
        self.device, self.dtype = device, dtype

    def __call__(self, model: Encoder) -> float:
        """kNN top-1 (percent) of the model's current bag-of-features (pre_feature only: the
        projection does not run)."""
        train_f, train_y = bag_of_features(model, self.batches["train"], self.device, dtype=self.dtype,
                                           desc="kNN memory")
        test_f, test_y = bag_of_features(model, self.batches["test"], self.device, dtype=self.dtype, desc="kNN test")
        on = self.device
        return knn_accuracy((train_f.to(on), train_y.to(on)), (test_f.to(on), test_y.to(on)), self.num_classes,
                            KNN_K, KNN_T)["top1"]
