"""Patches of a data set, for the steps of training and for an evaluation sweep, on the device.

:data:`AUGMENTS` is the one table of the ways patches are made (``--augment`` of main.py and
evaluate.py); a :class:`PatchRecipe` says which one, for which data set, how many per image, from
which random stream and how large a share of the image each patch's crop covers (``--crop_scale``,
:func:`crop_scale_flag`). With ``batched``, the images come from one of three places:

- :class:`DeviceImages`: data sets whose images are equally sized and fit in memory (CIFAR, the
  synthetic set, Tiny ImageNet, an image folder of equally sized images; dataset/pixels.py) live
  on the device as one uint8 tensor (N, 3, H, W), and every patch of a batch is made at once
  there (dataset/batched_pipeline.py): no DataLoader, nothing moved per step;
- :func:`whole_image_loader` (the ImageNet kind: ImageNet-100, folders of large or mixed-size
  images): DataLoader workers only decode each image, pad the batch to its largest height and
  width (:func:`pad_whole_images`) and ship it once; every crop is made on the device
  (:func:`dataset.batched_pipeline.augment_whole_images`);
- :func:`patch_loader`: DataLoader workers decode each image and cut its P crops with PIL, seeded
  per image (:class:`dataset.seeding.SeededPatches`), as uint8; the photometric half then runs
  batched on the device. The CIFAR kind's folders of mixed sizes go this way, and the ImageNet
  kind's with ``device_crops=False`` (the path before the crops moved to the device).

``pil`` is the whole official PIL pipeline in :func:`patch_loader`'s workers, for every data set.

:class:`TrainingPatches` gives this rank's patches at every step of an epoch, in the seeded,
resumable order of a :class:`ResumableSampler`, with the batch-level draws seeded by (seed, epoch,
step) and drawn for the whole global batch on every rank (each keeps its slice, so an image's
patches do not depend on the number of ranks; they do on the device type). :class:`EvaluationPatches`
gives every image of a split in order, its draws keyed by (seed, the image's index in the full
split). Patches are patch-major, as the official ``torch.cat(views)``: (P·B, …) views as (P, B, …).

Bytes moved from the host to the device per image of a step (:attr:`TrainingPatches.bytes_per_step`
for the whole step), ImageNet kind, P = 200 patches of 224²: worker crops 200·150,528 = 30.1 MB;
whole images 12,288 B for 64×64 and 420,000 B for 400×350 (plus the padding to the batch's largest
image and 16 B of size); :class:`DeviceImages` nothing after their one copy.
"""
from __future__ import annotations

import argparse
import random
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from dataset.batched_pipeline import WholeImages, augment_crops, augment_images, augment_whole_images
from dataset.catalog import DataSpec, augmentation_kind, unwrap_subsets
from dataset.draws import Randomness, crop_window_sized
from dataset.pil_pipeline import (
    CROP_RATIO,
    DEFAULT_CROP_SCALE,
    MultiPatch,
    crop_scale_range,
    crop_transform,
    patch_transform,
)
from dataset.pixels import in_memory_pixels
from dataset.sampler import ResumableSampler
from dataset.seeding import KeyedUniform, SeededPatches, step_seed
from plumbing.errors import UserError

AUGMENTS = {  # --augment: how patches are made; adding an operation means one function per path and one parity test
    "batched": "all patches of a batch at once by batched tensor operations on the device, from exactly the official "
               "distributions (made for GPUs, and faster on CPUs too)",
    "pil": "the official per-patch PIL pipeline in DataLoader workers (the reference the batched path is tested "
           "against)",
}
DEFAULT_AUGMENT = "batched"
WorkerInit = Callable[[int], None]  # run by every DataLoader worker as it starts (preemption.leave_signals_to_parent)
Collate = Callable[[list], object]  # a DataLoader's collate_fn
HostWholeImages = tuple[torch.Tensor, torch.Tensor, int, torch.Tensor]  # pad_whole_images' batch, on the host


