"""--crop_scale S: the share of the image's area each patch's crop covers, in both augmentation paths,
in training (the flag, resume) and evaluation (the checkpoint's value, the feature cache)."""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from conftest import TINY_RUN, assert_one_line_error
from PIL import Image
from test_batched import as_tensor, grey_levels_apart, replay_pil
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode, RandomResizedCrop

import main
from build import build_monitor, training_patches
from dataset import PatchRecipe, SyntheticShapes, TrainingPatches
from dataset import image_ops as ops
from dataset.batched_pipeline import augment_images, photometric
from dataset.draws import crop_window, sample_colors, sample_crops
from dataset.patch_sources import DEFAULT_CROP_SCALE, crop_scale_flag
from dataset.pil_pipeline import CROP_SCALE, crop_transform, patch_transform
from dataset.sampler import ResumableSampler
from dataset.seeding import SeededPatches, step_seed
from model import Encoder
from plumbing.checkpoint import save_checkpoint
from plumbing.errors import UserError

CPU = torch.device("cpu")
SCALES = (1 / 16, 0.5, 1.0)
# (height, width, aspect-ratio range): CIFAR, and ImageNet-kind boxes on a square and a wide image
SHAPES = [(32, 32, (1.0, 1.0)), (64, 64, (3 / 4, 4 / 3)), (48, 80, (3 / 4, 4 / 3))]
N_BOXES = 4000
# Two-sample Kolmogorov–Smirnov bound at level α = 10⁻³ for n = m = N_BOXES: c(α)·√(2/n), with
# c(α) = √(−ln(α/2)/2) = 1.95, i.e. 0.031. It holds for discrete values too (the test is then
# conservative); an offset range one pixel short moves the offsets' CDF by 1/(H − h + 1) ≥ 0.04
# for the CIFAR boxes below, and a crop at the wrong scale moves the area's CDF by 1.
KS_BOUND = math.sqrt(-math.log(1e-3 / 2) / 2) * math.sqrt(2 / N_BOXES)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """20 natural-looking RGB images (20, 32, 32, 3) uint8."""
    return SyntheticShapes(train=False, num_per_class=2).data


def torchvision_boxes(n: int, height: int, width: int, ratio: tuple[float, float], scale: float) -> torch.Tensor:
    """(n, 4) boxes (top, left, height, width) of torchvision's RandomResizedCrop.get_params, seeded."""
    torch.manual_seed(0)
    image = torch.zeros(3, height, width)
    return torch.tensor([RandomResizedCrop.get_params(image, [scale, scale], list(ratio)) for _ in range(n)])


def batched_boxes(n: int, height: int, width: int, ratio: tuple[float, float], scale: float) -> torch.Tensor:
    """(n, 4) boxes (top, left, height, width) of the batched draws at area share `scale`."""
    c = sample_crops(n, height, width, ratio, torch.Generator().manual_seed(1), scale=(scale, scale))
    return torch.stack([c.top, c.left, c.height, c.width], 1)


