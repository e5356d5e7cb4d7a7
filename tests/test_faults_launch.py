"""Faults at a run's start and stop end in one line and lose nothing: torchrun's variables checked
first and refused by every rank that has them wrong, a rank that never joins named within
--dist_timeout, SIGTERM and Ctrl-C honoured after the step they come in, and Ctrl-C while an entry
point is still importing."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY_RUN, Result, assert_one_line_error, run_script
from test_distributed import free_port

import engine
from plumbing import distributed
from plumbing.distributed import TORCHRUN_VARIABLES

RANK_1 = {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
          "MASTER_PORT": "29500"}  # what torchrun gives the second of two processes on one machine


@pytest.fixture
def launch_env(monkeypatch: pytest.MonkeyPatch):
    """launch_env(**variables): exactly these of torchrun's variables are set (the others unset)."""
    def set_env(**variables: str) -> None:
        for name in TORCHRUN_VARIABLES:
            monkeypatch.delenv(name, raising=False)
        for name, value in variables.items():
            monkeypatch.setenv(name, value)
    return set_env


class TestLaunchVariables:
    @pytest.mark.parametrize("variables,fragments", [
        ({"LOCAL_RANK": "3"}, ("LOCAL_RANK=3", "which is not set: one process", "unset them")),
        ({"RANK": "1"}, ("RANK=1", "below WORLD_SIZE, which is not set")),
        ({"WORLD_SIZE": "2", "RANK": "0"}, ("WORLD_SIZE=2", "LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and "
                                                           "MASTER_PORT are not set", "launch with torchrun")),
        ({"WORLD_SIZE": "two"}, ("WORLD_SIZE='two' is not an integer",)),
        ({"WORLD_SIZE": "0"}, ("WORLD_SIZE=0 must be at least 1",)),
        ({**RANK_1, "RANK": "2"}, ("RANK=2 must be from 0 to 1 (below WORLD_SIZE=2)",)),
        ({**RANK_1, "LOCAL_RANK": "-1"}, ("LOCAL_RANK=-1", "below LOCAL_WORLD_SIZE=2")),
        ({**RANK_1, "LOCAL_WORLD_SIZE": "3"}, ("LOCAL_WORLD_SIZE=3", "at most WORLD_SIZE=2")),
        ({**RANK_1, "MASTER_ADDR": ""}, ("MASTER_ADDR is not set",)),
        ({**RANK_1, "MASTER_PORT": "http"}, ("MASTER_PORT='http' is not an integer",)),
        ({**RANK_1, "MASTER_PORT": "70000"}, ("MASTER_PORT=70000", "a TCP port")),
    ])
    def test_every_rank_refuses_in_one_line_naming_the_variable(self, cli, launch_env, tmp_path: Path,
                                                                 variables: dict[str, str],
                                                                 fragments: tuple[str, ...]) -> None:
        """Before any flag (--bs 1 is wrong too) and before anything is written; a local rank other
        than 0 says so as well, since the fault may be its own."""
        launch_env(**variables)
        assert_one_line_error(cli("main", *TINY_RUN, "--bs", "1", "--output_dir", "run"), *fragments)
        assert not (tmp_path / "run").exists()

    def test_a_leftover_local_rank_is_refused_by_the_real_process(self, launch_env, tmp_path: Path) -> None:
        """It used to silence every error: the process exited with 2 and printed nothing."""
        launch_env(LOCAL_RANK="3")
        result = run_script("main.py", *TINY_RUN, "--bs", "1", "--output_dir", "run", cwd=tmp_path)
        assert result.returncode == 2
        assert_one_line_error(result, "LOCAL_RANK=3")

    def test_outside_a_launch_a_bad_flag_is_always_said(self, cli, launch_env) -> None:
        launch_env(LOCAL_RANK="3")
        assert_one_line_error(cli("main", *TINY_RUN, "--bs", "x"), "--bs", "invalid int value")

    @pytest.mark.parametrize("variables", [{"LOCAL_RANK": "0", "RANK": "0"},
                                           {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0",
                                            "LOCAL_WORLD_SIZE": "1"}], ids=["leftover zeros", "one of one"])
    def test_variables_that_say_one_process_train_one(self, cli, launch_env, tmp_path: Path,
                                                      variables: dict[str, str]) -> None:
        launch_env(**variables)
        result = cli("main", *TINY_RUN, "--max_steps", "1", "--output_dir", "run")
        assert result.returncode == 0, result.stderr
        assert "× 1 processes" in result.stdout

    def test_a_local_rank_without_a_gpu_is_named(self, launch_env, monkeypatch: pytest.MonkeyPatch) -> None:
        launch_env(**RANK_1)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
        with pytest.raises(distributed.UserError, match="2 processes on this machine but it has 1 GPUs, one for each "
                                                        "LOCAL_RANK below 1: use --nproc_per_node 1"):
            distributed.setup(torch.device("cuda"), "auto", 1.0, sync_bn=False)


class TestDistTimeout:
    @pytest.mark.parametrize("value", ["inf", "nan", "-inf", "0", "-1", "1e13"])
    def test_only_a_finite_positive_timeout(self, cli, tmp_path: Path, value: str) -> None:
        result = cli("main", *TINY_RUN, f"--dist_timeout={value}", "--output_dir", "run")
        assert_one_line_error(result, "--dist_timeout must be a positive, finite number of minutes")
        assert not (tmp_path / "run").exists()


