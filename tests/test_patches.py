"""Training patches (dataset/patch_sources.py): where they are made, reproducible and resumable, split over
ranks; the --augment and --compile flags end to end."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision.transforms.functional as TF
from conftest import TINY_RUN, assert_one_line_error, write_image_folder

from dataset import PatchRecipe, SyntheticShapes, TrainingPatches, load_split
from dataset.batched_pipeline import augment_images
from dataset.sampler import ResumableSampler
from dataset.seeding import step_seed

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def images() -> SyntheticShapes:
    """40 synthetic images, held on the device by the batched path."""
    return SyntheticShapes(train=False, num_per_class=4)


def device_patches(images: SyntheticShapes, rank: int = 0, world_size: int = 1, **kw) -> TrainingPatches:
    """2 patches of 10 images per step, 4 steps per epoch."""
    sampler = ResumableSampler(len(images), 10, seed=0, rank=rank, world_size=world_size)
    return TrainingPatches(images, PatchRecipe.of("synthetic", "batched", 2, seed=0), sampler, 0, CPU, **kw)


def folder_patches(root: Path, data: str, augment: str, num_patches: int = 2) -> TrainingPatches:
    """Patches of an image folder's training split, batches of 2 images."""
    dataset = load_split(data, root, "train")
    recipe = PatchRecipe.of(data, augment, num_patches, seed=0)
    return TrainingPatches(dataset, recipe, ResumableSampler(len(dataset), 2), 0, CPU)


class TestImagesOnTheDevice:
    def test_epoch_of_patch_major_batches_reproducible(self, images) -> None:
        first = list(device_patches(images))
        assert len(first) == 4 and all(x.shape == (20, 3, 32, 32) for x in first)
        again = list(device_patches(images))
        assert all(torch.equal(a, b) for a, b in zip(first, again))
        other = device_patches(images)
        other.set_epoch(1)
        assert not torch.equal(next(iter(other)), first[0])

    def test_resumed_epoch_continues_with_the_same_patches(self, images) -> None:
        full = list(device_patches(images))
        resumed = device_patches(images)
        resumed.set_epoch(0, start_step=2)
        assert len(resumed) == 2
        assert all(torch.equal(a, b) for a, b in zip(resumed, full[2:]))

    def test_two_ranks_make_the_single_process_batch(self, images) -> None:
        single = next(iter(device_patches(images))).view(2, 10, -1)  # (P, B, ...)
        ranks = [next(iter(device_patches(images, rank, 2))).view(2, 5, -1) for rank in (0, 1)]
        torch.testing.assert_close(torch.cat(ranks, dim=1), single)  # (P, B, ...)

    def test_channels_last(self, images) -> None:
        x = next(iter(device_patches(images, memory_format=torch.channels_last)))
        assert x.is_contiguous(memory_format=torch.channels_last)


class TestPathChoice:
    def test_equal_sized_folder_lives_in_memory(self, tmp_path: Path) -> None:
        write_image_folder(tmp_path, sizes=[(32, 32)] * 3, splits=("train", "val"))
        patches = folder_patches(tmp_path, "imagefolder", "batched")
        assert patches.loader is None  # no DataLoader: the decoded images are held on the device
        folder = load_split("imagefolder", tmp_path, "train")
        uint8 = torch.stack([TF.pil_to_tensor(image) for image, _ in folder])  # (6, 3, 32, 32)
        step = torch.Generator().manual_seed(step_seed(0, 0, 0))  # seed 0, epoch 0, step 0
        expected = augment_images(uint8[patches.sampler.batch_indices(0)], 2, 32, (1.0, 1.0), step)  # (P·B, 3, 32, 32)
        assert torch.equal(next(iter(patches)), expected)

    def test_mixed_sizes_cut_in_workers_then_coloured_in_batch(self, tmp_path: Path) -> None:
        write_image_folder(tmp_path, sizes=[(32, 32), (40, 36), (48, 48)], splits=("train", "val"))
        patches = folder_patches(tmp_path, "imagefolder", "batched")
        assert patches.images is None and patches.loader is not None
        views, _ = next(iter(patches.loader))
        assert views[0].dtype == torch.uint8  # crops only: the colours are made on the device
        x = next(iter(patches))
        assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and -1 <= x.min() and x.max() <= 1

    def test_imagenet_kind_equally_sized_lives_in_memory(self, tmp_path: Path) -> None:
        """Its crops are made on the device too (tests/test_device_crops.py)."""
        write_image_folder(tmp_path, sizes=[(40, 40)] * 2, splits=("train", "val"))
        patches = folder_patches(tmp_path, "tinyimagenet", "batched")
        assert patches.images is not None and patches.loader is None
        assert next(iter(patches)).shape == (4, 3, 224, 224)

    def test_pil_path_is_the_official_loader(self, tmp_path: Path) -> None:
        write_image_folder(tmp_path, sizes=[(32, 32)] * 2, splits=("train", "val"))
        patches = folder_patches(tmp_path, "imagefolder", "pil", num_patches=3)
        assert patches.images is None
        views, _ = next(iter(patches.loader))
        assert len(views) == 3 and views[0].dtype == torch.float32  # finished by PIL in the workers
        assert next(iter(patches)).shape == (6, 3, 32, 32)


class TestTrainingFlags:
    def test_the_default_is_batched_and_resume_keeps_the_path(self, cli, tmp_path: Path) -> None:
        run = ["--output_dir", str(tmp_path / "run"), "--epoch", "1"]
        result = cli("main", *TINY_RUN, *run, "--max_steps", "2")
        assert result.returncode == 0, result.stderr
        state = torch.load(tmp_path / "run/save_models/last.pt", weights_only=False)
        assert state["step"] == 2 and state["args"]["augment"] == "batched"
        resumed = cli("main", *TINY_RUN, *run, "--augment", "pil", "--resume")
        assert_one_line_error(resumed, "--augment batched (now pil)")

    def test_compile_without_a_compiler_is_one_line(self, cli, monkeypatch, tmp_path: Path) -> None:
        monkeypatch.delenv("CXX", raising=False)
        monkeypatch.setattr("plumbing.speed.shutil.which", lambda name: None)
        result = cli("main", *TINY_RUN, "--compile", "--output_dir", str(tmp_path / "run"))
        assert_one_line_error(result, "--compile", "C++ compiler")
