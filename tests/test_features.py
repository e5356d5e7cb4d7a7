"""Bag-of-features extraction and its cache."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dataset import MultiPatch, SyntheticShapes, patch_transform
from dataset.seeded import SeededPatches
from features import bag_of_features, cache_path, cached_features, patch_loader
from model import Encoder


@pytest.fixture(scope="module")
def images() -> SyntheticShapes:
    return SyntheticShapes(train=False, num_per_class=1)  # 10 images


@pytest.fixture(scope="module")
def model() -> Encoder:
    torch.manual_seed(0)
    encoder = Encoder("resnet10-cifar", hidden_dim=16, z_dim=8)
    encoder.train()
    for _ in range(2):  # give BatchNorm running statistics that differ from a batch's own
        encoder(torch.randn(32, 3, 32, 32) * 2 + 1)
    return encoder.eval()


def pre_feature(model: Encoder, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)[1]


class TestBagOfFeatures:
    def test_one_patch_is_the_encoders_pre_feature_of_that_patch(self, images, model) -> None:
        features, labels = bag_of_features(model, patch_loader(images, "synthetic", 1, 7, 4, 0), torch.device("cpu"))
        patches = SeededPatches(images, MultiPatch(patch_transform("cifar", 32), 1), seed=7)
        expected = torch.cat([pre_feature(model, patches[i][0][0][None]) for i in range(len(images))])  # (10, 16)
        torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-5)
        assert labels.tolist() == images.targets and features.dtype == torch.float32

    def test_feature_is_the_mean_over_patches_whatever_the_batching(self, images, model) -> None:
        patches = SeededPatches(images, MultiPatch(patch_transform("cifar", 32), 5), seed=3)
        expected = torch.stack([pre_feature(model, torch.stack(patches[i][0])).mean(0)
                                for i in range(len(images))])  # (10, 16)
        for eval_bs, forward_bs in ((10, 4096), (3, 1), (4, 9)):
            loader = patch_loader(images, "synthetic", 5, 3, eval_bs, 0)
            features, _ = bag_of_features(model, loader, torch.device("cpu"), forward_bs=forward_bs)
            torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-5)
        different_seed, _ = bag_of_features(model, patch_loader(images, "synthetic", 5, 4, 10, 0), torch.device("cpu"))
        assert not torch.allclose(different_seed, expected)

    def test_accepts_a_stacked_patch_tensor_and_keeps_the_models_mode(self, images, model) -> None:
        batches = list(patch_loader(images, "synthetic", 3, 0, 5, 0))
        stacked = [(torch.stack(views), y) for views, y in batches]  # (P, B, C, H, W)
        model.train()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        try:
            a, _ = bag_of_features(model, batches, torch.device("cpu"))
            b, _ = bag_of_features(model, stacked, torch.device("cpu"))
            assert model.training
        finally:
            model.eval()
        torch.testing.assert_close(a, b)
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # no BN update


class TestCache:
    def test_hit_miss_and_recompute(self, tmp_path: Path) -> None:
        calls = []

        def compute() -> tuple[torch.Tensor, torch.Tensor]:
            calls.append(1)
            return torch.full((3, 2), float(len(calls))), torch.arange(3)

        key = {"weights": "abc", "split": "train", "test_patches": 4}
        path = cache_path(tmp_path, "29.pt", key)
        assert path.parent == tmp_path and path.name.startswith("29.pt.train-")
        (first, _), hit = cached_features(path, key, compute)
        assert not hit and path.is_file() and len(calls) == 1
        (again, _), hit = cached_features(path, key, compute)
        assert hit and torch.equal(again, first) and len(calls) == 1
        (fresh, _), hit = cached_features(path, key, compute, recompute=True)
        assert not hit and fresh[0, 0] == 2 and len(calls) == 2
        assert cache_path(tmp_path, "29.pt", {**key, "test_patches": 8}) != path
        assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left

    def test_interrupted_compute_leaves_no_file_and_a_corrupt_cache_is_recomputed(self, tmp_path: Path) -> None:
        key = {"split": "test"}
        path = cache_path(tmp_path, "x", key)

        def fail() -> tuple[torch.Tensor, torch.Tensor]:
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            cached_features(path, key, fail)
        assert list(tmp_path.iterdir()) == []
        path.write_bytes(b"not a cache")
        (features, _), hit = cached_features(path, key, lambda: (torch.ones(1, 1), torch.zeros(1)))
        assert not hit and features.shape == (1, 1) and cached_features(path, key, fail)[1]
