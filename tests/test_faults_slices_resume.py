"""Faults that end in one line and lose nothing: impossible --patch_chunks slices, a memory plan that
cannot be made, resumes from a folder without last.pt or with a foreign file there, and a subset
that an unbalanced class cannot give."""
from __future__ import annotations

import re
import shlex
import shutil
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_RUN, assert_one_line_error, write_image_folder

import engine
from dataset.catalog import class_balanced_subset, largest_balanced_subset
from plumbing import checkpoint as ckpt
from plumbing.errors import UserError
from plumbing.memory_plan import GIB, MemoryPlan, check_slices, choose_chunks, plan_memory, slicing, whole_slices

# The run: 4 patches of 8 images, 32 patches per step.
T = ["--data", "synthetic", "--arch", "resnet10-cifar", "--hidden_dim", "64", "--z_dim", "32", "--bs", "8",
     "--num_patches", "4", "--epoch", "1", "--max_steps", "3", "--device", "cpu", "--workers", "0"]


def chunk_sizes(n: int, k: int) -> list[int]:
    """What torch really cuts: the sizes of x.chunk(k) for x of n rows."""
    return [len(part) for part in torch.arange(n).chunk(k)]


class TestSlices:
    def test_the_slices_are_those_torch_chunk_gives(self) -> None:
        for n in range(4, 70):
            for k in range(1, n + 3):
                sizes = chunk_sizes(n, k)
                assert slicing(n, k) == (len(sizes), sizes[0], sizes[-1]), (n, k)

    def test_a_k_runs_as_its_slices_or_is_refused_naming_the_nearest_that_works(self) -> None:
        """Against brute force: a K is kept (as the number of slices x.chunk gives) exactly when every
        slice holds two patches; a refusal names the most slices, at most K, that do."""
        for n in range(4, 70):
            valid = {len(chunk_sizes(n, k)) for k in range(1, n + 1) if min(chunk_sizes(n, k)) >= 2}
            for k in range(1, n + 3):
                sizes = chunk_sizes(n, k)
                if min(sizes) >= 2:
                    assert check_slices(k, n) == len(sizes)
                    continue
                nearest = max(c for c in valid if c <= k)
                with pytest.raises(UserError, match=rf"use --patch_chunks {nearest} \(at most {max(valid)} slices"):
                    check_slices(k, n)
                assert whole_slices(n, k) == nearest
                assert max(valid) <= n // 2

    def test_auto_is_the_fewest_slices_that_fit_from_a_formula(self) -> None:
        """smallest_fit against a search over every K, on plans whose room varies around each slice size."""
        for n_images, patches in ((5, 5), (8, 4), (7, 3), (13, 2)):
            n = n_images * patches
            for room in range(n + 2):
                plan = MemoryPlan(n_images, patches, per_patch=1.0, fixed=0.0, available=(room + 0.5) / 0.9,
                                  where="this GPU", measured=True)
                fitting = [len(chunk_sizes(n, k)) for k in range(1, n + 1)
                           if min(chunk_sizes(n, k)) >= 2 and plan.fits(k)]
                assert plan.smallest_fit() == min(fitting, default=None), (n, room)

    def test_auto_answers_at_once_for_a_hundred_million_patches(self) -> None:
        plan = MemoryPlan(8, 100_000_000, per_patch=1e5, fixed=1e9, available=64 * GIB, where="this machine",
                          measured=False)
        tick = time.perf_counter()
        k = plan.smallest_fit()
        assert time.perf_counter() - tick < 0.1
        assert k is not None and plan.fits(k) and not plan.fits(k - 1) and min(slicing(plan.patches, k)[1:]) >= 2
        huge = MemoryPlan(8, 100_000_000, per_patch=1e5, fixed=2e13, available=64 * GIB, where="this machine",
                          measured=False)
        tick = time.perf_counter()
        with pytest.raises(UserError, match="does not fit even in slices of two patches.*lower --bs or --num_patches"):
            choose_chunks("auto", huge)
        assert time.perf_counter() - tick < 0.1

    @pytest.mark.parametrize("k,nearest", [("32", 16), ("100", 16)])
    def test_slices_of_one_patch_are_refused_before_anything_is_written(self, cli, tmp_path: Path, k: str,
                                                                        nearest: int) -> None:
        result = cli("main", *T, "--patch_chunks", k, "--output_dir", str(tmp_path / "run"))
        assert_one_line_error(result, f"--patch_chunks {k}", "32 patches", "BatchNorm",
                              f"use --patch_chunks {nearest}")
        assert not (tmp_path / "run").exists()

    def test_a_k_that_torch_cuts_into_fewer_slices_runs_and_reports_those(self, cli, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
        """--patch_chunks 7 of 24 patches: x.chunk(7) gives 6 slices of 4; the plan says 6 and 6 run."""
        ran = []
        sliced = engine.backward_by_slices

        def count(model, criterion, x, num_patches, amp_dtype, chunks):
            ran.append((chunks, len(x.chunk(chunks))))
            return sliced(model, criterion, x, num_patches, amp_dtype, chunks)

        monkeypatch.setattr(engine, "backward_by_slices", count)
        result = cli("main", *T, "--bs", "6", "--max_steps", "1", "--patch_chunks", "7",
                     "--output_dir", str(tmp_path / "run"))
        assert result.returncode == 0, result.stderr
        assert "using K = 6: --patch_chunks 7 runs as x.chunk(7): 6 slices of 4 patches" in result.stdout
        assert ran == [(6, 6)]


class TestMeasurement:
    @pytest.mark.parametrize("error", [
        RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                     "you tried to allocate 262144000 bytes."),
        torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    ])
    def test_a_measurement_out_of_memory_is_one_line_naming_a_smaller_step(
            self, cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: RuntimeError) -> None:
        def fail(*args: object) -> None:
            raise error

        monkeypatch.setattr("plumbing.memory_plan.activation_bytes", fail)
        result = cli("main", *T, "--patch_chunks", "auto", "--output_dir", str(tmp_path / "run"))
        assert_one_line_error(result, "measuring the memory of a step ran out of memory", "8 images", "lower --bs")
        assert not (tmp_path / "run").exists()

    def test_another_runtime_error_of_the_measurement_is_not_taken_for_memory(
            self, monkeypatch: pytest.MonkeyPatch) -> None:
        def fail(*args: object) -> None:
            raise RuntimeError("Expected all tensors to be on the same device")

        monkeypatch.setattr("plumbing.memory_plan.activation_bytes", fail)
        with pytest.raises(RuntimeError, match="same device"):
            plan_memory(torch.nn.Linear(2, 2), 1, torch.randn(4, 3, 8, 8), 2, None)

    def test_a_hundred_million_patches_are_refused_in_seconds(self, cli, tmp_path: Path) -> None:
        tick = time.perf_counter()
        result = cli("main", *T, "--num_patches", "100000000", "--patch_chunks", "auto",
                     "--output_dir", str(tmp_path / "run"))
        assert_one_line_error(result, "does not fit even in slices of two patches", "800,000,000 per step")
        assert time.perf_counter() - tick < 60 and not (tmp_path / "run").exists()