def ks_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest gap between the empirical CDFs of two samples of integers (1-d)."""
    values = torch.cat([a, b]).unique()  # sorted
    cdf = [torch.searchsorted(x.sort().values, values, right=True) / len(x) for x in (a, b)]
    return (cdf[0] - cdf[1]).abs().max().item()


class TestBoxDistribution:
    """The batched path's boxes follow torchvision's RandomResizedCrop at every scale S."""

    @pytest.mark.parametrize("scale", SCALES)
    @pytest.mark.parametrize("height,width,ratio", SHAPES)
    def test_boxes_have_torchvisions_distribution(self, height: int, width: int, ratio: tuple[float, float],
                                                  scale: float) -> None:
        ours = batched_boxes(N_BOXES, height, width, ratio, scale)
        theirs = torchvision_boxes(N_BOXES, height, width, ratio, scale)
        for name, column in [("area", None), ("top", 0), ("left", 1), ("height", 2), ("width", 3)]:
            a, b = ((x[:, 2] * x[:, 3]) if column is None else x[:, column] for x in (ours, theirs))
            assert ks_distance(a, b) <= KS_BOUND, name
            spread = math.sqrt((a.double().var() + b.double().var()).item() / N_BOXES)  # s.e. of the difference
            assert abs(a.double().mean() - b.double().mean()).item() <= 5 * spread + 1e-9, name
        assert (ours[:, 0] + ours[:, 2] <= height).all() and (ours[:, 1] + ours[:, 3] <= width).all()
        assert (ours[:, :2] >= 0).all()

    def test_the_distance_sees_a_crop_at_another_scale(self) -> None:
        """The tolerance is not blind: boxes of the old fixed quarter against torchvision's at 0.5."""
        ours = batched_boxes(N_BOXES, 64, 64, (3 / 4, 4 / 3), 0.25)
        theirs = torchvision_boxes(N_BOXES, 64, 64, (3 / 4, 4 / 3), 0.5)
        assert ks_distance(ours[:, 2] * ours[:, 3], theirs[:, 2] * theirs[:, 3]) > 10 * KS_BOUND

    @pytest.mark.parametrize("scale,side", [(1 / 16, 8), (0.25, 16), (0.5, 23), (1.0, 32)])
    def test_cifar_boxes_are_squares_of_side_round_32_sqrt_s_at_every_offset(self, scale: float, side: int) -> None:
        boxes = batched_boxes(N_BOXES, 32, 32, (1.0, 1.0), scale)
        assert (boxes[:, 2] == side).all() and (boxes[:, 3] == side).all()
        assert set(boxes[:, 0].tolist()) == set(range(33 - side)) == set(boxes[:, 1].tolist())
        assert crop_window(32, 32, (1.0, 1.0), (scale, scale)) == side  # the window follows the scale, no wider

    @pytest.mark.parametrize("scale", SCALES)
    @pytest.mark.parametrize("height,width,ratio", SHAPES[1:])
    def test_crop_window_holds_every_box(self, height: int, width: int, ratio: tuple[float, float],
                                         scale: float) -> None:
        boxes = batched_boxes(N_BOXES, height, width, ratio, scale)
        assert crop_window(height, width, ratio, (scale, scale)) >= boxes[:, 2:].max()


class TestCropAndResizeMatchPIL:
    """For given boxes at each scale, the batched crop + resize equals PIL's (≤ 1 grey level, as
    tests/test_batched.py asks at the official scale)."""

    @pytest.mark.parametrize("scale", SCALES)
    @pytest.mark.parametrize("side", [32, 64])  # CIFAR; a larger image, cut with ImageNet's ratios
    def test_boxes_cut_and_resized_as_pil(self, images: np.ndarray, scale: float, side: int) -> None:
        pictures = images if side == 32 else np.stack([np.asarray(Image.fromarray(im).resize((side, side)))
                                                       for im in images])  # (20, side, side, 3)
        ratio = (1.0, 1.0) if side == 32 else (3 / 4, 4 / 3)
        crop = sample_crops(len(pictures), side, side, ratio, torch.Generator().manual_seed(2), scale=(scale, scale))
        pils = [TF.resized_crop(Image.fromarray(im), t, l, h, w, [32, 32], InterpolationMode.BILINEAR)
                for im, t, l, h, w in zip(pictures, crop.top.tolist(), crop.left.tolist(), crop.height.tolist(),
                                          crop.width.tolist())]
        pils = [TF.hflip(p) if f else p for p, f in zip(pils, crop.flip.tolist())]
        window = crop_window(side, side, ratio, (scale, scale))
        assert grey_levels_apart(pils, ops.resized_crop(as_tensor(pictures), crop, 32, window)) <= 1

    @pytest.mark.parametrize("scale", SCALES)
    def test_augment_images_at_a_scale_replays_the_pil_pipeline(self, images: np.ndarray, scale: float) -> None:
        """The scale reaches both the draws and the crop window of augment_images."""
        num_patches, n = 4, len(images)
        out = augment_images(torch.from_numpy(images).permute(0, 3, 1, 2), num_patches, 32, (1.0, 1.0),
                             torch.Generator().manual_seed(3), scale=(scale, scale))  # (P·B, 3, 32, 32)
        generator = torch.Generator().manual_seed(3)  # the same draws, in the same order
        crop = sample_crops(num_patches * n, 32, 32, (1.0, 1.0), generator, scale=(scale, scale))
        color = sample_colors(num_patches * n, generator)
        pils = [replay_pil(Image.fromarray(images[k % n]), crop, color, k) for k in range(num_patches * n)]
        assert grey_levels_apart(pils, out * 0.5 + 0.5) <= 2


