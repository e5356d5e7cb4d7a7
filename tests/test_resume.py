"""Runs that survive: exact resume, kills at the worst moment, SIGTERM, a full disk, NaN losses."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY_RUN, assert_one_line_error

from loss import EMPSSLLoss
from plumbing import checkpoint

EXACT = [*TINY_RUN, "--deterministic", "--epoch", "2", "--train_subset", "32"]  # 2 steps per epoch, 4 in all


@pytest.fixture(autouse=True)
def restore_determinism():
    yield
    torch.use_deterministic_algorithms(False)


# `python -c KILL_AT_SAVE N flags…` runs main.py with flags and SIGKILLs itself on the N-th write of
# a last.pt, after the temporary file is written and flushed and before the rename that publishes it.
KILL_AT_SAVE = f"""
import os, runpy, signal, sys
real_replace, saves, kill_at = os.replace, [], int(sys.argv[1])

def replace(src, dst):
    if os.path.basename(dst) == "last.pt":
        saves.append(dst)
        if len(saves) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst)

os.replace = replace
sys.path.insert(0, {str(ROOT)!r})
sys.argv = [{str(ROOT / "main.py")!r}, *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "save_models" / "last.pt", weights_only=False)["model"]


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def last_bytes(run: Path) -> bytes:
    return (run / "save_models" / "last.pt").read_bytes()


class TestExactResume:
    def test_epoch_and_mid_epoch_resume_equal_the_uninterrupted_run(self, cli, tmp_path: Path) -> None:
        assert cli("main", *EXACT, "--output_dir", str(tmp_path / "straight")).returncode == 0
        straight = weights(tmp_path / "straight")
        for stop in ("2", "1"):  # an epoch boundary, then mid-epoch
            run = tmp_path / f"stop{stop}"
            assert cli("main", *EXACT, "--output_dir", str(run), "--max_steps", stop).returncode == 0
            assert torch.load(run / "save_models" / "last.pt", weights_only=False)["step"] == int(stop)
            assert cli("main", *EXACT, "--output_dir", str(run), "--resume").returncode == 0
            assert_identical(weights(run), straight)
        assert_identical(torch.load(tmp_path / "stop1/save_models/1.pt", weights_only=False)["model"], straight)


