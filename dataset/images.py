"""Reading image files, with a clear message for a file that cannot be decoded."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from PIL import Image
from torchvision import datasets

from plumbing.errors import UserError

UNREADABLE = (OSError, SyntaxError, ValueError)  # what PIL raises for a corrupt or non-image file


def _unreadable(path: str, err: Exception) -> UserError:
    """The one-line error for an image file PIL cannot read."""
    return UserError(f"cannot read the image {path} ({type(err).__name__}: {err}): remove or replace it, "
                     f"or pass --skip_bad_images")


def load_image(path: str) -> Image.Image:
    """Decode an image file to RGB; a corrupt or non-image file raises a UserError naming it."""
    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except UNREADABLE as err:  # PIL's UnidentifiedImageError is an OSError
        raise _unreadable(path, err) from err


def image_size(path: str) -> tuple[int, int]:
    """(width, height) of an image file from its header; an unreadable file raises as load_image."""
    try:
        with Image.open(path) as image:
            return image.size
    except UNREADABLE as err:
        raise _unreadable(path, err) from err


def _readable(path: str) -> bool:
    try:
        load_image(path)
    except UserError:
        return False
    return True


def drop_unreadable(folder: datasets.ImageFolder) -> list[str]:
    """Decode every image of an ImageFolder once (threads; PIL decodes without the GIL), remove
    the unreadable ones from its samples and targets, and return their paths."""
    paths = [path for path, _ in folder.samples]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        ok = list(pool.map(_readable, paths, chunksize=64))
    folder.samples = [sample for sample, good in zip(folder.samples, ok) if good]
    folder.imgs = folder.samples
    folder.targets = [label for _, label in folder.samples]
    return [path for path, good in zip(paths, ok) if not good]