class TestWholeImage:
    """At S = 1 a CIFAR crop is the whole 32×32 image (aspect ratio 1): only flipped, never resampled."""

    def test_batched_crop_is_the_image_or_its_mirror(self, images: np.ndarray) -> None:
        crop = sample_crops(200, 32, 32, (1.0, 1.0), torch.Generator().manual_seed(0), scale=(1.0, 1.0))
        assert (crop.top == 0).all() and (crop.left == 0).all() and (crop.height == 32).all()
        assert (crop.width == 32).all() and crop.flip.any() and not crop.flip.all()
        assert crop_window(32, 32, (1.0, 1.0), (1.0, 1.0)) == 32
        x = as_tensor(images)  # (20, 3, 32, 32)
        out = ops.resized_crop(x, crop, 32, 32)  # (200, 3, 32, 32), patch n from image n mod 20
        source = x[torch.arange(200) % 20]
        expected = torch.where(crop.flip.view(-1, 1, 1, 1), source.flip(-1), source)
        torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)

    @pytest.mark.parametrize("augment", ["pil", "batched"])
    def test_worker_crop_is_the_image_or_its_mirror(self, images: np.ndarray, augment: str) -> None:
        """What DataLoader workers cut at S = 1: torchvision's box is (0, 0, 32, 32)."""
        assert RandomResizedCrop.get_params(torch.zeros(3, 32, 32), [1.0, 1.0], [1.0, 1.0]) == (0, 0, 32, 32)
        image = Image.fromarray(images[0])
        geometric = crop_transform("cifar", 32, 1.0)
        pixels, mirror = TF.pil_to_tensor(image), TF.pil_to_tensor(TF.hflip(image))
        cuts = [geometric(image) for _ in range(20)]
        assert all(torch.equal(c, pixels) or torch.equal(c, mirror) for c in cuts)
        assert any(torch.equal(c, pixels) for c in cuts) and any(torch.equal(c, mirror) for c in cuts)


