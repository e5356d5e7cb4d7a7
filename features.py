"""Bag-of-features extraction (the official evaluation's representation), the single full view,
and the feature cache on disk.

The feature of an image is the mean of the encoder's pre_feature over P patches drawn with the
training augmentation: f(x) = 1/P Σ_p pre_feature(aug_p(x)), a (hidden_dim,) float32 vector.
Patches come from any iterable of (patches, labels) batches, with patches a (P, B, C, H, W)
tensor or a list of P tensors (B, C, H, W). :func:`eval_batches` makes them one of two ways:
``batched`` (default; :class:`DevicePatches`, the batched augmentation on the evaluation device)
or ``pil`` (:func:`patch_loader`, the official per-patch PIL pipeline in DataLoader workers).

Either way the patches of an image are a pure function of (seed, split, the image's index in the
full split): not of the batch size, the batch's other images, a subset, or the worker count; and
their random stream, :func:`eval_seed`, is separate from training's and from the other split's.
"""
from __future__ import annotations

import hashlib
import json
import math
import pickle
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import transforms as T
from tqdm import tqdm

from checkpoint import atomic_write
from dataset import MultiPatch, augmentation_kind, build_dataset, class_balanced_subset, patch_transform
from dataset.aug import CROP_RATIO, crop_transform
from dataset.batched import augment_crops, augment_images
from dataset.seeded import KeyedUniform, SeededPatches, stream_seed
from dataset.source import in_memory_pixels
from errors import UserError
from model import Encoder

EvalBatches = Iterable[tuple[torch.Tensor | Sequence[torch.Tensor], torch.Tensor]]
CACHE_VERSION = 2  # bump when the meaning of a cached feature changes (2: augment paths, own eval stream)
EVAL_AUGMENTS = ("batched", "pil")
PATCH_STREAM = "eval-<split>, keyed by the index in the full split"  # recorded in cache keys


def eval_split(data: str, data_dir: Path, split: str, subset: int | None,
               download: bool = True) -> tuple[Dataset, int]:
    """(split of the data set, or a fixed class-balanced subset of `subset` images, number of classes)."""
    dataset = build_dataset(data, data_dir, split, download=download)
    num_classes = len(dataset.classes)
    if subset is not None:
        dataset = Subset(dataset, class_balanced_subset(dataset.targets, min(subset, len(dataset)), seed=0))
    return dataset, num_classes


def eval_seed(seed: int, split: str) -> int:
    """The seed of the evaluation patches of a split: a stream of its own, unrelated to training's
    (whose patches of image i in epoch e are keyed by the user seed itself) and to the other split's."""
    return stream_seed(seed, f"eval-{split}")


def full_split(dataset: Dataset) -> tuple[Dataset, list[int]]:
    """(the data set under any Subsets, or the data set itself; the index in it of every item)."""
    if isinstance(dataset, Subset):
        base, indices = full_split(dataset.dataset)
        return base, [indices[i] for i in dataset.indices]
    return dataset, list(range(len(dataset)))  # type: ignore[arg-type]


def base_classes(dataset: Dataset) -> list[str]:
    """The class names of a data set, under any Subsets."""
    return full_split(dataset)[0].classes  # type: ignore[attr-defined]


def patch_loader(dataset: Dataset, data: str, num_patches: int, seed: int, eval_bs: int, workers: int,
                 pin_memory: bool = False, transform: Callable | None = None) -> DataLoader:
    """Batches ([P tensors (B, C, H, W)], labels (B,)) of `eval_bs` images in data-set order, each
    image's P patches made by `transform` (default: the official PIL augmentation of `data`) as a
    pure function of (seed, the image's index in the full split, i.e. in the data set under a
    Subset): the same seed gives an image the same patches whatever the batch size, subset or
    worker count."""
    kind, size = augmentation_kind(data)
    base, indices = full_split(dataset)
    patches = Subset(SeededPatches(base, MultiPatch(transform or patch_transform(kind, size), num_patches), seed),
                     indices)
    return DataLoader(patches, batch_size=eval_bs, shuffle=False, num_workers=workers, pin_memory=pin_memory,
                      generator=torch.Generator())  # own generator: the caller's random stream is untouched


