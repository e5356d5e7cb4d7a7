"""The catalogue of data sets: their names, where each is found (or downloaded), and subsets.

:data:`DATASETS` is the one table of the names (``--data``'s choices), each with the augmentation
kind and patch size of the official code. ``build_dataset(name, data_dir, split, transform)``
returns a torch Dataset of (image, label) pairs with ``.targets`` (list[int]) and ``.classes``, for

- ``cifar10`` / ``cifar100``: torchvision's CIFAR in ``data_dir`` (downloaded if allowed),
- ``imagenet100`` / ``tinyimagenet`` / ``imagefolder``: ImageFolder trees
  ``<data_dir>/train/<class>/*.jpg`` and ``<data_dir>/val/`` (or ``test/``) with the same classes,
- ``synthetic``: the generated :class:`SyntheticShapes` (no files, no download).

Anything the user can fix (a missing folder, no internet, an unknown name) raises
:class:`plumbing.errors.UserError` with a one-line message.
"""

from __future__ import annotations

import pathlib
import shutil
import tarfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from torch.utils.data import Dataset, Subset
from torchvision import datasets

from dataset.images import drop_unreadable, load_image
from dataset.synthetic import SyntheticShapes
from plumbing.errors import UserError, one_line, speaks


@dataclass(frozen=True)
class DataSpec:
    """What a data set's name fixes for its patches, as in the official code: the augmentation kind
    ("cifar": square crops, bilinear; "imagenet": aspect ratio 3/4..4/3, bicubic) and the patch size."""

    kind: str
    size: int


DATASETS: dict[str, DataSpec] = {  # --data; a new one is an entry here (and a loader in build_dataset unless a folder)
    "cifar10": DataSpec("cifar", 32),
    "cifar100": DataSpec("cifar", 32),
    "imagenet100": DataSpec("imagenet", 224),
    "tinyimagenet": DataSpec("imagenet", 224),
    "imagefolder": DataSpec("cifar", 32),  # any folder of images, made into 32×32 patches (e.g. a CIFAR slice)
    "synthetic": DataSpec("cifar", 32),
}
DATA_DEFAULTS = {"data": "cifar10", "data_dir": pathlib.Path("data")}  # the official data set, and where it is kept
_CIFAR = {"cifar10": ("CIFAR-10", datasets.CIFAR10), "cifar100": ("CIFAR-100", datasets.CIFAR100)}
_LAYOUT = "<data_dir>/train/<class>/*.jpg and <data_dir>/val/<class>/*.jpg (or test/)"


def _check_name(name: str) -> None:
    """UserError unless ``name`` is one of :data:`DATASETS`."""
    if name not in DATASETS:
        raise UserError(f"unknown data set {name!r}: choose --data from {', '.join(DATASETS)}")


def augmentation_kind(name: str) -> tuple[str, int]:
    """(augmentation kind for :func:`dataset.pil_pipeline.patch_transform`, patch size in pixels)
    of a data set of :data:`DATASETS`; an unknown name is a UserError that lists the known ones."""
    _check_name(name)
    return DATASETS[name].kind, DATASETS[name].size


def _cifar(name: str, root: pathlib.Path, train: bool, transform: Callable | None,
           download: bool) -> Dataset:
    """torchvision CIFAR rooted at ``root``; on failure, remove what this call created.

    A failed download may leave a partial archive, a partly extracted folder and a new, empty
    ``root``; they are deleted (only if they did not exist before) so that the next attempt
    starts clean, and the failure becomes a UserError that says where to put the data.
    """
    title, cls = _CIFAR[name]
    created = [p for p in (root / cls.filename, root / cls.base_folder) if not p.exists()]
    root_existed = root.exists()
    try:
        return cls(str(root), train=train, transform=transform, download=download)
    except (OSError, RuntimeError, EOFError, tarfile.TarError) as err:
        for path in created:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        if not root_existed and root.is_dir() and not any(root.iterdir()):
            root.rmdir()
        why = f"could not be downloaded ({one_line(err, typed=True)})" if download else "download is off"
        raise UserError(
            f"{title} is not in {root}/ and {why}: put {cls.base_folder} in {root}/ "
            f"(or point --data_dir at it), or try --data synthetic"
        ) from err


def _image_folder(root: pathlib.Path, transform: Callable | None,
                  skip_bad_images: bool = False) -> datasets.ImageFolder:
    """torchvision ImageFolder at ``root``, with a UserError for a missing or empty tree (an
    empty class folder too) and, with ``skip_bad_images``, unreadable images left out."""
    if not root.is_dir():
        raise UserError(f"expected the folder {root}: the layout is {_LAYOUT}; set --data_dir")
    try:
        folder = datasets.ImageFolder(str(root), transform=transform, loader=load_image)
    except FileNotFoundError as err:
        raise UserError(
            f"no images in {root} or in one of its class folders ({one_line(err, typed=True)}): expected one "
            f"sub-folder per class holding .jpg/.png files, as in {_LAYOUT}"
        ) from err
    if skip_bad_images:
        for path in drop_unreadable(folder):  # every process leaves them out; one says so
            if speaks():
                warnings.warn(f"skipping the unreadable image {path}", stacklevel=2)
    return folder


