"""Make the CIFAR-10 slice of the project's CPU figures: an ImageFolder tree of JPEG files, the
first images of each class of torchvision's CIFAR-10, in the data set's order.

Usage:
    python scripts/make_cifar_slice.py --root data --out data/cifar10-slice     # 5,000 + 1,000 images
    python main.py --data imagefolder --data_dir data/cifar10-slice --arch resnet10-cifar ...

Layout: <out>/train/<class>/NNNN.jpg holds the first --per_class_train (500) images of each class of
the training set (5,000 in all), <out>/test/<class>/NNNN.jpg the first --per_class_test (100) of each
class of the test set (1,000), in the order torchvision's CIFAR10 yields them; NNNN is the image's
index within its class (0000, 0001, ...) and <class> torchvision's class name (airplane, automobile,
bird, cat, deer, dog, frog, horse, ship, truck). Each image is saved by Pillow as JPEG at quality 75
with Pillow's other defaults (4:2:0 chroma subsampling, no optimisation). The slice is the data of
the CPU figures in README.md and docs/, and of the `patches-cpu` sweep preset (its 5,000 training
images; the test split is the held-out set).

CIFAR-10 is read from --root (torchvision's cifar-10-batches-py/), downloaded there when missing
unless --no-download. An existing --out that is not empty is refused: nothing is overwritten. The
tree is written into a temporary folder beside --out and renamed to --out at the end, so a run that
is interrupted or fails leaves no half-made slice (a killed process may leave the hidden
.<out>.partial-* folder, which can be removed).

At the end the script prints the command line that makes the same slice and a SHA-256 of the tree:
the SHA-256 of the lines "<SHA-256 of the file>  <relative path>" of every file, sorted by path —
what `cd <out> && find train test -type f | LC_ALL=C sort | xargs sha256sum | sha256sum` prints.
Two runs with the same Pillow give byte-identical trees; the bytes depend on Pillow's JPEG encoder
(its libjpeg or libjpeg-turbo version, printed beside the digest), so another version may encode
other bytes for the same pixels.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import os
import shlex
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for `python scripts/…`

if __name__ == "__main__":  # first: Ctrl-C while the modules below load ends in one line, status 130
    from plumbing.errors import interrupt_in_one_line
    interrupt_in_one_line()

import numpy as np  # noqa: E402
from PIL import Image, features  # noqa: E402
from tqdm import tqdm  # noqa: E402

from dataset.catalog import build_dataset  # noqa: E402
from plumbing.cli import ArgumentParser, require, run_cli  # noqa: E402
from plumbing.errors import UserError  # noqa: E402
from plumbing.files import WriteFailed, check_writable, failure_cause, write_file  # noqa: E402

JPEG_QUALITY = 75  # the slice's: Pillow's other defaults (4:2:0 subsampling, no optimize) as they are


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser("CIFAR-10 slice", description="The first images of each CIFAR-10 class as an "
                            "ImageFolder tree of JPEG files (the data of the project's CPU figures).")
    parser.add_argument("--root", "--data_dir", dest="root", type=Path, default=Path("data"),
                        help="torchvision's CIFAR-10 folder, holding cifar-10-batches-py/ (default: %(default)s)")
    parser.add_argument("--download", action=argparse.BooleanOptionalAction, default=True,
                        help="download CIFAR-10 into --root when it is missing (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("data/cifar10-slice"),
                        help="the slice's folder, which must not exist or be empty (default: %(default)s)")
    parser.add_argument("--per_class_train", type=int, default=500,
                        help="first training images of each class (default: %(default)s, 5,000 in all)")
    parser.add_argument("--per_class_test", type=int, default=100,
                        help="first test images of each class (default: %(default)s, 1,000 in all)")
    return parser


def first_per_class(targets: list[int], per_class: int, classes: list[str], split: str) -> list[int]:
    """Indices of the first per_class items of each class, in the data set's order, class by class
    (label 0 first); a class with fewer items is a UserError."""
    labels = np.asarray(targets)  # (N,)
    picked = []
    for label, name in enumerate(classes):
        members = np.flatnonzero(labels == label)[:per_class]
        if len(members) < per_class:
            raise UserError(f"the {split} split has only {len(members)} images of class {name!r}: pass "
                            f"--per_class_{split} {len(members)} or less")
        picked += members.tolist()
    return picked


def jpeg_bytes(pixels: np.ndarray) -> bytes:
    """A (32, 32, 3) uint8 image as Pillow's JPEG at JPEG_QUALITY, its other settings the defaults."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def write_split(args: argparse.Namespace, folder: Path, split: str, per_class: int) -> int:
    """folder/<split>/<class>/NNNN.jpg for the first per_class images of each class, NNNN the image's
    index within its class; the count."""
    dataset = build_dataset("cifar10", args.root, split, download=args.download)
    data, targets, classes = dataset.data, dataset.targets, dataset.classes  # (N, 32, 32, 3) uint8
    indices = first_per_class(targets, per_class, classes, split)
    for rank, index in enumerate(tqdm(indices, desc=f"{split} images", leave=False)):
        path = folder / split / classes[targets[index]] / f"{rank % per_class:04d}.jpg"
        data_bytes = jpeg_bytes(data[index])
        write_file(path, lambda tmp, raw=data_bytes: tmp.write_bytes(raw), "choose another --out")
    return len(indices)