class TestDefaultIsTheOfficialQuarter:
    """The default makes exactly the patches of the fixed constant, in both paths."""

    def test_default_is_the_constant(self) -> None:
        assert DEFAULT_CROP_SCALE == 0.25 and CROP_SCALE == (0.25, 0.25)
        assert main.get_args_parser().parse_args([]).crop_scale == DEFAULT_CROP_SCALE
        assert PatchRecipe.of("cifar10", "batched", 2, 0).crop_scale == DEFAULT_CROP_SCALE

    def test_batched_path(self) -> None:
        dataset = SyntheticShapes(train=False, num_per_class=2)  # 20 images
        uint8 = torch.from_numpy(dataset.data).permute(0, 3, 1, 2)  # (20, 3, 32, 32)
        patches = TrainingPatches(dataset, PatchRecipe.of("synthetic", "batched", 3, seed=4),
                                  ResumableSampler(20, 10, seed=4), 0, CPU)
        first = next(iter(patches))  # (P·B, 3, 32, 32)
        batch = uint8[patches.sampler.batch_indices(0)]
        # the pipeline spelled out with the constant: draws, window and crop of the official quarter
        generator = torch.Generator().manual_seed(step_seed(4, 0, 0))
        crops = sample_crops(30, 32, 32, (1.0, 1.0), generator, scale=CROP_SCALE)
        colors = sample_colors(30, generator)
        x = ops.resized_crop(batch.float() / 255, crops, 32, crop_window(32, 32, (1.0, 1.0), CROP_SCALE))
        assert torch.equal(first, photometric(x, colors))
        other = TrainingPatches(dataset, PatchRecipe.of("synthetic", "batched", 3, seed=4, crop_scale=0.5),
                                ResumableSampler(20, 10, seed=4), 0, CPU)
        assert not torch.equal(next(iter(other)), first)  # the scale reaches the device path

    @pytest.mark.parametrize("kind,size", [("cifar", 32), ("imagenet", 24)])
    def test_pil_path(self, images: np.ndarray, kind: str, size: int) -> None:
        dataset = [(Image.fromarray(im), 0) for im in images[:4]]
        by_hand = T.Compose([  # the official transform, its crop built from the constant
            T.RandomResizedCrop(size, scale=CROP_SCALE, ratio=(1.0, 1.0) if kind == "cifar" else (3 / 4, 4 / 3),
                                interpolation=T.InterpolationMode.BILINEAR if kind == "cifar" else
                                T.InterpolationMode.BICUBIC),
            *patch_transform(kind, size).transforms[1:]])
        ours = SeededPatches(dataset, patch_transform(kind, size), seed=6)
        reference = SeededPatches(dataset, by_hand, seed=6)
        for i in range(len(dataset)):
            assert torch.equal(ours[i][0], reference[i][0])
        larger = SeededPatches(dataset, patch_transform(kind, size, 1.0), seed=6)
        assert not all(torch.equal(larger[i][0], reference[i][0]) for i in range(len(dataset)))

    @pytest.mark.parametrize("augment", ["pil", "batched"])
    def test_recipe_threads_the_scale_to_the_worker_transform(self, augment: str) -> None:
        recipe = PatchRecipe.of("imagenet100", augment, 2, 0, crop_scale=0.5)
        crop = recipe.worker_transform().transforms[0]
        assert isinstance(crop, T.RandomResizedCrop) and crop.scale == (0.5, 0.5) and recipe.scale == (0.5, 0.5)
        default = PatchRecipe.of("imagenet100", augment, 2, 0).worker_transform().transforms[0]
        assert default.scale == CROP_SCALE


class TestFlags:
    @pytest.mark.parametrize("value", ["0", "-0.25", "1.5", "nan", "inf", "quarter"])
    def test_main_refuses_a_scale_outside_0_1_before_a_run_folder_exists(self, cli, tmp_path: Path,
                                                                          value: str) -> None:
        result = cli("main", *TINY_RUN, "--output_dir", str(tmp_path / "run"), "--crop_scale", value)
        assert_one_line_error(result, "--crop_scale", "(0, 1]")
        assert not (tmp_path / "run").exists()

    def test_evaluate_refuses_it_too(self, cli) -> None:
        assert_one_line_error(cli("evaluate", "--random_init", "--crop_scale", "2"), "--crop_scale", "(0, 1]")

    def test_the_flag_type_and_the_recipe(self) -> None:
        assert crop_scale_flag("1") == 1.0 and crop_scale_flag("0.0625") == 1 / 16
        with pytest.raises(argparse.ArgumentTypeError):
            crop_scale_flag("0")
        with pytest.raises(UserError, match="--crop_scale"):
            PatchRecipe.of("cifar10", "pil", 2, 0, crop_scale=1.01)

    def test_training_patches_and_the_knn_monitor_use_the_runs_value(self) -> None:
        args = main.get_args_parser().parse_args([*TINY_RUN, "--crop_scale", "0.5", "--eval_subset", "10"])
        assert training_patches(args, CPU).recipe.crop_scale == 0.5
        monitor = build_monitor(args, CPU)
        assert {batches.recipe.crop_scale for batches in monitor.batches.values()} == {0.5}


