"""main.py end to end on small data: outputs, resume, the learning-rate schedule, refusals of bad input."""
from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_RUN, assert_one_line_error, run_script, write_image_folder
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torchvision import datasets

from plumbing import checkpoint

# TINY_RUN without its data: 2 epochs, 2 patches, a narrow resnet10 on one CPU core.
SCHEDULE_RUN = ["--arch", "resnet10-cifar", "--hidden_dim", "32", "--z_dim", "16", "--num_patches", "2",
                "--workers", "0", "--device", "cpu", "--epoch", "2", "--lr", "0.3"]


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def train(cli, tmp_path: Path):
    """train(*flags): main.py on the tiny configuration into tmp_path/run."""
    return lambda *extra: cli("main", *TINY_RUN, "--output_dir", str(tmp_path / "run"), *extra)


class TestTraining:
    def test_run_writes_checkpoints_record_and_events_then_resumes(self, train, tmp_path: Path) -> None:
        first = train("--epoch", "2", "--max_steps", "2")
        assert first.returncode == 0, first.stderr
        run = tmp_path / "run"
        state = torch.load(run / "save_models" / "last.pt", weights_only=False)
        assert {"model", "optimizer", "scheduler", "epoch", "step", "args", "rng"} <= set(state)
        assert state["step"] == 2 and state["args"]["arch"] == "resnet10-cifar"
        assert not any(k.startswith("module.") for k in state["model"])
        assert not (run / "save_models" / "0.pt").exists()  # the epoch (4 steps) is not complete
        record = json.loads((run / "args.json").read_text())
        assert record["args"]["num_patches"] == 4 and record["command"] and record["git_commit"]
        assert list(run.glob("events.out.tfevents.*"))

        second = train("--epoch", "2", "--resume")
        assert second.returncode == 0, second.stderr
        state = torch.load(run / "save_models" / "last.pt", weights_only=False)
        assert state["step"] == 8 and state["epoch"] == 1  # 64 images / 16 = 4 steps per epoch, 2 epochs
        assert (run / "save_models" / "0.pt").exists() and (run / "save_models" / "1.pt").exists()
        assert state["scheduler"]["last_epoch"] == 8
        assert len(json.loads((run / "args.json").read_text())["resumes"]) == 1

    def test_git_is_asked_once_for_the_record_and_the_banner(self, train, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
        git_calls, run = [], subprocess.run

        def counting_run(argv: list[str], *args, **kwargs) -> subprocess.CompletedProcess:
            git_calls.extend(argv[:1] if argv[0] == "git" else [])
            return run(argv, *args, **kwargs)

        monkeypatch.setattr(subprocess, "run", counting_run)
        checkpoint.git_commit.cache_clear()
        checkpoint.git_commit()
        one_answer = len(git_calls)  # git rev-parse and git status, or one failed call without git
        checkpoint.git_commit.cache_clear()
        git_calls.clear()
        result = train("--max_steps", "1")
        assert result.returncode == 0, result.stderr
        assert len(git_calls) == one_answer >= 1
        assert json.loads((tmp_path / "run" / "args.json").read_text())["git_commit"] in result.stdout

    def test_default_run_folder_follows_the_official_naming(self, cli, tmp_path: Path) -> None:
        result = cli("main", *TINY_RUN, "--max_steps", "1", "--epoch", "1", "--msg", "t")
        assert result.returncode == 0, result.stderr
        assert (tmp_path / "logs/EMP-SSL-Training/patchsim200_numpatch4_bs16_lr0.3_t/save_models/last.pt").exists()


def cosine_lr(k: int, total: int, lr: float = 0.3) -> float:
    """The learning rate of step k (from 0) of a cosine schedule over total steps: ½·lr·(1 + cos(πk/T))."""
    return 0.5 * lr * (1 + math.cos(math.pi * k / total))


def logged_lrs(run: Path) -> list[float]:
    """The train/lr scalars of a run folder's TensorBoard events, in step order: the rate each step used."""
    events = EventAccumulator(str(run))
    events.Reload()
    return [event.value for event in sorted(events.Scalars("train/lr"), key=lambda event: event.step)]


class TestSchedule:
    """T = steps per epoch × epochs from the real data set; the official code fixes T = 50,000/bs × epochs."""

    @pytest.fixture
    def cifar10_length(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """torchvision's CIFAR-10 with its real lengths (50,000 and 10,000 images) but no files: every
        image is one random 32×32 picture, broadcast without copying."""
        picture = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)  # (32, 32, 3)

        def no_files(self, root, train=True, transform=None, target_transform=None, download=False) -> None:
            datasets.VisionDataset.__init__(self, root, transform=transform, target_transform=target_transform)
            length = 50_000 if train else 10_000
            self.data = np.broadcast_to(picture, (length, 32, 32, 3))  # (N, 32, 32, 3), one picture in memory
            self.targets = [i % 10 for i in range(length)]
            self.classes = [str(c) for c in range(10)]

        monkeypatch.setattr(datasets.CIFAR10, "__init__", no_files)

    def test_cosine_over_cifar_length(self, cli, tmp_path: Path, cifar10_length: None) -> None:
        result = cli("main", *SCHEDULE_RUN, "--data", "cifar10", "--data_dir", str(tmp_path / "cifar"), "--bs", "100",
                     "--max_steps", "2", "--output_dir", str(tmp_path / "run"))
        assert result.returncode == 0, result.stderr
        total = 500 * 2  # 50,000 images / 100 per step, 2 epochs
        assert logged_lrs(tmp_path / "run") == pytest.approx([cosine_lr(k, total) for k in range(2)], rel=1e-7)
        state = torch.load(tmp_path / "run/save_models/last.pt", weights_only=False)
        assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(cosine_lr(2, total), rel=1e-12)

    def test_cosine_over_every_step_of_a_folder_data_set(self, cli, tmp_path: Path) -> None:
        images = write_image_folder(tmp_path / "images", sizes=[(32, 32)] * 6)  # 12 images
        result = cli("main", *SCHEDULE_RUN, "--data", "imagefolder", "--data_dir", str(images), "--bs", "4",
                     "--output_dir", str(tmp_path / "run"))
        assert result.returncode == 0, result.stderr
        total = 3 * 2  # 12 images / 4 per step, 2 epochs
        assert logged_lrs(tmp_path / "run") == pytest.approx([cosine_lr(k, total) for k in range(total)], rel=1e-6)
        state = torch.load(tmp_path / "run/save_models/last.pt", weights_only=False)
        assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0, abs=1e-12)  # annealed to 0 at T


