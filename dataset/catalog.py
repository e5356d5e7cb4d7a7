"""The catalogue of data sets: their names, where each is found (or downloaded), and subsets.

:data:`DATASETS` is the one table of the names (``--data``'s choices), each with the augmentation
kind and patch size of the official code; :func:`patch_spec` gives a run's patches (an image folder's
from its images, --patch_kind and --patch_size where given). ``build_dataset(name, data_dir, split, transform)``
returns a torch Dataset of (image, label) pairs with ``.targets`` (list[int]) and ``.classes``, for

- ``cifar10`` / ``cifar100``: torchvision's CIFAR in ``data_dir`` (downloaded if allowed),
- ``imagenet100`` / ``tinyimagenet`` / ``imagefolder``: ImageFolder trees
  ``<data_dir>/train/<class>/*.jpg`` and ``<data_dir>/val/`` (or ``test/``) with the same classes,
- ``synthetic``: the generated :class:`SyntheticShapes` (no files, no download).

Anything the user can fix (a missing folder, no internet, an unknown name) raises
:class:`plumbing.errors.UserError` with a one-line message.
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import tarfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from torch.utils.data import Dataset, Subset
from torchvision import datasets

from dataset.images import drop_unreadable, load_image
from dataset.pixels import distinct_sizes
from dataset.synthetic import SyntheticShapes
from plumbing.errors import UserError, one_line, speaks


@dataclass(frozen=True)
class DataSpec:
    """What a run's patches are: the augmentation kind ("cifar": square crops, bilinear; "imagenet":
    aspect ratio 3/4..4/3, bicubic) and the patch size S in pixels (patches are (3, S, S)); `origin`
    says where the two came from, for the line a run prints (not part of the value)."""

    kind: str
    size: int
    origin: str = field(default="", compare=False)

    def describe(self, origin: str | None = None) -> str:
        """"imagenet kind, 224 px (<origin>)", with the spec's own origin unless another is given."""
        why = self.origin if origin is None else origin
        return f"{self.kind} kind, {self.size} px" + (f" ({why})" if why else "")


DATASETS: dict[str, DataSpec] = {  # --data; a new one is an entry here (and a loader in build_dataset unless a folder)
    "cifar10": DataSpec("cifar", 32),
    "cifar100": DataSpec("cifar", 32),
    "imagenet100": DataSpec("imagenet", 224),
    "tinyimagenet": DataSpec("imagenet", 224),
    # any folder of images: its patches come from its images (patch_spec); this entry is what a folder
    # of 32×32 images gets, and what every folder got before --patch_kind and --patch_size existed
    "imagefolder": DataSpec("cifar", 32),
    "synthetic": DataSpec("cifar", 32),
}
PATCH_KINDS = {"cifar": 32, "imagenet": 224}  # --patch_kind: each kind's official patch size
MIN_PATCH_SIZE = 8  # the backbones halve a patch ≥ 3 times: at 8 px the last stage is 1×1, smaller only loses pixels
DATA_DEFAULTS = {"data": "cifar10", "data_dir": pathlib.Path("data")}  # the official data set, and where it is kept
_CIFAR = {"cifar10": ("CIFAR-10", datasets.CIFAR10), "cifar100": ("CIFAR-100", datasets.CIFAR100)}
_LAYOUT = "<data_dir>/train/<class>/*.jpg and <data_dir>/val/<class>/*.jpg (or test/)"


def _check_name(name: str) -> None:
    """UserError unless ``name`` is one of :data:`DATASETS`."""
    if name not in DATASETS:
        raise UserError(f"unknown data set {name!r}: choose --data from {', '.join(DATASETS)}")


def augmentation_kind(name: str) -> tuple[str, int]:
    """(augmentation kind for :func:`dataset.pil_pipeline.patch_transform`, patch size in pixels)
    of a data set's entry of :data:`DATASETS` (an image folder's own patches: :func:`patch_spec`);
    an unknown name is a UserError that lists the known ones."""
    _check_name(name)
    return DATASETS[name].kind, DATASETS[name].size


def patches_before_the_flags(data: str) -> DataSpec:
    """The patches of a run trained before --patch_kind and --patch_size existed: its --data's
    :data:`DATASETS` entry (an image folder's: CIFAR kind, 32 px, whatever its images)."""
    _check_name(data)
    return DATASETS[data]


