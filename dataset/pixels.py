"""The images of a data set as one uint8 array (N, H, W, 3), for the batched augmentation to hold
on the device: CIFAR's and the synthetic set's arrays as they are, an image folder of equally sized
images decoded once and kept on disk, so that it is decoded once, not once per stage.

Training, each evaluation split and each stage of a chain (train, evaluate, the random-init
baseline) would decode the same files again; the first decode stores the array in a cache folder
and later loads of the same files read it back.

- Key: SHA-256 of the requested files in their order, each with its absolute path, size in bytes
  and modification time (ns). Touching, adding, removing or reordering a file gives a new key,
  so a fresh decode; a file rewritten with the same size and time is not noticed.
- Folder: ``$EMP_SSL_CACHE`` when set, else ``~/.cache/emp-ssl``; never beside the data, which
  may be read-only or shared. One ``pixels/<key>.npy`` per decoded file list (a subset of a
  folder is a list of its own); delete the folder to reclaim the space.
- Writes are atomic (:func:`plumbing.files.write_file`): a killed run leaves no partial array. A
  cache that cannot be written (a full disk, a read-only folder) is reported once per folder and
  process; the images are then decoded every time, as without a cache.
"""
from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset, Subset
from torchvision import datasets

from dataset.images import image_size
from plumbing.errors import UserError, speaks
from plumbing.files import WriteFailed, write_file

CACHE_ENV = "EMP_SSL_CACHE"
FORMAT = 1  # bump when the meaning of a cached array changes
IN_MEMORY_LIMIT = 4 << 30  # bytes of uint8 pixels; a larger image folder is decoded by DataLoader workers
_reported: set[Path] = set()  # cache folders already reported unwritable by this process


def cache_folder() -> Path:
    """``$EMP_SSL_CACHE`` when set and not empty, else ``~/.cache/emp-ssl``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "emp-ssl")


def files_key(paths: Sequence[Path]) -> str:
    """SHA-256 (64 hex digits) of the cache format and, per file in order, its absolute path,
    size and modification time in nanoseconds (one stat per file; no file is read)."""
    digest = hashlib.sha256(f"emp-ssl decoded pixels, format {FORMAT}\n".encode())
    for path in paths:
        stat = os.stat(path)
        digest.update(f"{os.path.abspath(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def cached_pixels(paths: Sequence[Path], decode: Callable[[], np.ndarray | None]) -> np.ndarray | None:
    """The uint8 array (n, H, W, 3) of the n images `paths`: read from the cache when an earlier
    call stored it for exactly these files, else ``decode()`` and stored. decode() returning None
    (the files do not qualify for memory) gives None, and nothing is stored."""
    path = cache_folder() / "pixels" / f"{files_key(paths)}.npy"
    pixels = _read(path, len(paths))
    if pixels is None:
        pixels = decode()
        if pixels is not None:
            _store(path, pixels)
    return pixels


def _read(path: Path, count: int) -> np.ndarray | None:
    """The array stored at `path` when it is a readable uint8 (count, H, W, 3) array, else None
    (no such file, or a foreign one)."""
    try:
        pixels = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    whole = pixels.dtype == np.uint8 and pixels.ndim == 4 and pixels.shape[0] == count and pixels.shape[3] == 3
    return pixels if whole else None


def _save(pixels: np.ndarray, tmp: Path) -> None:
    """np.save into exactly `tmp` (np.save given a path would append `.npy` to its name)."""
    with open(tmp, "wb") as f:
        np.save(f, pixels)


def _store(path: Path, pixels: np.ndarray) -> None:
    """Write `pixels` to `path` atomically; if the folder cannot be written, say so once per
    folder and go on without the cache."""
    try:
        write_file(path, partial(_save, pixels))
    except WriteFailed as err:
        if path.parent not in _reported and speaks():
            print(f"warning: cannot write the decoded-image cache in {path.parent} ({err.cause}); "
                  f"decoding without it (set {CACHE_ENV} to a writable folder)", file=sys.stderr)
        _reported.add(path.parent)


def in_memory_pixels(dataset: Dataset, workers: int = 1) -> np.ndarray | None:
    """All images of a data set (or a Subset of one) as uint8 (N, H, W, 3): ``.data`` of CIFAR and
    the synthetic set, an image folder decoded (or read back from the cache) when its images all
    have one size and fit in :data:`IN_MEMORY_LIMIT`; None otherwise."""
    base, indices = (dataset.dataset, list(dataset.indices)) if isinstance(dataset, Subset) else (dataset, None)
    if isinstance(getattr(base, "data", None), np.ndarray):
        return base.data if indices is None else base.data[indices]
    if isinstance(base, datasets.ImageFolder):
        paths = [Path(base.samples[i][0]) for i in (indices if indices is not None else range(len(base)))]
        return cached_pixels(paths, partial(_decode, base.loader, paths, workers))
    return None


def distinct_sizes(paths: Sequence[Path], most: int = 2, skip_unreadable: bool = False) -> list[tuple[int, int]]:
    """The distinct (width, height) of the images `paths` in the order met, read from their headers
    (no image is decoded), stopping at the `most`-th distinct one: [one size] when all share it, so a
    folder of equally sized images is read through, a mixed one only up to its first odd image. A file
    whose header cannot be read is a UserError naming it, or with skip_unreadable passed over."""
    sizes: list[tuple[int, int]] = []
    for path in paths:
        try:
            size = image_size(str(path))
        except UserError:
            if skip_unreadable:
                continue
            raise
        if size not in sizes:
            sizes.append(size)
            if len(sizes) == most:
                break
    return sizes


def _decode(loader: Callable[[str], Image.Image], paths: list[Path], workers: int) -> np.ndarray | None:
    """The images `paths` decoded by `loader` in `workers` threads to uint8 (n, H, W, 3), or None
    when their sizes differ or they exceed :data:`IN_MEMORY_LIMIT` (only the headers are read to
    decide)."""
    width, height = image_size(str(paths[0]))
    if len(paths) * width * height * 3 > IN_MEMORY_LIMIT or len(distinct_sizes(paths)) > 1:
        return None
    with ThreadPoolExecutor(max(1, workers)) as pool:
        return np.stack(list(pool.map(lambda p: np.asarray(loader(str(p))), paths)))  # (n, H, W, 3)
