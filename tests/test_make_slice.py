"""scripts/make_cifar_slice.py: the CIFAR-10 slice from a fake torchvision CIFAR-10 folder — layout,
the first images of each class in the data set's order, byte-identical reruns, and refusals."""
from __future__ import annotations

import io
import pickle
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error
from PIL import Image

import scripts.make_cifar_slice as make_slice

NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def smooth_images(rng: np.random.Generator, n: int) -> np.ndarray:
    """n (32, 32, 3) uint8 images of four 16×16 flat colours: aligned with JPEG's 4:2:0 blocks, they
    come back from quality 75 within a few levels (mean), while two images differ by tens."""
    corners = rng.integers(0, 256, (n, 2, 2, 3), dtype=np.uint8)  # (n, 2, 2, 3)
    return corners.repeat(16, axis=1).repeat(16, axis=2)  # (n, 32, 32, 3)


def write_fake_cifar10(root: Path, train_per_class: int, test_per_class: int) -> dict[str, tuple[np.ndarray, list]]:
    """root/cifar-10-batches-py/ as torchvision reads it (five training batches, a test batch,
    batches.meta with CIFAR-10's class names), the labels in a random order; {split: (images, labels)}
    in the order torchvision yields them."""
    rng = np.random.default_rng(7)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    splits = {}
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = rng.permutation(np.repeat(np.arange(10), per_class)).tolist()
        splits[split] = (smooth_images(rng, len(labels)), labels)
    parts = np.array_split(np.arange(len(splits["train"][1])), 5)
    batches = {f"data_batch_{i + 1}": idx for i, idx in enumerate(parts)}
    batches["test_batch"] = np.arange(len(splits["test"][1]))
    for name, idx in batches.items():
        images, labels = splits["test" if name == "test_batch" else "train"]
        flat = images[idx].transpose(0, 3, 1, 2).reshape(len(idx), -1)  # (n, 3·32·32), channel-major as CIFAR
        with open(folder / name, "wb") as f:
            pickle.dump({"data": flat, "labels": [labels[i] for i in idx]}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": NAMES}, f)
    return splits


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, tuple[np.ndarray, list]]:
    """A fake CIFAR-10 in tmp_path/cifar (6 training and 4 test images per class); torchvision's md5
    checks of its files (CIFAR10's _check_integrity and _load_meta) are patched out."""
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *args, **kwargs: True)
    return write_fake_cifar10(tmp_path / "cifar", train_per_class=6, test_per_class=4)


def make(cli, out: str, *flags: str):
    return cli("scripts.make_cifar_slice", "--root", "cifar", "--no-download", "--out", out,
               "--per_class_train", "3", "--per_class_test", "2", *flags)


def digest_of(stdout: str) -> str:
    return re.search(r"sha256 of the tree: ([0-9a-f]{64})", stdout).group(1)


class TestSlice:
    def test_the_first_images_of_each_class_in_order_as_jpeg(self, cli, tmp_path: Path, fake) -> None:
        result = make(cli, "slice")
        assert result.returncode == 0, result.stderr
        assert "wrote 50 images to slice (30 train, 20 test)" in result.stdout
        assert "make_cifar_slice.py --root cifar --out slice --per_class_train 3 --per_class_test 2" in result.stdout
        assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar", "slice"]  # no temporary folder left
        for split, per_class in (("train", 3), ("test", 2)):
            assert sorted(p.name for p in (tmp_path / "slice" / split).iterdir()) == sorted(NAMES)
            images, labels = fake[split]
            for label, name in enumerate(NAMES):
                files = sorted(p.name for p in (tmp_path / "slice" / split / name).iterdir())
                assert files == [f"{i:04d}.jpg" for i in range(per_class)]  # balanced, numbered within the class
                expected = [i for i, y in enumerate(labels) if y == label][:per_class]  # the first, in order
                for number, index in enumerate(expected):
                    raw = (tmp_path / "slice" / split / name / f"{number:04d}.jpg").read_bytes()
                    image = Image.open(io.BytesIO(raw))
                    assert image.format == "JPEG" and image.size == (32, 32)
                    decoded = np.asarray(image.convert("RGB")).astype(int)  # (32, 32, 3)
                    errors = np.abs(images.astype(int) - decoded).mean(axis=(1, 2, 3))  # (N,) against every source
                    assert errors.argmin() == index and errors[index] < 8, (split, name, number, errors[index])
                    assert raw == make_slice.jpeg_bytes(images[index])  # quality 75, Pillow's defaults

    def test_two_runs_write_byte_identical_trees_with_the_printed_digest(self, cli, tmp_path: Path, fake) -> None:
        first, second = make(cli, "a"), make(cli, "b")
        assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
        assert digest_of(first.stdout) == digest_of(second.stdout) == make_slice.tree_digest(tmp_path / "b")
        files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.jpg"))
        assert len(files) == 50
        assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
        if shutil.which("sha256sum"):  # the check the script prints, with coreutils
            shell = subprocess.run("find train test -type f | LC_ALL=C sort | xargs sha256sum | sha256sum",
                                   shell=True, cwd=tmp_path / "a", capture_output=True, text=True)
            assert shell.stdout.split()[0] == digest_of(first.stdout)
        (tmp_path / "b" / "test" / "cat" / "0001.jpg").write_bytes(b"changed")
        assert make_slice.tree_digest(tmp_path / "b") != digest_of(first.stdout)

    def test_an_existing_folder_that_is_not_empty_is_refused_and_left_as_it_was(self, cli, tmp_path: Path,
                                                                                fake) -> None:
        (tmp_path / "slice").mkdir()
        (tmp_path / "slice" / "notes.txt").write_text("mine")
        result = make(cli, "slice")
        assert result.returncode == 2
        assert_one_line_error(result, "--out slice exists and is not empty", "nothing was written")
        assert [p.name for p in (tmp_path / "slice").iterdir()] == ["notes.txt"]
        assert (tmp_path / "slice" / "notes.txt").read_text() == "mine"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar", "slice"]
        (tmp_path / "empty").mkdir()  # an empty folder is filled
        assert make(cli, "empty").returncode == 0 and len(list((tmp_path / "empty").rglob("*.jpg"))) == 50

    def test_an_interrupted_run_leaves_nothing(self, cli, tmp_path: Path, fake,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
        encode, calls = make_slice.jpeg_bytes, []

        def interrupt_at_the_tenth(pixels: np.ndarray) -> bytes:
            calls.append(1)
            if len(calls) == 10:
                raise KeyboardInterrupt
            return encode(pixels)

        monkeypatch.setattr(make_slice, "jpeg_bytes", interrupt_at_the_tenth)
        result = make(cli, "slice")
        assert result.returncode == 130 and len(calls) == 10
        assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar"]

    def test_a_class_with_too_few_images_is_refused(self, cli, tmp_path: Path, fake) -> None:
        result = make(cli, "slice", "--per_class_test", "5")
        assert_one_line_error(result, "the test split has only 4 images of class 'airplane'", "--per_class_test 4")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar"]
