"""The on-disk cache of decoded image folders (dataset/pixels.py) behind in_memory_pixels."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import write_image_folder
from torch.utils.data import Subset

from dataset import build_dataset
from dataset.pixels import cache_folder, files_key, in_memory_pixels


def counted_folder(root: Path, calls: list[str]):
    """The training split of the image folder at root, its loader counting every decoded file."""
    folder = build_dataset("imagefolder", root, "train")
    loader = folder.loader

    def count(path: str):
        calls.append(path)
        return loader(path)

    folder.loader = count
    return folder


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An image folder of 2 classes × 3 images of 32×32 in train/ and val/."""
    return write_image_folder(tmp_path / "data", sizes=[(32, 32)] * 3, splits=("train", "val"))


class TestPixelCache:
    def test_second_load_decodes_nothing_and_gives_the_same_array(self, root: Path, pixel_cache: Path) -> None:
        calls: list[str] = []
        first = in_memory_pixels(counted_folder(root, calls))
        assert first.shape == (6, 32, 32, 3) and first.dtype == np.uint8 and len(calls) == 6
        again = in_memory_pixels(counted_folder(root, calls))
        assert len(calls) == 6 and np.array_equal(again, first) and again.flags.writeable
        assert cache_folder() == pixel_cache and len(list(pixel_cache.rglob("*.npy"))) == 1
        assert {p.suffix for p in root.rglob("*") if p.is_file()} == {".png"}  # nothing written beside the data

    def test_a_subset_is_a_file_list_of_its_own(self, root: Path) -> None:
        calls: list[str] = []
        whole = in_memory_pixels(counted_folder(root, calls))
        part = in_memory_pixels(Subset(counted_folder(root, calls), [4, 1]))
        assert len(calls) == 6 + 2 and np.array_equal(part, whole[[4, 1]])
        assert np.array_equal(in_memory_pixels(Subset(counted_folder(root, calls), [4, 1])), part)
        assert len(calls) == 8

    def test_touching_adding_or_removing_a_file_changes_the_key(self, root: Path) -> None:
        paths = sorted((root / "train").rglob("*.png"))
        key = files_key(paths)
        assert files_key(list(paths)) == key and files_key(paths[::-1]) != key
        stat = os.stat(paths[0])
        os.utime(paths[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
        touched = files_key(paths)
        extra = root / "train" / "a" / "3.png"
        extra.write_bytes(paths[0].read_bytes())
        added = files_key([*paths, extra])
        assert len({key, touched, added, files_key(paths[1:])}) == 4

    def test_a_touched_file_is_decoded_again(self, root: Path) -> None:
        calls: list[str] = []
        in_memory_pixels(counted_folder(root, calls))
        path = next((root / "train").rglob("*.png"))
        stat = os.stat(path)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
        in_memory_pixels(counted_folder(root, calls))
        assert len(calls) == 12

    def test_mixed_sizes_are_not_cached(self, tmp_path: Path, pixel_cache: Path) -> None:
        root = write_image_folder(tmp_path / "mixed", sizes=[(32, 32), (40, 36)], splits=("train", "val"))
        assert in_memory_pixels(build_dataset("imagefolder", root, "train")) is None
        assert list(pixel_cache.iterdir()) == []

    def test_an_unwritable_cache_folder_only_warns_once(self, root: Path, tmp_path: Path, monkeypatch,
                                                        capsys) -> None:
        blocker = tmp_path / "a-file"
        blocker.write_text("")
        monkeypatch.setenv("EMP_SSL_CACHE", str(blocker / "cache"))  # under a file: no one can create it
        calls: list[str] = []
        first = in_memory_pixels(counted_folder(root, calls))
        again = in_memory_pixels(counted_folder(root, calls))
        out, err = capsys.readouterr()
        assert np.array_equal(first, again) and len(calls) == 12  # decoded both times
        assert out == "" and err.count("warning: cannot write the decoded-image cache") == 1, err
        assert "EMP_SSL_CACHE" in err

    def test_a_foreign_file_under_the_key_is_decoded_over(self, root: Path, pixel_cache: Path) -> None:
        calls: list[str] = []
        first = in_memory_pixels(counted_folder(root, calls))
        (stored,) = pixel_cache.rglob("*.npy")
        stored.write_bytes(b"not an array")
        assert np.array_equal(in_memory_pixels(counted_folder(root, calls)), first) and len(calls) == 12
        assert np.array_equal(in_memory_pixels(counted_folder(root, calls)), first) and len(calls) == 12