def patch_size_flag(text: str) -> int:
    """--patch_size (argparse type): a whole number of pixels, at least MIN_PATCH_SIZE; anything else
    is refused with one line before anything runs."""
    if not (text.isdigit() and int(text) >= MIN_PATCH_SIZE):
        raise argparse.ArgumentTypeError(f"expected a whole number of pixels, at least {MIN_PATCH_SIZE} (the "
                                         f"blur reaches 7 pixels across), got {text!r}")
    return int(text)


def folder_patches(data_dir: pathlib.Path) -> DataSpec:
    """The patches of an image folder, from the images of ``data_dir/train``: CIFAR kind at 32 px when
    every one is 32×32, else ImageNet kind at its official 224 px (other equal sizes, or mixed sizes).
    Only headers are read, every one for a folder of equal sizes, up to the first odd one for a mixed
    folder (:func:`dataset.pixels.distinct_sizes`); an unreadable file is passed over here (loading it
    names it, or --skip_bad_images leaves it out); a missing or empty folder is a UserError."""
    folder = _folder_split(pathlib.Path(data_dir), "train", None)
    sizes = distinct_sizes([pathlib.Path(path) for path, _ in folder.samples], skip_unreadable=True)
    if not sizes:
        raise UserError(f"no image of {folder.root} can be read: put readable .jpg/.png files in it, as in {_LAYOUT}")
    seen = ", ".join(f"{width}×{height}" for width, height in sizes)
    found = f"all {seen}" if len(sizes) == 1 else f"{seen}, …: sizes differ"
    kind = "cifar" if sizes == [(32, 32)] else "imagenet"
    return DataSpec(kind, PATCH_KINDS[kind], f"from the images of {folder.root}: {found}")


def patch_spec(data: str, data_dir: pathlib.Path | None, kind: str | None = None, size: int | None = None) -> DataSpec:
    """The patches of a run: --patch_kind and --patch_size where given, else from the data. A named data
    set gives its :data:`DATASETS` entry; ``imagefolder`` its images (:func:`folder_patches`, read only
    when a value is missing). A kind given without a size takes the data's size if the data's kind
    is the same, else the kind's official size (:data:`PATCH_KINDS`)."""
    _check_name(data)
    if kind is not None and kind not in PATCH_KINDS:
        raise UserError(f"unknown patch kind {kind!r}: choose --patch_kind from {', '.join(PATCH_KINDS)}")
    if size is not None and size < MIN_PATCH_SIZE:
        raise UserError(f"--patch_size {size} is too small: choose at least {MIN_PATCH_SIZE} pixels")
    if kind is not None and size is not None:
        return DataSpec(kind, size, "--patch_kind and --patch_size as given")
    if data == "imagefolder":
        found = folder_patches(pathlib.Path(data_dir))
    else:
        found = DataSpec(DATASETS[data].kind, DATASETS[data].size, f"{data}'s official patches")
    if kind is None and size is None:
        return found
    if kind is None:
        return DataSpec(found.kind, size, f"--patch_size as given; the kind {found.origin}")
    return DataSpec(kind, found.size if kind == found.kind else PATCH_KINDS[kind],
                    f"--patch_kind as given; the size {found.origin if kind == found.kind else 'its official one'}")


def resolve_patches(args: argparse.Namespace, recorded: dict | None, origin: str) -> DataSpec:
    """Set args.patch_kind and args.patch_size to the values a run or an evaluation uses, and return
    them: as given; else as a run's record says (``recorded``: a checkpoint's training args, its
    patch_kind and patch_size, or for a record older than those flags what its --data gave,
    :func:`patches_before_the_flags`); else from the data (:func:`patch_spec`: an image folder's from
    its images). Values taken from a record are described by ``origin``."""
    follows = recorded is not None and "data" in recorded
    if follows:
        before = patches_before_the_flags(recorded["data"])
        args.patch_kind = recorded.get("patch_kind", before.kind) if args.patch_kind is None else args.patch_kind
        args.patch_size = recorded.get("patch_size", before.size) if args.patch_size is None else args.patch_size
    spec = patch_spec(args.data, args.data_dir, args.patch_kind, args.patch_size)
    args.patch_kind, args.patch_size = spec.kind, spec.size
    return DataSpec(spec.kind, spec.size, origin) if follows else spec


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