class DevicePatches:
    """Evaluation batches ((P, B, 3, S, S) float32 patches, labels (B,)) of `eval_bs` images in
    data-set order, made by the batched augmentation (dataset/batched.py) on `device`.

    Images that fit in memory (:func:`dataset.source.in_memory_pixels`: CIFAR, the synthetic set,
    an image folder of equally sized images; 32×32-kind data sets only, as in training) are held
    on the device as uint8 (N, 3, H, W) and augmented by :func:`augment_images`. Otherwise DataLoader
    workers cut, resize and flip the crops in PIL (seeded per image) and :func:`augment_crops`
    applies the photometric half on the device. The draws of a batch come from
    :class:`KeyedUniform` over the images' indices in the full split.
    """

    def __init__(self, dataset: Dataset, data: str, num_patches: int, seed: int, eval_bs: int, workers: int,
                 device: torch.device) -> None:
        kind, self.size = augmentation_kind(data)
        base, indices = full_split(dataset)
        self.keys = torch.tensor(indices, device=device)  # (N,)
        self.labels = torch.as_tensor(base.targets)[indices]  # (N,)
        self.num_patches, self.seed, self.eval_bs, self.ratio = num_patches, seed, eval_bs, CROP_RATIO[kind]
        pixels = in_memory_pixels(Subset(base, indices), workers) if kind == "cifar" else None
        self.images, self.loader = None, None
        if pixels is not None:
            self.images = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous().to(device)  # (N, 3, H, W) uint8
        else:
            self.loader = patch_loader(dataset, data, num_patches, seed, eval_bs, workers, device.type == "cuda",
                                       crop_transform(kind, self.size))

    def __len__(self) -> int:
        return math.ceil(len(self.keys) / self.eval_bs)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        p = self.num_patches
        starts = range(0, len(self.keys), self.eval_bs)
        if self.images is not None:
            for start in starts:
                end = start + self.eval_bs
                rand = KeyedUniform(self.seed, self.keys[start:end], p)
                x = augment_images(self.images[start:end], p, self.size, self.ratio, rand)  # (P·B, 3, S, S)
                yield x.view(p, -1, *x.shape[1:]), self.labels[start:end]  # (P, B, 3, S, S)
        else:
            for start, (views, labels) in zip(starts, self.loader):
                x = torch.cat([v.to(self.keys.device, non_blocking=True) for v in views])  # (P·B, 3, S, S) uint8
                x = augment_crops(x, KeyedUniform(self.seed, self.keys[start:start + len(labels)], p), p)
                yield x.view(p, -1, *x.shape[1:]), labels  # (P, B, 3, S, S)


def eval_batches(dataset: Dataset, split: str, data: str, augment: str, num_patches: int, seed: int,
                 eval_bs: int, workers: int, device: torch.device) -> EvalBatches:
    """The evaluation patches of `split` (its data set or a Subset of it), `augment` "batched"
    (:class:`DevicePatches`) or "pil" (:func:`patch_loader`), from the stream :func:`eval_seed`."""
    if augment not in EVAL_AUGMENTS:
        raise UserError(f"unknown --augment {augment!r}: choose from {', '.join(EVAL_AUGMENTS)}")
    seed = eval_seed(seed, split)
    if augment == "pil":
        return patch_loader(dataset, data, num_patches, seed, eval_bs, workers, pin_memory=device.type == "cuda")
    return DevicePatches(dataset, data, num_patches, seed, eval_bs, workers, device)


def full_view_loader(dataset: Dataset, data: str, eval_bs: int, workers: int, pin_memory: bool = False) -> DataLoader:
    """Batches ([one tensor (B, 3, S, S)], labels (B,)): every whole image once, without augmentation,
    normalised as in training (mean 0.5, std 0.5): the single-view protocol of most SSL papers.
    32×32-kind images are used as they are; ImageNet-kind ones are resized to 256 and centre-cropped
    to 224, as is standard. Through :func:`bag_of_features` the feature is pre_feature of that view."""
    kind, size = augmentation_kind(data)
    steps = [T.Resize(256), T.CenterCrop(size)] if kind == "imagenet" else []
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
def bag_of_features(model: Encoder, batches: EvalBatches, device: torch.device, forward_bs: int = 2048,
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
        print(f"warning: could not cache features at {path} ({err.strerror or err}); continuing without",
              file=sys.stderr)
    return (features, labels), False
