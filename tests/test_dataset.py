"""Tests for dataset/: the patch augmentation, SyntheticShapes, build_dataset and subsets."""

import pathlib
import urllib.error

import numpy as np
import pytest
import torch
from conftest import write_image_folder
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision import transforms as T

from dataset import (
    DATASETS,
    MultiPatch,
    SyntheticShapes,
    augmentation_kind,
    build_dataset,
    class_balanced_subset,
    patch_transform,
)
from dataset.pil_pipeline import CROP_RATIO, PILGaussianBlur, PILSolarize
from plumbing.errors import UserError


def _gradient_image(size: int = 32) -> Image.Image:
    """An RGB image whose every 16×16 window differs: red ramps along x, green along y."""
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    rgb = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], np.float32(90)), -1)
    return Image.fromarray(rgb.astype(np.uint8))  # (size, size, 3)


class TestPatchTransform:
    def test_multipatch_shapes_range_and_independence(self) -> None:
        torch.manual_seed(0)
        patches = MultiPatch(patch_transform("cifar", 32), 5)(_gradient_image())
        assert len(patches) == 5
        for p in patches:
            assert p.shape == (3, 32, 32) and p.dtype == torch.float32
            assert p.min() >= -1 and p.max() <= 1
        for i in range(5):
            for j in range(i + 1, 5):
                assert not torch.allclose(patches[i], patches[j])

    def test_pipeline_matches_official_order_and_parameters(self) -> None:
        steps = patch_transform("cifar", 32).transforms
        kinds = [type(s) for s in steps]
        assert kinds == [T.RandomResizedCrop, T.RandomHorizontalFlip, T.RandomApply,
                         T.RandomGrayscale, T.RandomApply, T.RandomApply, T.ToTensor, T.Normalize]
        crop = steps[0]
        assert crop.scale == (0.25, 0.25) and crop.ratio == (1.0, 1.0)
        assert crop.interpolation == T.InterpolationMode.BILINEAR
        jitter = steps[2].transforms[0]
        assert steps[2].p == 0.8 and jitter.hue == (-0.2, 0.2) and jitter.brightness == (0.6, 1.4)
        assert steps[3].p == 0.2
        assert steps[4].p == 0.1 and isinstance(steps[4].transforms[0], PILGaussianBlur)
        assert steps[5].p == 0.1 and isinstance(steps[5].transforms[0], PILSolarize)
        imagenet_crop = patch_transform("imagenet", 224).transforms[0]
        assert imagenet_crop.ratio == pytest.approx((3 / 4, 4 / 3))
        assert imagenet_crop.interpolation == T.InterpolationMode.BICUBIC

    def test_cifar_crop_is_a_16_pixel_window_upsampled(self) -> None:
        torch.manual_seed(0)
        crop = patch_transform("cifar", 32).transforms[0]
        for _ in range(20):
            top, left, h, w = crop.get_params(_gradient_image(), crop.scale, crop.ratio)
            assert (h, w) == (16, 16) and 0 <= top <= 16 and 0 <= left <= 16

    def test_imagenet_kind_gives_requested_size(self) -> None:
        out = patch_transform("imagenet", 64)(_gradient_image(80))
        assert out.shape == (3, 64, 64)

    def test_solarize_and_blur(self) -> None:
        levels = np.arange(256).reshape(16, 16)  # every grey level once
        solar = np.asarray(PILSolarize(128)(Image.fromarray(levels.astype(np.uint8))))
        assert np.array_equal(solar, np.where(levels >= 128, 255 - levels, levels))
        stripes = np.tile(np.arange(32) // 4 % 2 * 255, (32, 1)).astype(np.uint8)  # (32, 32)
        sharp = Image.fromarray(stripes).convert("RGB")
        blurred = np.asarray(PILGaussianBlur(2.0, 2.0)(sharp)).astype(int)
        assert np.abs(np.diff(blurred[..., 0], axis=1)).max() < 128  # sharp edges jump by 255

    def test_unknown_kind_and_bad_patch_count(self) -> None:
        with pytest.raises(ValueError):
            patch_transform("mnist", 32)
        with pytest.raises(ValueError):
            MultiPatch(patch_transform("cifar", 32), 0)

    def test_collate_gives_list_of_patch_batches(self) -> None:
        patches = MultiPatch(patch_transform("cifar", 32), 3)
        data = SyntheticShapes(train=False, num_per_class=1, transform=patches)
        views, labels = next(iter(DataLoader(data, batch_size=4)))
        assert len(views) == 3 and all(v.shape == (4, 3, 32, 32) for v in views)
        assert labels.shape == (4,)
        assert torch.cat(views).shape == (12, 3, 32, 32)


class TestSyntheticShapes:
    @pytest.fixture(scope="class")
    @classmethod
    def train(cls) -> SyntheticShapes:
        return SyntheticShapes(train=True)

    @pytest.fixture(scope="class")
    @classmethod
    def test(cls) -> SyntheticShapes:
        return SyntheticShapes(train=False)

    def test_layout(self, train: SyntheticShapes, test: SyntheticShapes) -> None:
        assert train.data.shape == (5000, 32, 32, 3) and train.data.dtype == np.uint8
        assert test.data.shape == (1000, 32, 32, 3) and len(train) == 5000
        assert len(train.classes) == 10 and len(set(train.classes)) == 10
        assert np.bincount(train.targets).tolist() == [500] * 10
        assert np.bincount(test.targets).tolist() == [100] * 10
        img, label = train[0]
        assert isinstance(img, Image.Image) and img.size == (32, 32) and label == train.targets[0]
        assert SyntheticShapes(num_per_class=3, size=16).data.shape == (30, 16, 16, 3)

    def test_deterministic_and_splits_differ(self, test: SyntheticShapes) -> None:
        again = SyntheticShapes(train=False)
        assert np.array_equal(again.data, test.data) and again.targets == test.targets
        train_small = SyntheticShapes(train=True, num_per_class=100)
        assert not np.array_equal(train_small.data, test.data)

    def test_images_of_a_class_vary(self, train: SyntheticShapes) -> None:
        labels = np.asarray(train.targets)
        for c in range(10):
            imgs = train.data[labels == c][:50].astype(np.float32)
            assert imgs.std(axis=0).mean() > 25  # per-pixel spread across images, in grey levels

    def test_learnable_but_not_by_mean_colour(self, train: SyntheticShapes,
                                              test: SyntheticShapes) -> None:
        def nearest_mean_accuracy(features: np.ndarray, test_features: np.ndarray) -> float:
            y, y_test = np.asarray(train.targets), np.asarray(test.targets)
            means = np.stack([features[y == c].mean(0) for c in range(10)])  # (10, F)
            dist = ((test_features[:, None] - means[None]) ** 2).sum(-1)  # (N_test, 10)
            return float((dist.argmin(1) == y_test).mean())

        def downsampled(d: np.ndarray) -> np.ndarray:
            return d.reshape(len(d), 8, 4, 8, 4, 3).mean((2, 4)).reshape(len(d), -1)  # (N, 192)

        def mean_colour(d: np.ndarray) -> np.ndarray:
            return d.reshape(len(d), -1, 3).mean(1)  # (N, 3)

        pixels = nearest_mean_accuracy(downsampled(train.data), downsampled(test.data))
        colour = nearest_mean_accuracy(mean_colour(train.data), mean_colour(test.data))
        assert 0.25 < pixels < 0.9  # chance is 0.1; structure, not noise; not trivial
        assert colour < 0.4


class TestBuildDataset:
    def test_every_name_has_an_augmentation_kind_and_patch_size(self) -> None:
        assert augmentation_kind("cifar100") == ("cifar", 32)
        assert augmentation_kind("synthetic") == ("cifar", 32)
        assert augmentation_kind("tinyimagenet") == augmentation_kind("imagenet100") == ("imagenet", 224)
        for name, spec in DATASETS.items():
            assert augmentation_kind(name) == (spec.kind, spec.size) and spec.kind in CROP_RATIO, name
            patch_transform(*augmentation_kind(name))  # the PIL pipeline knows the kind

    def test_an_unknown_name_is_refused_naming_the_known_ones(self) -> None:
        known = "cifar10, cifar100, imagenet100, tinyimagenet, imagefolder, synthetic"
        for refused in (lambda: augmentation_kind("mnist"), lambda: build_dataset("mnist", pathlib.Path("x"), "train")):
            with pytest.raises(UserError, match=f"unknown data set 'mnist': choose --data from {known}$"):
                refused()

    def test_synthetic(self, tmp_path: pathlib.Path) -> None:
        data = build_dataset("synthetic", tmp_path, "test", transform=T.ToTensor())
        img, label = data[0]
        assert len(data) == 1000 and img.shape == (3, 32, 32) and isinstance(label, int)
        assert not any(tmp_path.iterdir())

    def test_image_folder_loads_and_prefers_val(self, tmp_path: pathlib.Path) -> None:
        write_image_folder(tmp_path, ("cat", "dog", "eel"), sizes=[(32, 32)] * 3)
        write_image_folder(tmp_path, ("cat", "dog"), splits=("test",))
        write_image_folder(tmp_path, ("cat", "dog", "eel"), splits=("val",))
        train = build_dataset("imagefolder", tmp_path, "train")
        test = build_dataset("imagenet100", tmp_path, "test")
        assert train.classes == ["cat", "dog", "eel"] and len(train) == 9
        assert train.targets == [0, 0, 0, 1, 1, 1, 2, 2, 2]
        assert len(test) == 6 and pathlib.Path(test.root).name == "val"

    def test_image_folder_errors(self, tmp_path: pathlib.Path) -> None:
        missing = tmp_path / "nowhere"
        with pytest.raises(UserError, match=f"{missing}.*--data_dir"):
            build_dataset("imagefolder", missing, "train")
        with pytest.raises(UserError, match=f"{tmp_path / 'train'}.*--data_dir"):
            build_dataset("imagefolder", tmp_path, "train")
        write_image_folder(tmp_path)
        with pytest.raises(UserError, match=f"{tmp_path}/val/ or {tmp_path}/test/"):
            build_dataset("tinyimagenet", tmp_path, "test")
        (tmp_path / "test" / "a").mkdir(parents=True)
        with pytest.raises(UserError, match=f"no images in {tmp_path / 'test'}"):
            build_dataset("imagefolder", tmp_path, "test")
        write_image_folder(tmp_path, ("a", "c"), splits=("val",))
        with pytest.raises(UserError, match="differ"):
            build_dataset("imagefolder", tmp_path, "test")
        empty = tmp_path / "empty"
        (empty / "train").mkdir(parents=True)
        with pytest.raises(UserError, match=f"no images in {empty / 'train'}"):
            build_dataset("imagefolder", empty, "train")


class TestCifar:
    def test_missing_without_download(self, tmp_path: pathlib.Path) -> None:
        with pytest.raises(UserError, match=f"{tmp_path}/.*--data_dir.*--data synthetic"):
            build_dataset("cifar10", tmp_path, "train", download=False)
        assert not any(tmp_path.iterdir())

    def test_failed_download_leaves_nothing(self, tmp_path: pathlib.Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
        def broken_download(url: str, root: str, filename: str, md5: str) -> None:
            pathlib.Path(root).mkdir(parents=True, exist_ok=True)
            (pathlib.Path(root) / filename).write_bytes(b"half an archive")
            raise urllib.error.URLError("no network")

        monkeypatch.setattr(datasets.utils, "download_url", broken_download)
        root = tmp_path / "data"
        with pytest.raises(UserError, match="CIFAR-100 .*could not be downloaded.*--data_dir"):
            build_dataset("cifar100", root, "test")
        assert not root.exists()
        root.mkdir()
        (root / "notes.txt").write_text("keep me")
        with pytest.raises(UserError, match="--data synthetic"):
            build_dataset("cifar10", root, "train")
        assert [p.name for p in root.iterdir()] == ["notes.txt"]


class TestClassBalancedSubset:
    targets = [c for c in range(4) for _ in range(10 + c)]  # 10, 11, 12, 13 items per class

    def test_counts_sorted_and_deterministic(self) -> None:
        subset = class_balanced_subset(self.targets, 10)
        assert subset == sorted(subset) and len(set(subset)) == 10
        counts = np.bincount(np.asarray(self.targets)[subset], minlength=4)
        assert counts.tolist() == [3, 3, 2, 2]
        assert class_balanced_subset(self.targets, 10) == subset
        assert class_balanced_subset(self.targets, 10, seed=1) != subset
        full = class_balanced_subset(self.targets, 40)
        assert np.bincount(np.asarray(self.targets)[full]).tolist() == [10] * 4

    def test_errors(self) -> None:
        with pytest.raises(UserError):
            class_balanced_subset(self.targets, 3)
        with pytest.raises(UserError):
            class_balanced_subset(self.targets, len(self.targets) + 1)
        with pytest.raises(UserError, match="class 0"):
            class_balanced_subset(self.targets, 44)
