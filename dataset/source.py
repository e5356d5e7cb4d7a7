"""Training batches: at every step, this rank's patches (P·B, 3, S, S), patch-major, on the device.

Three ways to make them, chosen by :func:`build_train_batches`:

- ``pil`` (official): DataLoader workers run the whole per-patch PIL pipeline.
- ``batched``, 32×32 data sets whose images fit in memory (CIFAR, synthetic, an image folder of
  equally sized images): all images live on the device as one uint8 tensor (N, 3, H, W); a step
  takes its indices from the sampler and makes every patch with batched tensor operations.
- ``batched``, other folders (ImageNet-100, Tiny ImageNet): workers decode and cut the crops
  (crop, resize, flip in PIL, as uint8), the photometric operations run batched on the device.

Image order comes from a :class:`ResumableSampler` (seeded, resumable, split over ranks). Random
patch parameters are pure functions of the seed, the epoch and the step (batch-level draws) or
the image (worker draws), so a resumed run sees the patches the uninterrupted run would have.
Batch-level parameters are drawn for the whole global batch on every rank, from a generator on
the device, and each rank keeps its slice: the patches of an image do not depend on the number
of ranks (they do depend on the device type, whose generators differ).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import datasets

from dataset.aug import CROP_RATIO, MultiPatch, crop_transform, patch_transform
from dataset.catalog import augmentation_kind, build_dataset, class_balanced_subset
from dataset.batched import augment_crops, augment_images
from dataset.pixel_cache import cached_pixels
from dataset.sampler import ResumableSampler
from dataset.seeded import SeededPatches, seed_worker, step_seed
from errors import UserError

AUGMENTS = ("pil", "batched")
IN_MEMORY_LIMIT = 4 << 30  # bytes of uint8 pixels; a larger image folder is decoded by workers


class Batches:
    """The epoch, step and random-generator bookkeeping shared by the batch sources."""

    def __init__(self, sampler: ResumableSampler, num_patches: int, seed: int, device: torch.device,
                 memory_format: torch.memory_format) -> None:
        self.sampler, self.num_patches, self.seed, self.device = sampler, num_patches, seed, device
        self.memory_format = memory_format
        self.generator = torch.Generator(device=device)
        self.epoch, self.start_step = 0, 0

    @property
    def steps_per_epoch(self) -> int:
        """Complete global batches in one epoch."""
        return self.sampler.steps_per_epoch

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Select the epoch and skip its first start_step steps (a resumed run)."""
        self.epoch, self.start_step = epoch, start_step
        self.sampler.set_epoch(epoch, start_step)

    def __len__(self) -> int:
        """Steps left in the epoch."""
        return self.steps_per_epoch - self.start_step

    def _draws(self, step: int) -> dict:
        """Keyword arguments of dataset.batched for one step: the generator seeded by (seed, epoch,
        step) and this rank's slice of the global batch."""
        self.generator.manual_seed(step_seed(self.seed, self.epoch, step))
        return {"generator": self.generator, "global_batch": self.sampler.global_batch,
                "first": self.sampler.rank * self.sampler.local_batch}


class LoaderBatches(Batches):
    """Patches from a DataLoader: finished by PIL (``pil``), or uint8 crops that get the
    photometric operations on the device (``photometric=True``)."""

    def __init__(self, loader: DataLoader, num_patches: int, seed: int, device: torch.device,
                 photometric: bool, memory_format: torch.memory_format = torch.contiguous_format) -> None:
        super().__init__(loader.sampler, num_patches, seed, device, memory_format)
        self.loader, self.photometric = loader, photometric

    def __iter__(self) -> Iterator[torch.Tensor]:
        for offset, (views, _) in enumerate(self.loader):
            x = torch.cat([v.to(self.device, non_blocking=True) for v in views])  # (P·B, 3, S, S)
            if self.photometric:
                x = augment_crops(x, num_patches=self.num_patches, **self._draws(self.start_step + offset))
            yield x.contiguous(memory_format=self.memory_format)


class DeviceBatches(Batches):
    """Patches made on the device from all images held there as uint8 (N, 3, H, W)."""

    def __init__(self, images: torch.Tensor, sampler: ResumableSampler, num_patches: int, size: int,
                 ratio: tuple[float, float], seed: int,
                 memory_format: torch.memory_format = torch.contiguous_format) -> None:
        super().__init__(sampler, num_patches, seed, images.device, memory_format)
        self.images, self.size, self.ratio = images, size, ratio

    def __iter__(self) -> Iterator[torch.Tensor]:
        order = self.sampler.perm.to(self.device)  # (N,) the epoch's order, copied once: steps slice it there
        for step in range(self.start_step, self.steps_per_epoch):
            index = self.sampler.batch_indices(step, order)  # (B,) on the device
            x = augment_images(self.images[index], self.num_patches, self.size, self.ratio, **self._draws(step))
            yield x.contiguous(memory_format=self.memory_format)  # (P·B, 3, S, S)


