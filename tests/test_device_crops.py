"""ImageNet-kind patches cut on the device from whole images (dataset/batched_pipeline.py
augment_whole_images; dataset/patch_sources.py): the crops are PIL's byte for byte, the photometric
half is today's, Tiny-ImageNet-shaped folders live on the device, folders of mixed sizes ship whole
images once, and a run resumes exactly."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torchvision.transforms.functional as TF
from conftest import write_image_folder
from PIL import Image
from torchvision import transforms as T

from dataset import EvaluationPatches, PatchRecipe, TrainingPatches, batched_pipeline, load_split, patch_sources
from dataset.batched_pipeline import WholeImages, augment_crops, augment_whole_images, whole_image_crops
from dataset.draws import CropParams
from dataset.resampling import resized_crops
from dataset.sampler import ResumableSampler
from dataset.seeding import KeyedUniform, step_seed
from plumbing.host_sync import HostSyncs

CPU = torch.device("cpu")
MIXED = [(64, 64), (80, 96), (96, 80)]  # (width, height) of each class's images
P = 2


def folder(root: Path, sizes: list[tuple[int, int]], per_class: int = 1) -> Path:
    """An ImageFolder tree of 2 classes with train/ and val/, len(sizes)·per_class random PNGs per class."""
    return write_image_folder(root, sizes=sizes * per_class, splits=("train", "val"))


def pil_crops(images: list[Image.Image], crop: CropParams, size: int, monkeypatch: pytest.MonkeyPatch) -> torch.Tensor:
    """The uint8 crops (N, 3, size, size) the DataLoader workers cut (PatchRecipe.worker_transform,
    crop_transform) with the boxes and flips of crop forced on it: patch n from images[n mod B]."""
    boxes: Iterator[tuple[int, ...]] = zip(*(t.tolist() for t in (crop.top, crop.left, crop.height, crop.width)))
    flips = iter(crop.flip.tolist())
    transform = PatchRecipe("imagenet", size, "batched", P, 0).worker_transform()
    with monkeypatch.context() as patched:
        patched.setattr(T.RandomResizedCrop, "get_params", staticmethod(lambda img, scale, ratio: next(boxes)))
        patched.setattr(T.RandomHorizontalFlip, "forward", lambda self, img: TF.hflip(img) if next(flips) else img)
        return torch.stack([transform(images[n % len(images)]) for n in range(len(crop.top))])


def decoded(dataset, indices: list[int]) -> list[Image.Image]:
    return [dataset[i][0] for i in indices]


class TestCropsAreThePILCrops:
    def test_padded_mixed_batch_gives_the_pil_crops_then_todays_photometric_half(self, tmp_path: Path,
                                                                                 monkeypatch) -> None:
        """Three images of 64×64, 96×80 and 80×96 in one padded batch: before the photometric half the
        crops are the workers' PIL crops for the same boxes, byte for byte; after it, the patches equal
        augment_crops (today's photometric half) of those PIL crops with the same generator."""
        dataset = load_split("tinyimagenet", folder(tmp_path, MIXED), "train")
        images = decoded(dataset, [0, 1, 2])  # the three sizes of class a
        pixels, sizes, window, _ = patch_sources.pad_whole_images(
            [(TF.pil_to_tensor(im), 0) for im in images], (0.25, 0.25))
        assert pixels.shape == (3, 3, 96, 96) and sizes.tolist() == [[64, 64], [96, 80], [80, 96]]
        batch = WholeImages(pixels, sizes, window)
        ours = augment_whole_images(batch, P, 224, torch.Generator().manual_seed(5))

        generator = torch.Generator().manual_seed(5)
        crop = whole_image_crops(sizes, P, generator)
        reference = pil_crops(images, crop, 224, monkeypatch)  # (P·B, 3, 224, 224) uint8
        device = resized_crops(pixels, crop, 224, "bicubic", window, exact=True)
        assert torch.equal((device * 255).round().to(torch.uint8), reference)  # exact: 0 levels apart
        assert torch.equal(ours, augment_crops(reference, generator, P))  # the generator goes on to the colours

    def test_the_imagenet_path_draws_torchvisions_boxes_at_the_recipe_scale(self, tmp_path: Path,
                                                                            monkeypatch) -> None:
        """The boxes come from draws.sample_crops on each image's own size (its law is torchvision's:
        tests/test_resampling.py TestBoxDraws, KS at α = 10⁻³) with the ImageNet ratio and the recipe's
        --crop_scale, on each image's own size."""
        calls = []
        real = batched_pipeline.sample_crops

        def spy(n, heights, widths, ratio, generator, scale):
            calls.append((n, heights.tolist(), widths.tolist(), ratio, scale))
            return real(n, heights, widths, ratio, generator, scale)

        monkeypatch.setattr(batched_pipeline, "sample_crops", spy)
        dataset = load_split("tinyimagenet", folder(tmp_path, [(64, 64)]), "train")
        recipe = PatchRecipe.of("tinyimagenet", "batched", P, seed=0, crop_scale=0.5)
        next(iter(TrainingPatches(dataset, recipe, ResumableSampler(2, 2), 0, CPU)))
        assert calls == [(4, [64] * 4, [64] * 4, (3 / 4, 4 / 3), (0.5, 0.5))]


def training(root: Path, data: str = "tinyimagenet", bs: int = 4, **kw) -> TrainingPatches:
    dataset = load_split(data, root, "train")
    return TrainingPatches(dataset, PatchRecipe.of(data, "batched", P, seed=0), ResumableSampler(len(dataset), bs),
                           0, CPU, **kw)


class TestTinyImageNetOnTheDevice:
    def test_held_with_no_loader_and_nothing_moved_per_step(self, tmp_path: Path) -> None:
        root = folder(tmp_path, [(64, 64)], per_class=4)  # 8 training images of 64×64
        patches = training(root)
        assert patches.loader is None and patches.images.images.shape == (8, 3, 64, 64)
        first = next(iter(patches))
        assert first.shape == (P * 4, 3, 224, 224) and first.dtype == torch.float32
        assert -1 <= first.min() and first.max() <= 1 and first.std() > 0.1
        assert patches.bytes_per_step == 0
        step = torch.Generator().manual_seed(step_seed(0, 0, 0))
        held = patches.images.images[patches.sampler.batch_indices(0)]  # (4, 3, 64, 64)
        assert torch.equal(first, augment_whole_images(WholeImages.equal(held), P, 224, step))

    def test_the_same_patches_as_whole_images_through_the_loader(self, tmp_path: Path, monkeypatch) -> None:
        """An equally sized folder too large for memory goes through the whole-image loader: its patches
        are those of the held images (same draws, same sizes, same window), in training and evaluation."""
        root = folder(tmp_path, [(64, 64)], per_class=2)
        held = training(root, bs=2)
        held_eval = EvaluationPatches(load_split("tinyimagenet", root, "test"),
                                      PatchRecipe.of("tinyimagenet", "batched", P, 7), 3, 0, CPU)
        monkeypatch.setattr(patch_sources, "in_memory_pixels", lambda *args: None)
        loaded = training(root, bs=2)
        loaded_eval = EvaluationPatches(load_split("tinyimagenet", root, "test"),
                                        PatchRecipe.of("tinyimagenet", "batched", P, 7), 3, 0, CPU)
        assert held.loader is None and loaded.whole and loaded_eval.whole and held_eval.images is not None
        loaded.set_epoch(1, start_step=1)
        held.set_epoch(1, start_step=1)
        assert [torch.equal(a, b) for a, b in zip(loaded, held)] == [True]
        assert loaded.bytes_per_step == 2 * 3 * 64 * 64 + 2 * 2 * 8  # two images and their sizes
        for (a, la), (b, lb) in zip(loaded_eval, held_eval, strict=True):
            assert torch.equal(a, b) and torch.equal(la, lb)

    def test_device_crops_false_keeps_the_pil_crops_in_the_workers(self, tmp_path: Path) -> None:
        patches = training(folder(tmp_path, [(64, 64)], per_class=2), device_crops=False)
        assert patches.images is None and not patches.whole
        views, _ = next(iter(patches.loader))
        assert len(views) == P and views[0].dtype == torch.uint8 and views[0].shape == (4, 3, 224, 224)
        assert next(iter(patches)).shape == (P * 4, 3, 224, 224)
        assert patches.bytes_per_step == P * 4 * 3 * 224 * 224


class TestMixedSizes:
    def test_whole_images_padded_and_the_patches_are_pils(self, tmp_path: Path, monkeypatch) -> None:
        patches = training(folder(tmp_path, MIXED), "tinyimagenet", bs=2)
        assert patches.images is None and patches.whole
        batch = next(iter(patches.loader))
        pixels, sizes, window, labels = batch
        indices = patches.sampler.batch_indices(0).tolist()
        images = decoded(patches.loader.dataset.dataset, indices)
        assert sizes.tolist() == [[im.height, im.width] for im in images]
        assert pixels.shape == (2, 3, int(sizes[:, 0].max()), int(sizes[:, 1].max()))
        for k, image in enumerate(images):  # each image whole in its corner, zeros around it
            h, w = image.height, image.width
            assert torch.equal(pixels[k, :, :h, :w], TF.pil_to_tensor(image))
            assert pixels[k, :, h:].sum() == 0 and pixels[k, :, :, w:].sum() == 0

        with HostSyncs() as watched:  # the main process's part: to the device, draws, crops, colours
            x = patch_sources.finish_whole(batch, patches.recipe, CPU, patches._generator(0),
                                           global_batch=2, first=0)
        assert watched.syncs == []
        assert torch.equal(next(iter(patches)), x)
        assert patches.bytes_per_step == pixels.nbytes + sizes.nbytes
        generator = patches._generator(0)
        crop = whole_image_crops(sizes, P, generator)
        assert torch.equal(x, augment_crops(pil_crops(images, crop, 224, monkeypatch), generator, P))

    def test_two_ranks_make_the_single_process_batch(self, tmp_path: Path) -> None:
        """Each rank draws for the global batch and keeps its images' patches (size 32 for speed)."""
        pixels, sizes, window, _ = patch_sources.pad_whole_images(
            [(torch.randint(0, 256, (3, h, w), dtype=torch.uint8), 0) for w, h in MIXED * 2], (0.25, 0.25))
        single = augment_whole_images(WholeImages(pixels, sizes, window), P, 32, torch.Generator().manual_seed(3))
        ranks = [augment_whole_images(WholeImages(pixels[r * 3:(r + 1) * 3], sizes[r * 3:(r + 1) * 3], window), P, 32,
                                      torch.Generator().manual_seed(3), global_batch=6, first=r * 3) for r in (0, 1)]
        together = torch.cat([r.view(P, 3, -1) for r in ranks], 1)  # (P, B, ...)
        assert torch.equal(together, single.view(P, 6, -1))

    def test_chunks_of_patch_rows_change_nothing(self, monkeypatch) -> None:
        pixels, sizes, window, _ = patch_sources.pad_whole_images(
            [(torch.randint(0, 256, (3, h, w), dtype=torch.uint8), 0) for w, h in MIXED], (0.25, 0.25))
        batch = WholeImages(pixels, sizes, window)
        whole = augment_whole_images(batch, 4, 32, torch.Generator().manual_seed(1))
        monkeypatch.setitem(batched_pipeline.WHOLE_CHUNK_BYTES, "cpu", 3 * 3 * 32 * 32 * 4)  # one row at a time
        assert batched_pipeline.whole_rows_per_chunk(3, 32, CPU) == 1
        assert torch.equal(augment_whole_images(batch, 4, 32, torch.Generator().manual_seed(1)), whole)

    def test_evaluation_patches_depend_on_the_image_alone(self, tmp_path: Path) -> None:
        """Patches of 48² (for speed) of six images of three sizes, by batches of 2 and of 4: the same
        patches for every image, those of its key (seed, its index) alone."""
        dataset = load_split("tinyimagenet", folder(tmp_path, MIXED), "test")
        recipe = PatchRecipe("imagenet", 48, "batched", P, seed=4)
        by_two = [x for x, _ in EvaluationPatches(dataset, recipe, 2, 0, CPU)]
        by_four = [x for x, _ in EvaluationPatches(dataset, recipe, 4, 0, CPU)]
        assert torch.cat(by_two, 1).shape == (P, 6, 3, 48, 48)
        assert torch.equal(torch.cat(by_two, 1), torch.cat(by_four, 1))
        keys = KeyedUniform(4, torch.arange(2), P)
        pixels, sizes, window, _ = patch_sources.pad_whole_images(
            [(TF.pil_to_tensor(dataset[i][0]), 0) for i in range(2)], (0.25, 0.25))
        first = augment_whole_images(WholeImages(pixels, sizes, window), P, 48, keys)
        assert torch.equal(by_two[0], first.view(P, 2, 3, 48, 48))


# A tiny Tiny-ImageNet run: 2 images of 64×64, 2 patches of 224² each, one step per epoch (224-px
# patches through ResNet-18 are slow on a CPU: the fewest that still resume across an epoch).
TINY_IMAGENET_RUN = ["--data", "tinyimagenet", "--arch", "resnet18-tinyimagenet", "--hidden_dim", "32", "--z_dim",
                     "16", "--num_patches", "2", "--bs", "2", "--workers", "0", "--device", "cpu", "--deterministic",
                     "--epoch", "2"]


@pytest.fixture
def deterministic():
    yield
    torch.use_deterministic_algorithms(False)


class TestEndToEnd:
    def test_resume_equals_the_uninterrupted_run_and_evaluation_runs(self, cli, tmp_path: Path,
                                                                      deterministic) -> None:
        """Two epochs straight against one epoch, then --resume: the same weights (the patches held on
        the device, drawn from the step's generator); then evaluate.py on the checkpoint."""
        root = folder(tmp_path / "data", [(64, 64)])  # 2 classes × 1 image in train/ and in val/
        flags = [*TINY_IMAGENET_RUN, "--data_dir", str(root)]
        assert cli("main", *flags, "--output_dir", str(tmp_path / "straight")).returncode == 0
        stopped = cli("main", *flags, "--output_dir", str(tmp_path / "resumed"), "--max_steps", "1")
        assert stopped.returncode == 0, stopped.stderr
        resumed = cli("main", *flags, "--output_dir", str(tmp_path / "resumed"), "--resume")
        assert resumed.returncode == 0, resumed.stderr
        straight, again = (torch.load(tmp_path / run / "save_models/last.pt", weights_only=False)
                           for run in ("straight", "resumed"))
        assert straight["step"] == again["step"] == 2
        assert all(torch.equal(straight["model"][k], again["model"][k]) for k in straight["model"])

        out = tmp_path / "eval.json"
        result = cli("evaluate", "--ckpt", str(tmp_path / "straight/save_models/last.pt"), "--test_patches", "2",
                     "--linear_epochs", "2", "--train_subset", "2", "--test_subset", "2", "--workers", "0",
                     "--device", "cpu", "--knn_k", "1", "--output", str(out))
        assert result.returncode == 0, result.stderr
        summary = json.loads(out.read_text())
        assert summary["data"] == "tinyimagenet" and summary["train_images"] == summary["test_images"] == 2
        assert 0 <= summary["knn"]["top1"] <= 100 and summary["linear"]["epochs"] == 2