def join_alone(cli, launch_env, rank: int, world: int) -> tuple[Result, float]:
    """main.py as `rank` of `world` processes whose others never start, --dist_timeout 0.05 (3 s):
    (its result, seconds it took)."""
    launch_env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    start = time.monotonic()
    result = cli("main", *TINY_RUN, "--bs", "12", "--dist_timeout", "0.05", "--output_dir", "run")
    return result, time.monotonic() - start


class TestARankThatNeverJoins:
    def test_rank_0_names_the_ranks_that_did_not_come_within_the_timeout(self, cli, launch_env,
                                                                           tmp_path: Path) -> None:
        result, seconds = join_alone(cli, launch_env, rank=0, world=3)
        assert_one_line_error(result, "ranks 1, 2 did not join within --dist_timeout (0.05 minutes)",
                              "MASTER_PORT", "torchrun")
        assert 3 <= seconds < 30 and not (tmp_path / "run").exists()

    def test_a_rank_whose_store_never_comes_says_so(self, cli, launch_env, tmp_path: Path) -> None:
        result, seconds = join_alone(cli, launch_env, rank=1, world=2)
        assert_one_line_error(result, "could not reach this launch's store at 127.0.0.1:",
                              "within --dist_timeout (0.05 minutes)", "start rank 0")
        assert 3 <= seconds < 30 and not (tmp_path / "run").exists()


@pytest.fixture
def signal_in_step(monkeypatch: pytest.MonkeyPatch):
    """signal_in_step(signum, step): this process sends itself signum as its step `step` begins
    (counted from 1 in this process, once); the step then runs to its end."""
    def arm(signum: int, step: int) -> None:
        real_step, calls = engine.train_step, []

        def train_step(*args, **kwargs):
            calls.append(1)
            if len(calls) == step:
                os.kill(os.getpid(), signum)  # the handler runs now, inside the step
            return real_step(*args, **kwargs)
        monkeypatch.setattr(engine, "train_step", train_step)
    return arm


@pytest.fixture
def restore_determinism():
    yield
    torch.use_deterministic_algorithms(False)


class TestAStopAfterTheStep:
    # 8 steps an epoch, the step values read every 1000 steps: before, a stop waited for the epoch's end
    FLAGS = [*TINY_RUN, "--train_subset", "128", "--epoch", "3", "--log_every", "1000", "--deterministic"]

    @pytest.mark.parametrize("signum,status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
    def test_a_signal_during_step_3_stops_after_it_and_resume_continues_exactly(
            self, cli, signal_in_step, restore_determinism, tmp_path: Path, signum: int, status: int) -> None:
        signal_in_step(signum, 3)
        stopped = cli("main", *self.FLAGS, "--output_dir", "run")
        assert stopped.returncode == status and "Traceback" not in stopped.stderr, stopped.stderr
        name = signal.Signals(signum).name
        assert f"{name}: stopped at step 3, last.pt saved" in stopped.stdout and "done:" not in stopped.stdout
        assert torch.load(tmp_path / "run/save_models/last.pt", weights_only=False)["step"] == 3
        assert cli("main", *self.FLAGS, "--output_dir", "run", "--resume", "--max_steps", "5").returncode == 0
        assert cli("main", *self.FLAGS, "--output_dir", "straight", "--max_steps", "5").returncode == 0
        ours, reference = (torch.load(tmp_path / name / "save_models/last.pt", weights_only=False)
                           for name in ("run", "straight"))
        assert ours["step"] == reference["step"] == 5
        for key, value in reference["model"].items():
            assert torch.equal(ours["model"][key], value), key


# `python -c INTERRUPT_AT_IMPORT <entry point>`: runs the entry point as a program (with --help) and
# sends itself Ctrl-C the moment that program first imports torch, the slow part of its start.
INTERRUPT_AT_IMPORT = f"""
import os, runpy, signal, sys

class InterruptAtTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.path.insert(0, {str(ROOT)!r})
sys.argv = [sys.argv[1], "--help"]
sys.meta_path.insert(0, InterruptAtTorch())
runpy.run_path(sys.argv[0], run_name="__main__")
"""

ENTRY_POINTS = ["main.py", "evaluate.py", "scripts/benchmark.py", "scripts/benchmark_eval.py", "scripts/export.py",
                "scripts/results_table.py", "scripts/reproduce.py", "scripts/gpu_check.py", "scripts/sweep.py",
                "scripts/make_cifar_slice.py"]


class TestCtrlCWhileStarting:
    @pytest.mark.parametrize("entry", ENTRY_POINTS)
    def test_ctrl_c_while_importing_is_one_line_and_status_130(self, tmp_path: Path, entry: str) -> None:
        done = subprocess.run([sys.executable, "-c", INTERRUPT_AT_IMPORT, str(ROOT / entry)], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
        result = Result(done.returncode, done.stdout, done.stderr)
        assert result.returncode == 130 and result.stdout == "", result.stderr
        assert_one_line_error(result, "interrupted (Ctrl-C)")

    def test_the_entry_points_are_all_there(self) -> None:
        programs = {str(path.relative_to(ROOT)) for path in ROOT.glob("scripts/*.py") if "run_cli(" in path.read_text()}
        assert programs | {"main.py", "evaluate.py"} == set(ENTRY_POINTS)