def a_run(cli, run: Path) -> Path:
    """TINY_RUN with 2 steps per epoch, stopped after the first epoch: save_models/0.pt and last.pt."""
    flags = [*TINY_RUN, "--train_subset", "32", "--epoch", "2", "--max_steps", "2", "--output_dir", str(run)]
    assert cli("main", *flags).returncode == 0
    return run / ckpt.CHECKPOINT_DIR


class TestResume:
    def test_without_last_pt_the_refusal_gives_the_cp_that_continues_and_it_does(self, cli, tmp_path: Path) -> None:
        models = a_run(cli, tmp_path / "run")
        (models / "last.pt").unlink()
        epoch0 = (models / "0.pt").read_bytes()
        flags = [*TINY_RUN, "--train_subset", "32", "--epoch", "2", "--output_dir", str(tmp_path / "run")]
        refused = cli("main", *flags)
        assert_one_line_error(refused, "no last.pt", "newest epoch checkpoint (0.pt)", "then pass --resume")
        refused = cli("main", *flags, "--resume")
        assert_one_line_error(refused, "--resume", "has no save_models/last.pt", "then run this command again")
        command = shlex.split(re.search(r"`([^`]*)`", refused.stderr).group(1))
        assert command == ["cp", str(models / "0.pt"), str(models / "last.pt")]
        assert sorted(p.name for p in models.iterdir()) == ["0.pt"] and (models / "0.pt").read_bytes() == epoch0
        shutil.copyfile(command[1], command[2])
        resumed = cli("main", *flags, "--resume")
        assert resumed.returncode == 0, resumed.stderr
        assert f"resuming from step 2 of epoch 0 (last.pt of {tmp_path / 'run'})" in resumed.stdout
        assert torch.load(models / "last.pt", weights_only=False)["step"] == 4 and (models / "1.pt").is_file()

    def test_the_newest_epoch_checkpoint_is_the_highest_epoch(self, tmp_path: Path) -> None:
        models = tmp_path / ckpt.CHECKPOINT_DIR
        models.mkdir()
        for name in ("2.pt", "9.pt", "10.pt", "export.pt", ".10.pt.tmp7"):
            (models / name).write_bytes(b"")
        assert ckpt.newest_epoch_checkpoint(tmp_path) == models / "10.pt"
        assert ckpt.newest_epoch_checkpoint(tmp_path / "none") is None

    @pytest.mark.parametrize("state,fragments", [
        ({"backbone": {}, "pre_feature": {}, "stem": "cifar", "hidden_dim": 64, "source": "logs/x/29.pt"},
         ["is an exported backbone (scripts/export.py, from logs/x/29.pt)", "cannot be resumed"]),
        ({"module.backbone.conv1.weight": torch.zeros(2)},
         ["is an official state dict", "cannot be resumed", "evaluate.py --model_path"]),
        ({"lr": 0.3, "epochs": 5}, ["is a dict of epochs, lr", "not a training checkpoint", "cannot be resumed"]),
    ])
    @pytest.mark.parametrize("with_epoch", [False, True])
    def test_a_foreign_file_at_last_pt_is_named_and_kept(self, cli, tmp_path: Path, state: dict,
                                                         fragments: list[str], with_epoch: bool) -> None:
        models = tmp_path / "run" / ckpt.CHECKPOINT_DIR
        models.mkdir(parents=True)
        torch.save(state, models / "last.pt")
        if with_epoch:
            (models / "3.pt").write_bytes(b"an epoch checkpoint")
        before = (models / "last.pt").read_bytes()
        result = cli("main", *T, "--resume", "--output_dir", str(tmp_path / "run"))
        then = ["move it out of save_models/", f"cp {models / '3.pt'} {models / 'last.pt'}"] if with_epoch else \
               ["start a run in another --output_dir"]
        assert_one_line_error(result, str(models / "last.pt"), *fragments, *then)
        assert "KeyError" not in result.stderr and (models / "last.pt").read_bytes() == before
        assert sorted(p.name for p in models.iterdir()) == (["3.pt", "last.pt"] if with_epoch else ["last.pt"])

    def test_evaluation_names_an_export_too(self, tmp_path: Path) -> None:
        torch.save({"backbone": {}, "pre_feature": {}, "stem": "cifar", "source": "29.pt"}, tmp_path / "e.pt")
        with pytest.raises(UserError, match="exported backbone .scripts/export.py, from 29.pt., not a training"):
            ckpt.read_checkpoint(tmp_path / "e.pt")