class TestBadInput:
    @pytest.mark.parametrize("flags,fragment", [
        (["--num_patches", "1"], "--num_patches"),
        (["--bs", "1"], "--bs"),
        (["--eps", "0"], "--eps"),
        (["--data", "mnist"], "--data"),
        (["--arch", "vgg"], "--arch"),
        (["--optimizer", "sgd", "--lars_eta", "0.01"], "--lars_eta"),
        (["--optimizer", "adam"], "--optimizer"),
    ])
    def test_refused_with_one_line_and_nothing_written(self, train, tmp_path: Path, flags: list[str],
                                                       fragment: str) -> None:
        assert_one_line_error(train(*flags), fragment)
        assert not (tmp_path / "run").exists()

    def test_existing_run_is_not_overwritten(self, train, tmp_path: Path) -> None:
        assert train("--max_steps", "1").returncode == 0
        before = tree(tmp_path / "run")
        assert_one_line_error(train("--max_steps", "1"), "--resume")
        assert tree(tmp_path / "run") == before

    def test_resume_with_other_run_flags_is_refused(self, train) -> None:
        assert train("--max_steps", "1").returncode == 0
        assert_one_line_error(train("--lr", "0.1", "--resume"), "--lr")
        assert_one_line_error(train("--optimizer", "sgd", "--resume"), "--optimizer lars (now sgd)")
        assert_one_line_error(train("--optimizer", "adamw", "--lr", "0.3", "--resume"), "--optimizer lars (now adamw)")

    def test_folder_data_without_subfolders(self, train, tmp_path: Path) -> None:
        (tmp_path / "images").mkdir()
        assert_one_line_error(train("--data", "imagefolder", "--data_dir", str(tmp_path / "images")), "train")
        assert not (tmp_path / "run").exists()

    def test_cifar_missing_and_not_downloadable(self, train, tmp_path: Path) -> None:
        result = train("--data", "cifar10", "--data_dir", str(tmp_path / "cifar"), "--no-download")
        assert_one_line_error(result, "--data_dir", "--data synthetic")
        assert not (tmp_path / "run").exists()


class TestCommandLine:
    def test_real_process_prints_one_line_and_exits_2(self, tmp_path: Path) -> None:
        result = run_script("main.py", "--eps", "-1", cwd=tmp_path)
        assert result.returncode == 2
        assert_one_line_error(result, "--eps")


def test_cpu_note_names_a_cpu_sized_run_for_gpu_sized_networks_only() -> None:
    """The paper's defaults on the CPU get one line naming a CPU-sized run; the small network and
    any GPU run get none."""
    import main as entry
    args = entry.get_args_parser().parse_args([])  # the paper's defaults: resnet18-cifar, P 100, B 100
    note = entry.cpu_note(args, torch.device("cpu"))
    assert note is not None and "10,000 patches a step" in note and "--arch resnet10-cifar" in note
    assert entry.cpu_note(args, torch.device("cuda")) is None
    small = entry.get_args_parser().parse_args(["--arch", "resnet10-cifar"])
    assert entry.cpu_note(small, torch.device("cpu")) is None


def test_a_checkpoint_older_than_loss_resumes_as_emp_only() -> None:
    """A checkpoint written before --loss existed (no loss, no VICReg coefficients in its args) was
    trained with EMP-SSL's objective: resuming it with the default is no change, with vicreg it is."""
    import main as entry
    emp = entry.get_args_parser().parse_args([])
    old = {k: v for k, v in vars(emp).items() if k not in ("loss", "sim_coeff", "std_coeff", "cov_coeff")}
    assert entry.changed_flags(old, emp) == ""
    vicreg = entry.get_args_parser().parse_args(["--loss", "vicreg"])
    assert "--loss emp (now vicreg)" in entry.changed_flags(old, vicreg)