class TestCrashes:
    def test_sigkill_between_write_and_rename_keeps_the_previous_checkpoint(self, cli, tmp_path: Path) -> None:
        run = tmp_path / "run"
        flags = [*EXACT, "--output_dir", str(run), "--save_every_steps", "1"]
        kill_at = "2"  # the save after step 2
        killed = subprocess.run([sys.executable, "-c", KILL_AT_SAVE, kill_at, *flags], cwd=tmp_path,
                                capture_output=True, text=True, timeout=300)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        assert torch.load(run / "save_models" / "last.pt", weights_only=False)["step"] == 1
        assert list((run / "save_models").glob(".last.pt.tmp*"))  # the half-done save, never renamed
        assert cli("main", *flags, "--resume").returncode == 0
        assert not list((run / "save_models").glob(".*.tmp*"))
        assert cli("main", *EXACT, "--output_dir", str(tmp_path / "straight")).returncode == 0
        assert_identical(weights(run), weights(tmp_path / "straight"))

    @pytest.mark.parametrize("workers,whole_group,save_every", [("0", False, ["--save_every_steps", "1"]),
                                                                ("2", True, ["--save_every_steps", "1"]),
                                                                ("2", True, ["--log_every", "3"])])
    def test_sigterm_saves_at_a_step_boundary_and_exits_143(self, tmp_path: Path, workers: str,
                                                            whole_group: bool, save_every: list[str]) -> None:
        """A cluster's SIGTERM reaches the main process, or every process of the job (the workers too,
        which must keep serving batches until the step under way ends). The run exits with 128 + 15,
        not as a finished run."""
        run = tmp_path / "run"
        flags = [*TINY_RUN, "--epoch", "100", *save_every, "--workers", workers, "--output_dir", str(run)]
        proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), *flags], cwd=tmp_path, start_new_session=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not (run / "save_models" / "last.pt").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if whole_group:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 143 and "Traceback" not in stderr, stderr
        assert "SIGTERM: stopped at step" in stdout and "done:" not in stdout
        state = torch.load(run / "save_models" / "last.pt", weights_only=False)
        assert 1 <= state["step"] < 400 and state["scheduler"]["last_epoch"] == state["step"]

    @pytest.mark.parametrize("augment,workers", [("pil", "2"), ("batched", "0")])
    def test_ctrl_c_before_the_first_save_saves_and_exits_130_with_one_line(self, tmp_path: Path, augment: str,
                                                                             workers: str) -> None:
        """Ctrl-C reaches the whole foreground process group (DataLoader workers included) as soon
        as the run folder exists, before any checkpoint: the run still stops at a step boundary
        with last.pt written, says so without a traceback, and exits with 128 + 2."""
        run = tmp_path / "run"
        flags = [*TINY_RUN, "--epoch", "100", "--log_every", "3", "--augment", augment, "--workers", workers,
                 "--output_dir", str(run)]
        proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), *flags], cwd=tmp_path, start_new_session=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not (run / "args.json").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not (run / "save_models" / "last.pt").exists()
        os.killpg(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 130, stderr
        assert "Traceback" not in stderr and "Ctrl-C: stopping after this step" in stderr
        state = torch.load(run / "save_models" / "last.pt", weights_only=False)
        assert f"SIGINT: stopped at step {state['step']}, last.pt saved" in stdout and "done:" not in stdout
        assert 1 <= state["step"] < 400  # after the step it came in, not at a read (every --log_every steps)

    def test_ctrl_c_in_an_evaluation_is_one_line(self, tmp_path: Path) -> None:
        flags = ["--random_init", "--output", str(tmp_path / "eval.json"), "--data", "synthetic", "--arch",
                 "resnet10-cifar", "--hidden_dim", "64", "--z_dim", "32", "--device", "cpu", "--workers", "0"]
        proc = subprocess.Popen([sys.executable, str(ROOT / "evaluate.py"), *flags], cwd=tmp_path,
                                start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = proc.stdout.readline()  # the banner: the evaluation has started
        assert line.startswith("{"), line
        time.sleep(1)
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 130 and "Traceback" not in stderr, stderr
        assert stderr.strip().splitlines()[-1].startswith("error: interrupted")
        assert not (tmp_path / "eval.json").exists() and not list(tmp_path.glob("*.tmp*"))

    def test_full_disk_keeps_the_previous_checkpoint_and_says_so(self, cli, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
        run = tmp_path / "run"
        assert cli("main", *TINY_RUN, "--output_dir", str(run), "--max_steps", "1").returncode == 0
        before = last_bytes(run)

        def full_disk(obj: object, path: Path) -> None:
            Path(path).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(checkpoint.torch, "save", full_disk)
        result = cli("main", *TINY_RUN, "--output_dir", str(run), "--max_steps", "2", "--resume")
        assert_one_line_error(result, "No space left", "intact")
        assert last_bytes(run) == before
        assert not list((run / "save_models").glob(".*.tmp*"))


class TestNonFiniteLoss:
    @pytest.fixture
    def nan_at_step_2(self, monkeypatch: pytest.MonkeyPatch) -> None:
        forward, calls = EMPSSLLoss.forward, []

        def poisoned(self, z, z_global):
            loss, parts = forward(self, z, z_global)
            calls.append(1)
            return (loss * float("nan"), parts) if len(calls) == 2 else (loss, parts)

        monkeypatch.setattr(EMPSSLLoss, "forward", poisoned)

    def test_stops_with_step_and_components_keeping_the_checkpoint(self, cli, tmp_path: Path,
                                                                   nan_at_step_2: None) -> None:
        run = tmp_path / "run"
        result = cli("main", *TINY_RUN, "--output_dir", str(run), "--save_every_steps", "1")
        assert_one_line_error(result, "step 2", "invariance", "coding_rate", "--skip_nonfinite")
        assert torch.load(run / "save_models" / "last.pt", weights_only=False)["step"] == 1

    def test_skip_nonfinite_skips_the_bad_step(self, cli, tmp_path: Path, nan_at_step_2: None) -> None:
        result = cli("main", *TINY_RUN, "--output_dir", str(tmp_path / "run"), "--epoch", "1",
                     "--skip_nonfinite", "1")
        assert result.returncode == 0, result.stderr
        assert "step skipped" in result.stderr
        state = torch.load(tmp_path / "run/save_models/last.pt", weights_only=False)
        assert state["step"] == 4 and all(torch.isfinite(v).all() for v in state["model"].values())