class TestResume:
    def test_another_scale_is_refused_and_an_old_checkpoint_counts_as_the_quarter(self, cli, tmp_path: Path) -> None:
        run = tmp_path / "run"

        def train(*extra: str):
            return cli("main", *TINY_RUN, "--output_dir", str(run), *extra)

        assert train("--max_steps", "1", "--crop_scale", "0.5").returncode == 0
        last = run / "save_models" / "last.pt"
        assert torch.load(last, weights_only=False)["args"]["crop_scale"] == 0.5
        assert_one_line_error(train("--resume"), "--crop_scale 0.5 (now 0.25)")
        # a checkpoint written before the flag existed: its args lack the key, and it trained at 0.25
        state = torch.load(last, weights_only=False)
        del state["args"]["crop_scale"]
        save_checkpoint(state, last)
        assert_one_line_error(train("--resume", "--crop_scale", "0.5"), "--crop_scale 0.25 (now 0.5)")
        resumed = train("--resume", "--max_steps", "2")
        assert resumed.returncode == 0, resumed.stderr

    def test_changed_flags_fills_a_missing_scale_with_the_quarter(self) -> None:
        args = main.get_args_parser().parse_args(["--crop_scale", "0.5"])
        saved = {k: v for k, v in vars(main.get_args_parser().parse_args([])).items() if k != "crop_scale"}
        assert main.changed_flags(saved, args) == "--crop_scale 0.25 (now 0.5)"
        assert main.changed_flags(saved, main.get_args_parser().parse_args([])) == ""


ARCH = {"arch": "resnet10-cifar", "hidden_dim": 16, "z_dim": 8}
QUICK = ["--train_subset", "20", "--test_subset", "10", "--test_patches", "2", "--workers", "0", "--device", "cpu",
         "--no-linear"]


def checkpoint(folder: Path, **args: object) -> Path:
    """One of our checkpoints of an untrained encoder (seed 0), trained on `synthetic` with args."""
    torch.manual_seed(0)
    path = folder / "save_models" / "3.pt"
    save_checkpoint({"model": Encoder(**ARCH).state_dict(), "args": {"data": "synthetic", **ARCH, **args},
                     "epoch": 3, "step": 40}, path)
    return path


def stored_features(folder: Path) -> set[bytes]:
    """The training split's cached features in folder, as bytes."""
    return {torch.load(p, weights_only=True)["features"].numpy().tobytes() for p in folder.glob("3.pt.train-*")}


class TestEvaluation:
    def test_patches_follow_the_checkpoint_unless_overridden_and_the_cache_is_keyed(self, cli, tmp_path: Path) -> None:
        old = checkpoint(tmp_path / "old")  # before the flag: no crop_scale in its args
        new = checkpoint(tmp_path / "new", crop_scale=0.5)

        def scale_of(ckpt: Path, *flags: str) -> tuple[float, int]:
            result = cli("evaluate", "--ckpt", str(ckpt), *QUICK, *flags)
            assert result.returncode == 0, result.stderr
            return json.loads(ckpt.with_name("3.eval.json").read_text())["crop_scale"], \
                result.stdout.count("computed features")

        assert scale_of(old) == (0.25, 2)
        assert scale_of(new) == (0.5, 2)
        assert scale_of(new, "--crop_scale", "0.25") == (0.25, 2)  # another scale: never the cached features
        assert scale_of(new) == (0.5, 0)  # the same scale again: the cache serves it
        # the same encoder at two scales: the features differ, and the 0.25 ones are the old checkpoint's
        assert len(stored_features(new.parent)) == 2 and stored_features(old.parent) <= stored_features(new.parent)

    def test_random_init_without_a_checkpoint_uses_the_quarter(self, cli, tmp_path: Path) -> None:
        flags = ["--random_init", "--data", "synthetic", *[f"--{k}={v}" for k, v in ARCH.items()], *QUICK]
        assert cli("evaluate", *flags, "--output", str(tmp_path / "r.json")).returncode == 0
        assert json.loads((tmp_path / "r.json").read_text())["crop_scale"] == 0.25