def _folder_split(data_dir: pathlib.Path, split: str, transform: Callable | None,
                  skip_bad_images: bool = False) -> datasets.ImageFolder:
    """The train split ``data_dir/train``, or the test split ``data_dir/val`` (else ``test``).

    The test split must have exactly the classes of the train split, in the same order, so
    that label indices agree.
    """
    if not data_dir.is_dir():
        raise UserError(f"data folder {data_dir} does not exist: expected {_LAYOUT}; "
                        f"set --data_dir")
    if split == "train":
        return _image_folder(data_dir / "train", transform, skip_bad_images)
    folder = data_dir / "val" if (data_dir / "val").is_dir() else data_dir / "test"
    if not folder.is_dir():
        raise UserError(f"no test split in {data_dir}: expected {data_dir}/val/ or "
                        f"{data_dir}/test/, as in {_LAYOUT}")
    test = _image_folder(folder, transform, skip_bad_images)
    train_classes = datasets.folder.find_classes(str(data_dir / "train"))[0]
    if test.classes != train_classes:
        raise UserError(
            f"the classes in {folder} ({len(test.classes)}) differ from those in "
            f"{data_dir}/train ({len(train_classes)}): sort the test images into the same "
            f"class folders (Tiny ImageNet's val/ needs this)"
        )
    return test


def build_dataset(name: str, data_dir: pathlib.Path, split: str, transform: Callable | None = None,
                  download: bool = True, skip_bad_images: bool = False) -> Dataset:
    """The ``split`` ("train" or "test") of data set ``name``, images passed through ``transform``.

    Every returned data set yields (transform(PIL image), int label) and has ``.targets``
    (list[int], one per image) and ``.classes``. ``download`` applies to CIFAR only. Folder data
    sets raise a UserError naming an unreadable image when it is loaded; with ``skip_bad_images``
    every image is decoded once up front and the unreadable ones are left out with a warning (from
    one process of a torchrun launch, see :func:`plumbing.errors.speaks`).
    """
    _check_name(name)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    data_dir = pathlib.Path(data_dir)
    if name in _CIFAR:
        return _cifar(name, data_dir, split == "train", transform, download)
    if name == "synthetic":
        return SyntheticShapes(train=split == "train", transform=transform)
    return _folder_split(data_dir, split, transform, skip_bad_images)


def load_split(name: str, data_dir: pathlib.Path, split: str, subset: int | None = None, download: bool = True,
               skip_bad_images: bool = False, flag: str | None = None) -> Dataset:
    """:func:`build_dataset`'s split, or a fixed class-balanced Subset of `subset` of its images (at
    most all of them; :func:`class_balanced_subset` with seed 0). flag names the subset's flag in a
    refusal (default: --<split>_subset, as main.py and evaluate.py call it)."""
    dataset = build_dataset(name, data_dir, split, download=download, skip_bad_images=skip_bad_images)
    if subset is None:
        return dataset
    indices = class_balanced_subset(dataset.targets, min(subset, len(dataset)), seed=0,
                                    names=getattr(dataset, "classes", None), flag=flag or f"--{split}_subset")
    return Subset(dataset, indices)


def unwrap_subsets(dataset: Dataset) -> tuple[Dataset, list[int]]:
    """(the data set under any Subsets, or the data set itself; the index in it of every item)."""
    if isinstance(dataset, Subset):
        base, indices = unwrap_subsets(dataset.dataset)
        return base, [indices[i] for i in dataset.indices]
    return dataset, list(range(len(dataset)))  # type: ignore[arg-type]


def class_names(dataset: Dataset) -> list[str]:
    """The class names of a data set, under any Subsets."""
    return unwrap_subsets(dataset)[0].classes  # type: ignore[attr-defined]


def largest_balanced_subset(targets: Sequence[int]) -> int:
    """The most items a class-balanced subset (:func:`class_balanced_subset`) of targets can hold: with
    m the fewest items of a class and r the rank of the first class that has m, m·C + r (the r classes
    before it give one more each)."""
    _, counts = np.unique(np.asarray(targets), return_counts=True)
    return int(counts.min() * len(counts) + np.argmax(counts == counts.min()))


def class_balanced_subset(targets: Sequence[int], n: int, seed: int = 0, names: Sequence[str] | None = None,
                          flag: str = "a subset of") -> list[int]:
    """Sorted indices of a fixed subset of ``n`` items, as equal per class as possible.

    With C classes, each class gets ``n // C`` items and the first ``n mod C`` classes (in label
    order) one more, drawn without replacement by ``numpy.random.default_rng(seed)``: the same
    (targets, n, seed) gives the same subset on every run. A refusal names the class that is too
    small (by names[label] where given) and the largest n that works, as `flag` (the caller's flag).
    """
    labels = np.asarray(targets)
    classes, counts = np.unique(labels, return_counts=True)
    quotas = [n // len(classes) + (rank < n % len(classes)) for rank in range(len(classes))]
    largest = largest_balanced_subset(labels)
    if n < len(classes):
        raise UserError(f"{flag} {n} cannot hold one image of each of the {len(classes)} classes: use {flag} between "
                        f"{len(classes)} and {largest}")
    if n > largest:
        rank = next(rank for rank, count in enumerate(counts) if quotas[rank] > count)
        name = repr(names[classes[rank]]) if names is not None else str(classes[rank])
        raise UserError(f"{flag} {n} takes {quotas[rank]} images of class {name}, which has only {counts[rank]}: use "
                        f"{flag} {largest} or less (the largest class-balanced subset of these {len(labels)} images)")
    rng = np.random.default_rng(seed)
    picked = []
    for label, quota in zip(classes, quotas):
        picked.append(rng.choice(np.flatnonzero(labels == label), size=quota, replace=False))
    return sorted(np.concatenate(picked).tolist())  # (n,)