def _size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file, from its header."""
    with Image.open(path) as image:
        return image.size


def _decode(loader: Callable[[str], Image.Image], paths: list[Path], workers: int) -> np.ndarray | None:
    """The images `paths` decoded by `loader` in `workers` threads to uint8 (n, H, W, 3), or None
    when their sizes differ or they exceed :data:`IN_MEMORY_LIMIT` (only the headers are read to
    decide)."""
    width, height = _size(paths[0])
    if len(paths) * width * height * 3 > IN_MEMORY_LIMIT or any(_size(p) != (width, height) for p in paths):
        return None
    with ThreadPoolExecutor(max(1, workers)) as pool:
        return np.stack(list(pool.map(lambda p: np.asarray(loader(str(p))), paths)))  # (n, H, W, 3)


def _folder_pixels(folder: datasets.ImageFolder, indices: list[int], workers: int) -> np.ndarray | None:
    """The images ``indices`` of an image folder as uint8 (n, H, W, 3), or None when they do not
    qualify (:func:`_decode`): decoded once, then read back from the on-disk cache
    (:mod:`dataset.pixel_cache`) while the files stay the same."""
    paths = [Path(folder.samples[i][0]) for i in indices]
    return cached_pixels(paths, partial(_decode, folder.loader, paths, workers))


def in_memory_pixels(dataset: Dataset, workers: int = 1) -> np.ndarray | None:
    """All images of a data set (or a Subset of one) as uint8 (N, H, W, 3): ``.data`` of CIFAR and
    the synthetic set, an image folder decoded when it qualifies (see :func:`_folder_pixels`);
    None otherwise."""
    base, indices = (dataset.dataset, list(dataset.indices)) if isinstance(dataset, Subset) else (dataset, None)
    if isinstance(getattr(base, "data", None), np.ndarray):
        return base.data if indices is None else base.data[indices]
    if isinstance(base, datasets.ImageFolder):
        return _folder_pixels(base, indices if indices is not None else list(range(len(base))), workers)
    return None


@dataclass(frozen=True)
class TrainData:
    """What the training batches are made of: data set, augmentation path, patches and batch.

    batch is the global batch of images (split over the ranks); train_subset a fixed class-balanced
    subset of the training split; workers the DataLoader processes of the paths that use them.
    """

    data: str
    data_dir: Path
    augment: str
    num_patches: int
    batch: int
    seed: int
    workers: int = 0
    download: bool = True
    train_subset: int | None = None
    skip_bad_images: bool = False


def build_train_batches(spec: TrainData, device: torch.device, rank: int = 0, world_size: int = 1,
                        memory_format: torch.memory_format = torch.contiguous_format) -> Batches:
    """The training batches of a data set (see the module docstring): an iterable of (P·B/W, 3, S, S)
    patch tensors on ``device`` in ``memory_format``, this rank's share of each global batch, with
    ``set_epoch(epoch, start_step)`` and ``steps_per_epoch``."""
    if spec.augment not in AUGMENTS:
        raise UserError(f"unknown --augment {spec.augment!r}: choose from {', '.join(AUGMENTS)}")
    kind, size = augmentation_kind(spec.data)
    dataset = build_dataset(spec.data, spec.data_dir, "train", download=spec.download,
                            skip_bad_images=spec.skip_bad_images)
    if spec.train_subset is not None:
        dataset = Subset(dataset, class_balanced_subset(dataset.targets, spec.train_subset, seed=0))
    if len(dataset) < spec.batch:
        raise UserError(f"the training set has {len(dataset)} images, fewer than --bs {spec.batch}: lower --bs")
    sampler = ResumableSampler(len(dataset), spec.batch, seed=spec.seed, rank=rank, world_size=world_size)
    pixels = in_memory_pixels(dataset, spec.workers) if spec.augment == "batched" and kind == "cifar" else None
    if pixels is not None:
        images = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous().to(device)  # (N, 3, H, W) uint8
        return DeviceBatches(images, sampler, spec.num_patches, size, CROP_RATIO[kind], spec.seed, memory_format)
    transform = patch_transform(kind, size) if spec.augment == "pil" else crop_transform(kind, size)
    dataset = SeededPatches(dataset, MultiPatch(transform, spec.num_patches), spec.seed)
    loader = DataLoader(dataset, batch_size=sampler.local_batch, sampler=sampler, drop_last=True,
                        num_workers=spec.workers, pin_memory=device.type == "cuda",
                        persistent_workers=spec.workers > 0, worker_init_fn=seed_worker,
                        generator=torch.Generator().manual_seed(spec.seed))
    return LoaderBatches(loader, spec.num_patches, spec.seed, device, spec.augment == "batched", memory_format)