def crop_scale_flag(text: str) -> float:
    """--crop_scale (argparse type): the share S of the image's area each patch's crop covers, a
    number in (0, 1]; anything else is refused with one line before anything runs."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 1:  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected the share of the image's area each patch covers, a number in "
                                         f"(0, 1] (official {DEFAULT_CROP_SCALE}), got {text!r}")
    return value


@dataclass(frozen=True)
class PatchRecipe:
    """How patches are made: the data set's augmentation kind ("cifar" or "imagenet") and patch size,
    the --augment path, P patches per image, the seed of their random stream, and the share S of
    the image's area each patch's crop covers (--crop_scale; RandomResizedCrop's scale (S, S))."""

    kind: str
    size: int
    augment: str
    num_patches: int
    seed: int
    crop_scale: float = DEFAULT_CROP_SCALE

    @classmethod
    def of(cls, patches: DataSpec | str, augment: str, num_patches: int, seed: int,
           crop_scale: float = DEFAULT_CROP_SCALE) -> PatchRecipe:
        """The recipe of a run's patches (kind and size, :func:`dataset.catalog.patch_spec`; a data set's
        name stands for its DATASETS entry), --augment, --crop_scale and P patches from the stream `seed`."""
        if augment not in AUGMENTS:
            raise UserError(f"unknown --augment {augment!r}: choose from {', '.join(AUGMENTS)}")
        if not 0 < crop_scale <= 1:
            raise UserError(f"--crop_scale {crop_scale} is not a share of the image's area: choose a number in (0, 1]")
        kind, size = augmentation_kind(patches) if isinstance(patches, str) else (patches.kind, patches.size)
        return cls(kind, size, augment, num_patches, seed, crop_scale)

    @property
    def scale(self) -> tuple[float, float]:
        """RandomResizedCrop's area range of the crops: (S, S)."""
        return crop_scale_range(self.crop_scale)

    def worker_transform(self) -> T.Compose:
        """What DataLoader workers do to each patch of an image: the whole PIL pipeline (pil), or the
        crop, resize and flip only, ending in uint8 (batched: the rest runs on the device)."""
        make = patch_transform if self.augment == "pil" else crop_transform
        return make(self.kind, self.size, self.crop_scale)

    def seeded(self, dataset: Dataset) -> SeededPatches:
        """dataset[i] → ([P patches of image i], label), drawn from a stream keyed by (seed, epoch, i)."""
        return SeededPatches(dataset, MultiPatch(self.worker_transform(), self.num_patches), self.seed)

    def crops_on_device(self, device_crops: bool) -> bool:
        """Whether the ImageNet kind's crops are made on the device from whole images
        (:func:`dataset.batched_pipeline.augment_whole_images`): batched, ImageNet kind and
        device_crops (False: PIL cuts them in DataLoader workers, as before)."""
        return self.augment == "batched" and self.kind == "imagenet" and device_crops


class DeviceImages:
    """Images held on the device as uint8 (N, 3, H, W), and their patches by the batched augmentation:
    :func:`dataset.batched_pipeline.augment_images` for the CIFAR kind,
    :func:`dataset.batched_pipeline.augment_whole_images` for the ImageNet kind."""

    def __init__(self, pixels: np.ndarray, recipe: PatchRecipe, device: torch.device) -> None:
        """pixels: (N, H, W, 3) uint8, possibly read-only (it is copied, never written)."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "The given NumPy array is not writable")
            pixels_nhwc = torch.from_numpy(pixels)  # (N, H, W, 3), shares the array's memory
        self.images = pixels_nhwc.permute(0, 3, 1, 2).contiguous().to(device)  # (N, 3, H, W), a copy
        self.recipe = recipe

    @classmethod
    def hold(cls, dataset: Dataset, recipe: PatchRecipe, workers: int, device: torch.device,
             device_crops: bool = True) -> DeviceImages | None:
        """The images of dataset on the device when the recipe is batched, of the CIFAR kind or of the
        ImageNet kind with device_crops (:meth:`PatchRecipe.crops_on_device`), and its pixels are equally
        sized and fit in memory (dataset/pixels.py; `workers` threads decode a folder); else None."""
        if recipe.augment != "batched" or not (recipe.kind == "cifar" or recipe.crops_on_device(device_crops)):
            return None
        pixels = in_memory_pixels(dataset, workers)
        return None if pixels is None else cls(pixels, recipe, device)

    def patches(self, index: torch.Tensor | slice, randomness: Randomness, global_batch: int | None = None,
                first: int = 0) -> torch.Tensor:
        """The P patches (P·B, 3, S, S) of the B images index ((B,) or a slice), drawn as slice
        first … first + B − 1 of a global batch (see :func:`dataset.batched_pipeline.augment_images`)."""
        recipe = self.recipe
        if recipe.kind == "imagenet":
            whole = WholeImages.equal(self.images[index], recipe.scale)
            return augment_whole_images(whole, recipe.num_patches, recipe.size, randomness, global_batch, first,
                                        recipe.scale)
        return augment_images(self.images[index], recipe.num_patches, recipe.size, CROP_RATIO[recipe.kind],
                              randomness, global_batch, first, recipe.scale)


def patch_loader(patches: Dataset, batch: int, sampler: Sampler | None, workers: int, device: torch.device,
                 worker_init: WorkerInit | None = None, collate: Collate | None = None) -> DataLoader:
    """Batches ([P tensors (B, 3, S, S)], labels (B,)) of a :meth:`PatchRecipe.seeded` data set (or
    what `collate` makes of B items), made by `workers` processes, in the sampler's order
    (incomplete last batch dropped) or, without one, in order; each worker seeds Python and NumPy,
    then runs worker_init, as it starts."""
    return DataLoader(patches, batch_size=batch, sampler=sampler, drop_last=sampler is not None,
                      num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                      worker_init_fn=partial(_start_worker, worker_init=worker_init), collate_fn=collate,
                      generator=torch.Generator().manual_seed(0))  # own generator: the caller's stream is untouched


class DecodedImages(Dataset):
    """dataset[i] → (image i whole, as uint8 (3, H, W), its label): the decoding only, no crop and no
    draw. i is an int or an (epoch, index) pair as :class:`ResumableSampler` yields (the epoch is
    not needed: nothing random happens in the workers)."""

    def __init__(self, dataset: Dataset) -> None:
        """dataset: items (PIL RGB image, label), e.g. an ImageFolder without a transform."""
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        image, label = self.dataset[item[1] if isinstance(item, tuple) else item]
        return TF.pil_to_tensor(image), label


def pad_whole_images(items: list[tuple[torch.Tensor, int]], scale: tuple[float, float]) -> HostWholeImages:
    """A DataLoader collate_fn: B decoded images (3, h_i, w_i) uint8 → (pixels (B, 3, H, W) uint8 with
    H = max h_i, W = max w_i, image i in the top-left corner and zeros around it; sizes (B, 2) long
    (h_i, w_i); the window, the bound on every box side at area range `scale` on these sizes, a
    Python int; labels (B,) long), all on the host, worked out where the sizes are known."""
    sizes = [(image.shape[1], image.shape[2]) for image, _ in items]
    pixels = torch.zeros(len(items), 3, max(h for h, _ in sizes), max(w for _, w in sizes), dtype=torch.uint8)
    for i, (image, _) in enumerate(items):
        pixels[i, :, :image.shape[1], :image.shape[2]] = image
    window = crop_window_sized(sizes, CROP_RATIO["imagenet"], scale)
    return pixels, torch.tensor(sizes, dtype=torch.long), window, torch.tensor([label for _, label in items])


def whole_image_loader(dataset: Dataset, batch: int, sampler: Sampler | None, workers: int, device: torch.device,
                       worker_init: WorkerInit | None, scale: tuple[float, float]) -> DataLoader:
    """:func:`patch_loader` of whole images: `workers` processes decode B images of dataset and pad
    them into one batch (:func:`pad_whole_images`), each image shipped once per step."""
    return patch_loader(DecodedImages(dataset), batch, sampler, workers, device, worker_init,
                        partial(pad_whole_images, scale=scale))


def _start_worker(worker_id: int, worker_init: WorkerInit | None) -> None:
    """A DataLoader worker's set-up: seed Python's and NumPy's generators from the worker's torch
    seed (itself derived from the loader's seeded generator), then run the caller's worker_init."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
    if worker_init is not None:
        worker_init(worker_id)


def finish(views: list[torch.Tensor], recipe: PatchRecipe, device: torch.device, randomness: Randomness,
           global_batch: int | None = None, first: int = 0) -> torch.Tensor:
    """A loader batch's P views (B, 3, S, S) joined patch-major on the device, (P·B, 3, S, S); uint8
    crops get the photometric half there, drawn as slice first … first + B − 1 of a global batch
    (see :func:`dataset.batched_pipeline.augment_crops`)."""
    x = torch.cat([v.to(device, non_blocking=True) for v in views])  # (P·B, 3, S, S)
    if x.dtype != torch.uint8:  # finished by PIL in the workers
        return x
    return augment_crops(x, randomness, recipe.num_patches, global_batch, first)


def finish_whole(batch: HostWholeImages, recipe: PatchRecipe, device: torch.device, randomness: Randomness,
                 global_batch: int | None = None, first: int = 0) -> torch.Tensor:
    """A :func:`whole_image_loader` batch's images moved to the device and made into their P patches
    each there, (P·B, 3, S, S), drawn as slice first … first + B − 1 of a global batch (see
    :func:`dataset.batched_pipeline.augment_whole_images`). The window comes from the host: no read
    back from the device."""
    pixels, sizes, window, _ = batch
    whole = WholeImages(pixels.to(device, non_blocking=True), sizes.to(device, non_blocking=True), window)
    return augment_whole_images(whole, recipe.num_patches, recipe.size, randomness, global_batch, first,
                                recipe.scale)


def finish_batch(batch: tuple | list, whole: bool, recipe: PatchRecipe, device: torch.device, randomness: Randomness,
                 global_batch: int | None = None, first: int = 0) -> torch.Tensor:
    """A loader batch made into its patches (P·B, 3, S, S) on the device: whole images
    (:func:`finish_whole`) or the crops the workers cut, its first item (:func:`finish`)."""
    if whole:
        return finish_whole(batch, recipe, device, randomness, global_batch, first)
    return finish(batch[0], recipe, device, randomness, global_batch, first)


def device_bytes(batch: tuple | list) -> int:
    """The bytes of a loader batch that go to the device: every tensor but the labels (its last item)."""
    tensors = [t for item in batch[:-1] for t in (item if isinstance(item, (list, tuple)) else [item])]
    return sum(t.nbytes for t in tensors if isinstance(t, torch.Tensor))


class TrainingPatches:
    """This rank's patches at every step of an epoch: (P·B/W, 3, S, S) float32 in [−1, 1],
    patch-major, on the device in memory_format.

    Made from :class:`DeviceImages` when the recipe allows, else from a :func:`whole_image_loader`
    (the ImageNet kind with device_crops) or a :func:`patch_loader` over the sampler.
    ``device_crops=False`` keeps the ImageNet kind's crops in the DataLoader workers (PIL), as
    before they moved to the device; it changes nothing for the CIFAR kind nor for ``pil``. Call
    :meth:`set_epoch` before each epoch (a resumed run skips the steps done).
    """

    def __init__(self, dataset: Dataset, recipe: PatchRecipe, sampler: ResumableSampler, workers: int,
                 device: torch.device, memory_format: torch.memory_format = torch.contiguous_format,
                 worker_init: WorkerInit | None = None, device_crops: bool = True) -> None:
        images = len(dataset)  # type: ignore[arg-type]
        if images < sampler.global_batch:
            raise UserError(f"the training set has {images} images, fewer than --bs {sampler.global_batch}: lower --bs")
        self.recipe, self.sampler, self.device, self.memory_format = recipe, sampler, device, memory_format
        self.images = DeviceImages.hold(dataset, recipe, workers, device, device_crops)
        self.whole = self.images is None and recipe.crops_on_device(device_crops)
        self.loader = None
        if self.whole:
            self.loader = whole_image_loader(dataset, sampler.local_batch, sampler, workers, device, worker_init,
                                             recipe.scale)
        elif self.images is None:
            self.loader = patch_loader(recipe.seeded(dataset), sampler.local_batch, sampler, workers, device,
                                       worker_init)
        self.generator = torch.Generator(device=device)
        self.epoch, self.start_step, self.moved = 0, 0, 0

    @property
    def bytes_per_step(self) -> int:
        """The bytes the last step moved from the loader to the device: the tensors the loader yielded
        to the main process but the labels (worker crops: P·B·3·S² uint8, or float32 from ``pil``;
        whole images: the padded uint8 batch and its (B, 2) sizes); 0 before the first step and for
        :class:`DeviceImages`, whose images were copied once when they were made."""
        return self.moved

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

    def _generator(self, step: int) -> torch.Generator:
        """The device generator of one step's batch-level draws, seeded by (seed, epoch, step)."""
        return self.generator.manual_seed(step_seed(self.recipe.seed, self.epoch, step))

    def __iter__(self) -> Iterator[torch.Tensor]:
        share = {"global_batch": self.sampler.global_batch, "first": self.sampler.rank * self.sampler.local_batch}
        if self.images is not None:
            order = self.sampler.perm.to(self.device)  # (N,) the epoch's order, copied once: steps slice it there
            for step in range(self.start_step, self.steps_per_epoch):
                x = self.images.patches(self.sampler.batch_indices(step, order), self._generator(step), **share)
                yield x.contiguous(memory_format=self.memory_format)  # (P·B/W, 3, S, S)
        else:
            for step, batch in enumerate(self.loader, start=self.start_step):
                self.moved = device_bytes(batch)
                x = finish_batch(batch, self.whole, self.recipe, self.device, self._generator(step), **share)
                yield x.contiguous(memory_format=self.memory_format)  # (P·B/W, 3, S, S)


class EvaluationPatches:
    """Every image of a split (or of a Subset of it) in order, `batch` at a time: ((P, B, 3, S, S)
    float32 patches on the device, labels (B,)).

    The patches of an image depend only on (recipe.seed, its index in the full split): not on the
    batch, its other images, a subset, or the worker count. :class:`DeviceImages` and whole images
    (the ImageNet kind with device_crops, as :class:`TrainingPatches`) draw from a
    :class:`KeyedUniform` over those indices; PIL-cut patches are seeded per image by the same index.
    """

    def __init__(self, dataset: Dataset, recipe: PatchRecipe, batch: int, workers: int, device: torch.device,
                 worker_init: WorkerInit | None = None, device_crops: bool = True) -> None:
        base, indices = unwrap_subsets(dataset)
        self.keys = torch.tensor(indices, device=device)  # (N,) indices in the full split
        self.labels = torch.as_tensor(base.targets)[indices]  # (N,)
        self.recipe, self.batch, self.device = recipe, batch, device
        self.images = DeviceImages.hold(Subset(base, indices), recipe, workers, device, device_crops)
        self.whole = self.images is None and recipe.crops_on_device(device_crops)
        self.loader = None
        if self.whole:
            self.loader = whole_image_loader(Subset(base, indices), batch, None, workers, device, worker_init,
                                             recipe.scale)
        elif self.images is None:
            self.loader = patch_loader(Subset(recipe.seeded(base), indices), batch, None, workers, device, worker_init)

    def __len__(self) -> int:
        return -(-len(self.keys) // self.batch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        p, starts = self.recipe.num_patches, range(0, len(self.keys), self.batch)
        if self.images is not None:
            for start in starts:
                end = start + self.batch
                x = self.images.patches(slice(start, end), KeyedUniform(self.recipe.seed, self.keys[start:end], p))
                yield x.view(p, -1, *x.shape[1:]), self.labels[start:end]  # (P, B, 3, S, S)
        else:
            for start, batch in zip(starts, self.loader):
                labels = batch[-1]  # (B,)
                draws = KeyedUniform(self.recipe.seed, self.keys[start:start + len(labels)], p)
                x = finish_batch(batch, self.whole, self.recipe, self.device, draws)
                yield x.view(p, -1, *x.shape[1:]), labels  # (P, B, 3, S, S)
