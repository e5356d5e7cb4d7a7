"""--patch_kind and --patch_size: an image folder's patches from its images, explicit flags, what a run
records, evaluation following the checkpoint, resume, and refusals."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error, write_image_folder

import dataset.pixels
from dataset.catalog import DataSpec, patch_spec
from model import Encoder
from plumbing.checkpoint import load_checkpoint, save_checkpoint

# Two classes, four training and four test images each; resnet10-cifar at hidden 64: a step is a blink.
RUN = ["--data", "imagefolder", "--arch", "resnet10-cifar", "--hidden_dim", "64", "--z_dim", "32",
       "--num_patches", "2", "--bs", "4", "--epoch", "2", "--max_steps", "1", "--workers", "0", "--device", "cpu"]
EVAL = ["--test_patches", "1", "--linear_epochs", "1", "--workers", "0", "--device", "cpu"]


def folder(root: Path, *sizes: tuple[int, int]) -> Path:
    """An image folder with train/ and val/, two classes, one image per (width, height) in sizes each."""
    return write_image_folder(root, sizes=sizes, splits=("train", "val"))


def record(run: Path) -> dict:
    """The flags of args.json (the first run's record)."""
    return json.loads((run / "args.json").read_text())["args"]


class TestFromTheImages:
    def test_32_pixel_images_are_cifar_kind_at_32(self, tmp_path: Path) -> None:
        assert patch_spec("imagefolder", folder(tmp_path, *[(32, 32)] * 3)) == DataSpec("cifar", 32)

    def test_equal_images_of_another_size_are_imagenet_kind_at_224(self, tmp_path: Path) -> None:
        spec = patch_spec("imagefolder", folder(tmp_path, (64, 64), (64, 64)))
        assert spec == DataSpec("imagenet", 224) and "all 64×64" in spec.describe()

    def test_mixed_sizes_are_imagenet_kind_and_only_headers_up_to_the_odd_one_are_read(
            self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        root = folder(tmp_path, (32, 32), (40, 30), (32, 32), (32, 32))  # 32×32 first: a sample of one would lie
        read = []
        monkeypatch.setattr(dataset.pixels, "image_size", lambda path: read.append(path) or _size(path))
        spec = patch_spec("imagefolder", root)
        assert spec == DataSpec("imagenet", 224) and "32×32, 40×30" in spec.describe()
        assert len(read) == 2  # class a's first two images: the second differs, so the scan stops

    def test_a_folder_of_32_pixel_images_is_read_through(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        root = folder(tmp_path, *[(32, 32)] * 3)
        read = []
        monkeypatch.setattr(dataset.pixels, "image_size", lambda path: read.append(path) or _size(path))
        assert patch_spec("imagefolder", root).kind == "cifar" and len(read) == 6  # every training image

    def test_named_data_sets_keep_their_entry_and_flags_win(self, tmp_path: Path) -> None:
        assert patch_spec("tinyimagenet", None) == DataSpec("imagenet", 224)
        assert patch_spec("cifar10", None) == patch_spec("synthetic", None) == DataSpec("cifar", 32)
        assert patch_spec("tinyimagenet", None, size=64) == DataSpec("imagenet", 64)
        assert patch_spec("cifar10", None, kind="imagenet") == DataSpec("imagenet", 224)  # that kind's official size
        root = folder(tmp_path, (64, 64))
        assert patch_spec("imagefolder", root, kind="cifar") == DataSpec("cifar", 32)
        assert patch_spec("imagefolder", root, size=48) == DataSpec("imagenet", 48)
        assert patch_spec("imagefolder", tmp_path / "nowhere", "cifar", 40) == DataSpec("cifar", 40)  # nothing read


def _size(path: str) -> tuple[int, int]:
    from PIL import Image
    with Image.open(path) as image:
        return image.size


class TestTraining:
    def test_the_resolved_values_are_recorded_and_reach_the_encoder(self, cli, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
        data = folder(tmp_path / "data", *[(40, 40)] * 4)
        shapes = []
        forward = Encoder.forward
        monkeypatch.setattr(Encoder, "forward", lambda self, x: shapes.append(tuple(x.shape[1:])) or forward(self, x))
        result = cli("main", *RUN, "--data_dir", str(data), "--patch_size", "16", "--output_dir", "run")
        assert result.returncode == 0, result.stderr
        assert "patches: imagenet kind, 16 px (--patch_size as given; the kind from the images of" in result.stdout
        assert "all 40×40" in result.stdout
        assert shapes and set(shapes) == {(3, 16, 16)}
        flags = record(tmp_path / "run")
        assert (flags["patch_kind"], flags["patch_size"]) == ("imagenet", 16)
        saved = load_checkpoint(tmp_path / "run/save_models/last.pt")["args"]
        assert (saved["patch_kind"], saved["patch_size"]) == ("imagenet", 16)

    def test_without_flags_a_named_set_records_its_entry(self, cli, tmp_path: Path) -> None:
        result = cli("main", *RUN, "--data", "synthetic", "--train_subset", "10", "--output_dir", "run")
        assert result.returncode == 0, result.stderr
        assert "patches: cifar kind, 32 px (synthetic's official patches)" in result.stdout
        flags = record(tmp_path / "run")
        assert (flags["patch_kind"], flags["patch_size"]) == ("cifar", 32)

    def test_resume_keeps_the_runs_patches_and_refuses_a_change(self, cli, tmp_path: Path) -> None:
        data = folder(tmp_path / "data", *[(32, 32)] * 4)
        first = cli("main", *RUN, "--data_dir", str(data), "--patch_size", "24", "--output_dir", "run")
        assert first.returncode == 0, first.stderr
        changed = cli("main", *RUN, "--data_dir", str(data), "--patch_size", "32", "--output_dir", "run", "--resume")
        assert_one_line_error(changed, "--patch_size 24 (now 32)", "resume with the same flags")
        kept = cli("main", *RUN[:-6], "--max_steps", "2", "--workers", "0", "--device", "cpu",
                   "--data_dir", str(data), "--output_dir", "run", "--resume")  # no --patch_size: the run's own
        assert kept.returncode == 0, kept.stderr
        assert "patches: cifar kind, 24 px (as the run being resumed was trained)" in kept.stdout
        assert load_checkpoint(tmp_path / "run/save_models/last.pt")["args"]["patch_size"] == 24

    def test_an_old_checkpoint_resumes_with_what_its_data_gave(self, cli, tmp_path: Path) -> None:
        """A folder run from before the flags was cut into CIFAR-kind 32 px patches whatever its images;
        its checkpoint resumes so, although its 40×40 images would now give ImageNet kind at 224."""
        data = folder(tmp_path / "data", *[(40, 40)] * 4)
        first = cli("main", *RUN, "--data_dir", str(data), "--patch_kind", "cifar", "--patch_size", "32",
                    "--output_dir", "run")
        assert first.returncode == 0, first.stderr
        last = tmp_path / "run/save_models/last.pt"
        state = load_checkpoint(last)
        for key in ("patch_kind", "patch_size"):
            del state["args"][key]
        save_checkpoint(state, last)
        changed = cli("main", *RUN, "--data_dir", str(data), "--patch_kind", "imagenet", "--output_dir", "run",
                      "--resume")
        assert_one_line_error(changed, "--patch_kind cifar (now imagenet)")
        resumed = cli("main", *RUN[:-6], "--max_steps", "2", "--workers", "0", "--device", "cpu",
                      "--data_dir", str(data), "--output_dir", "run", "--resume")
        assert resumed.returncode == 0, resumed.stderr
        saved = load_checkpoint(last)["args"]
        assert (saved["patch_kind"], saved["patch_size"]) == ("cifar", 32)

    @pytest.mark.parametrize("flags, fragment", [(["--patch_size", "4"], "at least 8"),
                                                 (["--patch_size", "1.5"], "whole number"),
                                                 (["--patch_kind", "mnist"], "--patch_kind")])
    def test_bad_values_are_refused_in_one_line_before_a_run_folder(self, cli, tmp_path: Path, flags: list[str],
                                                                    fragment: str) -> None:
        result = cli("main", *RUN, "--data_dir", "data", *flags, "--output_dir", "run")
        assert_one_line_error(result, "--patch_", fragment)
        assert result.returncode == 2 and not (tmp_path / "run").exists()
        assert_one_line_error(cli("evaluate", "--random_init", "--output", "x.json", *flags), fragment)

    def test_a_missing_folder_is_refused_before_a_run_folder(self, cli, tmp_path: Path) -> None:
        result = cli("main", *RUN, "--data_dir", "nowhere", "--output_dir", "run")
        assert_one_line_error(result, "nowhere")
        assert result.returncode == 2 and not (tmp_path / "run").exists()


class TestEvaluation:
    def test_follows_the_checkpoint_and_the_flags_override_it(self, cli, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
        data = folder(tmp_path / "data", *[(32, 32)] * 4)
        trained = cli("main", *RUN, "--data_dir", str(data), "--patch_size", "48", "--output_dir", "run")
        assert trained.returncode == 0, trained.stderr
        shapes = []
        features = Encoder.features
        monkeypatch.setattr(Encoder, "features", lambda self, x: shapes.append(tuple(x.shape[1:])) or features(self, x))
        checkpoint = str(tmp_path / "run/save_models/last.pt")
        result = cli("evaluate", "--ckpt", checkpoint, *EVAL)
        assert result.returncode == 0, result.stderr
        assert "patches: cifar kind, 48 px (as the checkpoint was trained)" in result.stdout
        assert shapes and set(shapes) == {(3, 48, 48)}
        saved = json.loads((tmp_path / "run/save_models/last.eval.json").read_text())
        assert (saved["patch_kind"], saved["patch_size"]) == ("cifar", 48)

        shapes.clear()
        other = cli("evaluate", "--ckpt", checkpoint, *EVAL, "--patch_kind", "imagenet", "--patch_size", "40")
        assert other.returncode == 0, other.stderr
        assert "computed features" in other.stdout and "cached" not in other.stdout  # the cache key holds them
        assert set(shapes) == {(3, 40, 40)}
        again = cli("evaluate", "--ckpt", checkpoint, *EVAL)
        assert again.returncode == 0 and "train: 8 images, cached features" in again.stdout

    def test_an_old_checkpoint_follows_its_data_and_random_init_resolves_from_the_images(self, cli,
                                                                                          tmp_path: Path) -> None:
        data = folder(tmp_path / "data", *[(40, 40)] * 4)
        old = tmp_path / "old.pt"
        torch.manual_seed(0)
        arch = {"arch": "resnet10-cifar", "hidden_dim": 64, "z_dim": 32}
        save_checkpoint({"model": Encoder(**arch).state_dict(), "args": {"data": "imagefolder",
                                                                         "data_dir": str(data), **arch}}, old)
        result = cli("evaluate", "--ckpt", str(old), *EVAL)
        assert result.returncode == 0, result.stderr
        assert "patches: cifar kind, 32 px (as the checkpoint was trained)" in result.stdout

        baseline = cli("evaluate", "--random_init", *arch_flags(arch), "--data", "imagefolder", "--data_dir",
                       str(data), "--patch_size", "16", "--output", "base.json", *EVAL)
        assert baseline.returncode == 0, baseline.stderr
        saved = json.loads((tmp_path / "base.json").read_text())
        assert (saved["patch_kind"], saved["patch_size"]) == ("imagenet", 16)


def arch_flags(arch: dict) -> list[str]:
    return [item for key, value in arch.items() for item in (f"--{key}", str(value))]
