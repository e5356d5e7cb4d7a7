"""scripts/benchmark.py measures what main.py trains: its steps are built by main.py's wiring from
main.py's flags, and the sliced step's memory is measured in fresh processes."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from conftest import assert_one_line_error
from PIL import Image

import main
from scripts import benchmark

CPU = torch.device("cpu")


def tiny(*argv: str):
    return benchmark.get_args_parser().parse_args(["--tiny", "--device", "cpu", *argv])


class TestWhatIsBenchmarked:
    def test_the_run_args_are_main_pys_with_the_sizes_and_speed_flags_over_them(self) -> None:
        run = benchmark.run_args(tiny("--precision", "bf16", "--channels_last"), {"bs": 8, "num_patches": 4}, "pil")
        official = main.get_args_parser().parse_args([])
        assert (run.bs, run.num_patches, run.augment, run.precision, run.channels_last, run.download) == \
               (8, 4, "pil", "bf16", True, False)
        method = ("arch", "hidden_dim", "z_dim", "patch_sim", "tcr", "eps", "lr", "wd", "lars_eta", "epoch", "seed")
        assert {k: getattr(run, k) for k in method} == {k: getattr(official, k) for k in method}

    def test_a_forkers_objective_is_the_one_each_training_path_runs(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """main.build_criterion is where a forker changes the method; the benchmark's steps call
        the criterion it builds, on every path, warm-up and timed steps alike."""
        calls: list[tuple[int, ...]] = []
        build_criterion = main.build_criterion

        class Recording(nn.Module):
            def __init__(self, criterion: nn.Module) -> None:
                super().__init__()
                self.criterion = criterion

            def forward(self, z: torch.Tensor, z_global: torch.Tensor):
                calls.append(tuple(z.shape))
                return self.criterion(z, z_global)

        monkeypatch.setattr(main, "build_criterion", lambda args: Recording(build_criterion(args)))
        args = tiny("--steps", "2", "--warmup", "1")
        cfg = benchmark.sizes(args)["train"]
        result = benchmark.bench_train(args, cfg, CPU)
        assert calls == [(4, 8, 32)] * 3 * 3  # (P, B, d); pil, batched, the model alone: 1 + 2 steps each
        assert result["batched"]["steps_per_s"] > 0 and result["model_alone"]["steps_per_s"] > 0


class TestSlicedStep:
    def test_slices_lower_the_peak_memory_each_measured_in_a_fresh_process(self) -> None:
        args = tiny()
        cfg = benchmark.sizes(args)["chunks"]
        result = benchmark.bench_chunks(args, cfg, CPU)
        whole, sliced = result["K=1"], result["K=5"]
        assert whole["peak_bytes"] > 0 and whole["seconds"] > 0 and sliced["seconds"] > 0
        assert result["memory_ratio"] == sliced["peak_bytes"] / whole["peak_bytes"] < 0.75


@pytest.fixture(scope="module")
def imagenet_line(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`scripts/benchmark.py --only imagenet --tiny --device cpu --imagenet_workers 1` run once, its JSON
    (B = 2, P = 2, one warm-up and one timed step per path and folder): a few seconds."""
    out = tmp_path_factory.mktemp("imagenet-line") / "imagenet.json"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EMP_SSL_CACHE", str(tmp_path_factory.mktemp("pixel-cache")))
        benchmark.main(tiny("--only", "imagenet", "--imagenet_workers", "1", "--out", str(out)))
    return json.loads(out.read_text())


