"""Training batch sources (dataset/source.py), the --augment and --compile flags end to end."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import TINY_RUN, assert_one_line_error, write_image_folder
from dataset.sampler import ResumableSampler
from dataset.source import DeviceBatches, LoaderBatches, TrainData, build_train_batches
from dataset.synthetic import SyntheticShapes


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    """40 synthetic images as the device tensor of the batched path, uint8 (40, 3, 32, 32)."""
    return torch.from_numpy(SyntheticShapes(train=False, num_per_class=4).data).permute(0, 3, 1, 2).contiguous()


def device_batches(pixels: torch.Tensor, rank: int = 0, world_size: int = 1, **kw) -> DeviceBatches:
    """2 patches of 10 images per step, 4 steps per epoch."""
    sampler = ResumableSampler(len(pixels), 10, seed=0, rank=rank, world_size=world_size)
    return DeviceBatches(pixels, sampler, 2, 32, (1.0, 1.0), seed=0, **kw)


class TestDeviceBatches:
    def test_epoch_of_patch_major_batches_reproducible(self, pixels: torch.Tensor) -> None:
        first = list(device_batches(pixels))
        assert len(first) == 4 and all(x.shape == (20, 3, 32, 32) for x in first)
        again = list(device_batches(pixels))
        assert all(torch.equal(a, b) for a, b in zip(first, again))
        other = device_batches(pixels)
        other.set_epoch(1)
        assert not torch.equal(next(iter(other)), first[0])

    def test_resumed_epoch_continues_with_the_same_patches(self, pixels: torch.Tensor) -> None:
        full = list(device_batches(pixels))
        resumed = device_batches(pixels)
        resumed.set_epoch(0, start_step=2)
        assert len(resumed) == 2
        assert all(torch.equal(a, b) for a, b in zip(resumed, full[2:]))

    def test_two_ranks_make_the_single_process_batch(self, pixels: torch.Tensor) -> None:
        single = next(iter(device_batches(pixels))).view(2, 10, -1)  # (P, B, ...)
        ranks = [next(iter(device_batches(pixels, rank, 2))).view(2, 5, -1) for rank in (0, 1)]
        torch.testing.assert_close(torch.cat(ranks, dim=1), single)  # (P, B, ...)

    def test_channels_last(self, pixels: torch.Tensor) -> None:
        x = next(iter(device_batches(pixels, memory_format=torch.channels_last)))
        assert x.is_contiguous(memory_format=torch.channels_last)


class TestPathChoice:
    def test_equal_sized_folder_lives_in_memory(self, tmp_path: Path) -> None:
        write_image_folder(tmp_path, sizes=[(32, 32)] * 3, splits=("train", "val"))
        batches = build_train_batches(TrainData("imagefolder", tmp_path, "batched", 2, 2, 0), torch.device("cpu"))
        assert isinstance(batches, DeviceBatches) and batches.images.shape == (6, 3, 32, 32)
        assert batches.images.dtype == torch.uint8

    def test_mixed_sizes_cut_in_workers_then_coloured_in_batch(self, tmp_path: Path) -> None:
        write_image_folder(tmp_path, sizes=[(32, 32), (40, 36), (48, 48)], splits=("train", "val"))
        batches = build_train_batches(TrainData("imagefolder", tmp_path, "batched", 2, 2, 0), torch.device("cpu"))
        assert isinstance(batches, LoaderBatches) and batches.photometric
        x = next(iter(batches))
        assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and -1 <= x.min() and x.max() <= 1

    def test_imagenet_kind_keeps_decoding_in_workers(self, tmp_path: Path) -> None:
        write_image_folder(tmp_path, sizes=[(40, 40)] * 2, splits=("train", "val"))
        batches = build_train_batches(TrainData("tinyimagenet", tmp_path, "batched", 2, 2, 0), torch.device("cpu"))
        assert isinstance(batches, LoaderBatches) and batches.photometric
        assert next(iter(batches)).shape == (4, 3, 224, 224)

    def test_pil_path_is_the_official_loader(self, tmp_path: Path) -> None:
        write_image_folder(tmp_path, sizes=[(32, 32)] * 2, splits=("train", "val"))
        batches = build_train_batches(TrainData("imagefolder", tmp_path, "pil", 3, 2, 0), torch.device("cpu"))
        assert isinstance(batches, LoaderBatches) and not batches.photometric
        assert next(iter(batches)).shape == (6, 3, 32, 32)


class TestTrainingFlags:
    def test_batched_trains_on_synthetic_and_resume_keeps_the_path(self, cli, tmp_path: Path) -> None:
        run = ["--output_dir", str(tmp_path / "run"), "--augment", "batched", "--epoch", "1"]
        result = cli("main", *TINY_RUN, *run, "--max_steps", "2")
        assert result.returncode == 0, result.stderr
        state = torch.load(tmp_path / "run/save_models/last.pt", weights_only=False)
        assert state["step"] == 2 and state["args"]["augment"] == "batched"
        assert_one_line_error(cli("main", *TINY_RUN, *run[:2], "--resume"), "--augment")

    def test_compile_without_a_compiler_is_one_line(self, cli, monkeypatch, tmp_path: Path) -> None:
        monkeypatch.delenv("CXX", raising=False)
        monkeypatch.setattr("speed.shutil.which", lambda name: None)
        result = cli("main", *TINY_RUN, "--compile", "--output_dir", str(tmp_path / "run"))
        assert_one_line_error(result, "--compile", "C++ compiler")