def tree_digest(folder: Path) -> str:
    """SHA-256 of the lines "<file's SHA-256>  <path relative to folder>\\n" of every file, sorted by
    path: what `find train test -type f | LC_ALL=C sort | xargs sha256sum | sha256sum` prints in folder."""
    files = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())
    lines = (f"{hashlib.sha256((folder / name).read_bytes()).hexdigest()}  {name}\n" for name in files)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def refuse_existing(out: Path) -> None:
    """A UserError when --out exists and is not an empty folder: nothing is overwritten."""
    empty = not out.exists() or out.is_dir() and not any(out.iterdir())
    if not empty:
        raise UserError(f"--out {out} exists and is not empty: nothing was written; remove it or choose another --out")


def encoder_version() -> str:
    """Pillow's version and its JPEG library's, which the bytes of the slice depend on."""
    turbo = features.version("libjpeg_turbo")
    library = f"libjpeg-turbo {turbo}" if turbo else f"libjpeg {features.version('jpg')}"
    return f"Pillow {Image.__version__}, {library}"


def main(args: argparse.Namespace) -> None:
    require([(min(args.per_class_train, args.per_class_test) >= 1,
              "--per_class_train and --per_class_test must be at least 1")])
    refuse_existing(args.out)
    check_writable(args.out.parent, "--out", "the slice's parent folder")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    staging = args.out.parent / f".{args.out.name}.partial-{os.getpid()}"  # beside --out: the rename stays on its disk
    shutil.rmtree(staging, ignore_errors=True)  # left by a killed process that had this id
    staging.mkdir()
    try:
        counts = {split: write_split(args, staging, split, per_class)
                  for split, per_class in (("train", args.per_class_train), ("test", args.per_class_test))}
        digest = tree_digest(staging)
        try:
            os.replace(staging, args.out)
        except OSError as err:
            raise WriteFailed(args.out, failure_cause(err, args.out), "nothing was written; choose another --out") \
                from err
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    command = ["python", os.path.relpath(Path(__file__).resolve()), "--root", str(args.root), "--out", str(args.out),
               "--per_class_train", str(args.per_class_train), "--per_class_test", str(args.per_class_test)]
    print(f"wrote {sum(counts.values()):,} images to {args.out} ({counts['train']:,} train, {counts['test']:,} test)")
    print(f"to make it again: {shlex.join(command)}")
    print(f"sha256 of the tree: {digest} ({encoder_version()}; check it with: cd {shlex.quote(str(args.out))} && "
          f"find train test -type f | LC_ALL=C sort | xargs sha256sum | sha256sum)")


if __name__ == "__main__":
    run_cli(main, get_args_parser())