class TestImageNetLine:
    """(5): ImageNet-kind patches from generated JPEG folders, worker crops against device crops."""

    def test_only_imagenet_writes_that_line_alone_with_both_folders_and_its_settings(self, imagenet_line) -> None:
        assert set(imagenet_line) == {"machine", "config", "imagenet_patches"}
        assert set(imagenet_line["config"]) >= {"imagenet"} and "train" not in imagenet_line["config"]
        im = imagenet_line["imagenet_patches"]
        settings = (im["B"], im["P"], im["workers"], im["steps"], im["patch_size"], im["device"])
        assert settings == (2, 2, 1, 1, 224, "cpu")
        assert im["threads"] == max(1, (os.cpu_count() or 1) - 1)  # the cores the one worker leaves
        for folder in ("64", "400"):
            r = im[folder]
            assert set(r) >= {"worker_crops", "device_crops", "speed_ratio", "bytes_ratio", "crop_stage"}
            assert r["worker_crops"]["patches_per_s"] > 0
            stage = r["crop_stage"]
            assert stage["threads"] == 1
            for mode in ("exact", "float"):
                assert stage[f"device_crops_{mode}"]["patches_per_s"] > 0
                assert stage[f"ratio_{mode}"] == \
                    stage[f"device_crops_{mode}"]["patches_per_s"] / stage["worker_crops"]["patches_per_s"]
        assert im["64"]["images"]["shapes"] == [[64, 64]] and im["400"]["images"]["shapes"] == [[350, 400], [400, 350]]

    def test_worker_crops_move_p_times_b_uint8_crops_of_224_pixels(self, imagenet_line) -> None:
        im = imagenet_line["imagenet_patches"]
        for folder in ("64", "400"):
            assert im[folder]["worker_crops"]["bytes_per_step"] == im["P"] * im["B"] * 3 * 224 * 224

    def test_device_crops_move_the_padded_whole_images_and_the_ratios_are_theirs(self, imagenet_line) -> None:
        """The padded uint8 batch, and at most 16 bytes per image beside it (its height and width)."""
        im = imagenet_line["imagenet_patches"]
        b = im["B"]
        moved = {f: im[f]["device_crops"]["bytes_per_step"] for f in ("64", "400")}
        assert b * 3 * 64 * 64 <= moved["64"] <= b * (3 * 64 * 64 + 16)
        assert any(b * 3 * h * w <= moved["400"] <= b * (3 * h * w + 16) for h, w in ((400, 350), (400, 400)))
        for folder in ("64", "400"):
            r = im[folder]
            assert r["device_crops"]["patches_per_s"] > 0
            assert r["speed_ratio"] == r["device_crops"]["patches_per_s"] / r["worker_crops"]["patches_per_s"]
            assert r["bytes_ratio"] == r["worker_crops"]["bytes_per_step"] / r["device_crops"]["bytes_per_step"]
            assert r["speed_target_met"] == (r["speed_ratio"] >= 3)
            assert r["bytes_target_met"] == (r["bytes_ratio"] >= 20)

    def test_equally_sized_images_are_also_timed_as_training_holds_them(self, imagenet_line) -> None:
        im = imagenet_line["imagenet_patches"]
        held = im["64"]["device_crops_held"]
        assert held["patches_per_s"] > 0 and held["bytes_per_step"] == 0  # held on the device: nothing moves
        assert im["64"]["held_speed_ratio"] == held["patches_per_s"] / im["64"]["worker_crops"]["patches_per_s"]
        assert "device_crops_held" not in im["400"]  # mixed sizes: only through the loader

    def test_the_ratios_are_checked_against_the_targets_and_printed_as_met_or_not(self) -> None:
        verdict = benchmark.against_targets({"patches_per_s": 100.0, "bytes_per_step": 1000},
                                            {"patches_per_s": 250.0, "bytes_per_step": 40})
        assert verdict == {"speed_ratio": 2.5, "speed_target_met": False, "bytes_ratio": 25.0, "bytes_target_met": True}
        im = {"targets": benchmark.IMAGENET_TARGETS,
              "64": verdict, "400": {**verdict, "speed_ratio": 3.0, "speed_target_met": True}}
        lines = benchmark.imagenet_verdicts(im)
        assert len(lines) == 4 and "2.50× (target ≥ 3×: NOT met)" in lines[0] and "3.00× (target ≥ 3×: met)" in lines[2]
        assert all("25.00× fewer (target ≥ 20×: met)" in line for line in (lines[1], lines[3]))

    def test_the_generated_folders_are_the_same_files_every_time(self, tmp_path: Path) -> None:
        first = benchmark.write_colour_folder(tmp_path / "a", ((6, 8), (8, 6)), images=4, classes=2)
        again = benchmark.write_colour_folder(tmp_path / "b", ((6, 8), (8, 6)), images=4, classes=2)
        assert [p.relative_to(tmp_path / "a") for p in first] == [p.relative_to(tmp_path / "b") for p in again]
        assert [p.read_bytes() for p in first] == [p.read_bytes() for p in again]
        assert [Image.open(p).size for p in first] == [(8, 6), (6, 8)] * 2  # (width, height), in turn
        assert len({p.parent.name for p in first}) == 2

    def test_a_bad_only_is_refused_in_one_line(self, cli) -> None:
        result = cli("scripts.benchmark", "--only", "imagenets", "--device", "cpu")
        assert_one_line_error(result, "--only", "imagenets")