class TestUnbalancedSubset:
    def test_the_largest_subset_is_what_a_balanced_draw_can_give(self) -> None:
        for counts in ([5, 2], [2, 5], [3, 3, 1], [4, 2, 2, 7], [1], [6, 6]):
            targets = [c for c, count in enumerate(counts) for _ in range(count)]
            works = [n for n in range(1, len(targets) + 1) if self.draws(targets, n)]
            assert works == list(range(len(counts), largest_balanced_subset(targets) + 1)), counts

    @staticmethod
    def draws(targets: list[int], n: int) -> bool:
        try:
            return len(class_balanced_subset(targets, n)) == n
        except UserError:
            return False

    def test_main_names_the_class_and_the_largest_train_subset(self, cli, tmp_path: Path) -> None:
        """Class 'a' has 5 images and 'b' 2: --train_subset 6 takes 3 of each; 5 is the most that works."""
        root = write_image_folder(tmp_path / "images", classes=("a",), sizes=[(32, 32)] * 5)
        write_image_folder(root, classes=("b",), sizes=[(32, 32)] * 2)
        flags = ["--data", "imagefolder", "--data_dir", str(root), *T[2:8], "--bs", "2", "--num_patches", "2",
                 "--max_steps", "1", "--device", "cpu", "--workers", "0"]
        result = cli("main", *flags, "--train_subset", "6", "--output_dir", str(tmp_path / "run"))
        assert_one_line_error(result, "--train_subset 6 takes 3 images of class 'b', which has only 2",
                              "use --train_subset 5 or less")
        assert not (tmp_path / "run").exists()
        assert cli("main", *flags, "--train_subset", "5", "--output_dir", str(tmp_path / "run")).returncode == 0
