"""Data-parallel training: the gather with gradients, two gloo ranks against one process, torchrun
end to end, and refusals under torchrun."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from conftest import ROOT, TINY_RUN, assert_one_line_error

from engine import train_step
from loss import EMPSSLLoss, VICRegLoss
from model import Encoder
from plumbing import distributed
from plumbing.errors import UserError
from plumbing.host_sync import HostSyncs

P, B, WORLD = 4, 8, 2  # patches, global batch, ranks
CRITERIA = {"emp": lambda: EMPSSLLoss(patch_sim=200.0, tcr=1.0, eps=0.2),
            "vicreg": lambda: VICRegLoss(sim_coeff=25.0, std_coeff=25.0, cov_coeff=1.0)}  # the --loss choices


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fixed_problem() -> tuple[Encoder, list[torch.Tensor]]:
    """Seeded weights and a fixed global batch of P views of B images. BatchNorm is in eval mode,
    so normalisation does not depend on the split, with the running statistics of this batch
    (cumulative average over one pass), so the embeddings are spread as in training."""
    torch.manual_seed(0)
    model = Encoder("resnet10-cifar", hidden_dim=64, z_dim=32)
    generator = torch.Generator().manual_seed(1)
    views = [torch.randn(B, 3, 32, 32, generator=generator) for _ in range(P)]  # P × (B, C, H, W)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None
    with torch.no_grad():
        model(torch.cat(views))  # (P·B, C, H, W)
    return model.eval(), views


def step_and_grads(model: torch.nn.Module, views: list[torch.Tensor], criterion: torch.nn.Module,
                   params: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """engine.train_step with an optimizer that does not move; returns (parts, gradients of params)."""
    optimizer = torch.optim.SGD(params.parameters(), lr=0.0)
    parts = train_step(model, criterion, optimizer, torch.cat(views), len(views))  # (P·B, C, H, W)
    return parts, {name: p.grad.clone() for name, p in params.named_parameters()}


def rank_worker(rank: int, port: int, out: Path) -> None:
    """One of two gloo ranks: every check whose result the parent compares with one process."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    device = distributed.setup(torch.device("cpu"), "auto", timeout_minutes=1.0, sync_bn=False)
    result: dict[str, object] = {"device": str(device), "backend": torch.distributed.get_backend()}

    x = torch.full((2, 3, 1), float(rank + 1), requires_grad=True)  # rank r's block: all r + 1
    gathered = distributed.gather_with_grad(x, dim=1)  # (2, 6, 1)
    weight = torch.arange(12.0).view(2, 6, 1) * (10 ** rank)  # a different loss on every rank
    (gathered * weight).sum().backward()
    result.update(gathered=gathered.detach(), x_grad=x.grad)

    for name, criterion in CRITERIA.items():
        model, views = fixed_problem()
        mine = [v[rank * B // WORLD:(rank + 1) * B // WORLD] for v in views]  # P × (B/W, C, H, W)
        net = distributed.wrap(model, device, sync_bn=False)
        parts, grads = step_and_grads(net, mine, criterion(), model)
        values = distributed.mean_over_ranks(torch.stack(list(parts.values())))  # (K,)
        result[name] = {"parts": dict(zip(parts, values, strict=True)), "grads": grads}
    with HostSyncs() as watched:  # the stop signal's agreement, after every step of a run
        agreed = distributed.max_over_ranks(signal.SIGTERM if rank == 1 else 0)
    result.update(stop=(agreed, watched.syncs))

    def only_rank_1_fails() -> str:
        if rank == 1:
            raise UserError("disk of rank 1 is full")
        return "fine"
    try:
        distributed.fail_together(only_rank_1_fails)
    except UserError as err:
        result["agree_error"] = str(err)
    def rank_0_writes_the_others_read() -> str:
        if rank == 0:
            (out / "marker").write_text("rank 0 was here")
            return "wrote"
        return (out / "marker").read_text()
    result["main_first"] = distributed.main_first(rank_0_writes_the_others_read)

    if rank == 1:
        torch.save(result, out / "rank1.pt")
        os._exit(0)  # dies without leaving the group
    try:
        distributed.fail_together(lambda: None)
    except UserError as err:
        result["dead_peer_error"] = str(err)
    beating = [t for t in threading.enumerate() if t.name == "emp-ssl-heartbeat"]
    distributed.cleanup()
    result["heartbeat"] = (len(beating), any(t.is_alive() for t in beating))  # (threads before, alive after)
    torch.save(result, out / "rank0.pt")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("ranks")
    mp.spawn(rank_worker, args=(free_port(), out), nprocs=WORLD)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


class TestGatherWithoutProcessGroup:
    def test_is_the_identity_with_the_gradient_unchanged(self) -> None:
        x = torch.randn(3, 4, 5, requires_grad=True)
        y = distributed.gather_with_grad(x, dim=1)
        assert y is x
        weight = torch.randn(3, 4, 5)
        (y * weight).sum().backward()
        torch.testing.assert_close(x.grad, weight, rtol=0, atol=0)

    def test_collective_helpers_run_the_step_once_in_one_process(self) -> None:
        assert distributed.fail_together(lambda: 7) == 7 and distributed.main_first(lambda: 8) == 8
        assert distributed.on_main(lambda x: x + 1, 8) == 9
        assert distributed.mean_over_ranks(torch.tensor([[2.5, -1.0]])) == [[2.5, -1.0]]
        assert distributed.max_over_ranks(signal.SIGTERM) == signal.SIGTERM
        assert (distributed.get_rank(), distributed.get_world_size(), distributed.is_main()) == (0, 1, True)


class TestTwoRanks:
    def test_gloo_on_the_cpu(self, two_ranks: list[dict]) -> None:
        assert [r["device"] for r in two_ranks] == ["cpu", "cpu"]
        assert [r["backend"] for r in two_ranks] == ["gloo", "gloo"]

    def test_gather_concatenates_in_rank_order_and_sums_gradients_over_ranks(self, two_ranks: list[dict]) -> None:
        expected = torch.cat([torch.full((2, 3, 1), 1.0), torch.full((2, 3, 1), 2.0)], dim=1)  # (2, 6, 1)
        weight = torch.arange(12.0).view(2, 6, 1)
        for rank, result in enumerate(two_ranks):
            torch.testing.assert_close(result["gathered"], expected, rtol=0, atol=0)
            block = weight[:, rank * 3:(rank + 1) * 3]  # (2, 3, 1): rank's slice of each rank's loss weight
            torch.testing.assert_close(result["x_grad"], block * 1 + block * 10, rtol=0, atol=0)

    @pytest.mark.parametrize("loss", list(CRITERIA))
    def test_loss_parts_and_every_gradient_equal_one_process_on_the_whole_batch(self, two_ranks: list[dict],
                                                                                loss: str) -> None:
        """Each rank's loss takes the invariance over its images and the rest over the gathered batch;
        their mean over ranks, and DDP's mean gradient, are one process's on the whole batch."""
        model, views = fixed_problem()
        parts, grads = step_and_grads(model, views, CRITERIA[loss](), model)
        for result in two_ranks:
            assert result[loss]["parts"].keys() == parts.keys() and len(parts) >= 3
            for name, value in parts.items():
                assert result[loss]["parts"][name] == pytest.approx(value.item(), rel=1e-5), name
            # rank 1's SIGTERM reaches every rank in the same call, a host value: nothing waits for a device
            assert result["stop"] == (signal.SIGTERM, [])
            assert result[loss]["grads"].keys() == grads.keys()
            # float32 sums in another order differ by ~1e-6 of a gradient's norm; a gather whose
            # backward does not sum over ranks is off by 2e-2 to 5e-1. VICReg does not change when
            # every row moves alike, so the last bias's gradient is 0 up to rounding (~1e-7): absolute
            for name, grad in grads.items():
                scale = 1.0 if (loss, name) == ("vicreg", "projection.3.bias") else grad.norm()
                error = (result[loss]["grads"][name] - grad).norm() / scale
                assert error < 2e-5, (name, error.item())

    def test_a_failure_on_one_rank_stops_all_and_rank_0_reports_it(self, two_ranks: list[dict]) -> None:
        assert two_ranks[0]["agree_error"] == "rank 1: disk of rank 1 is full"
        assert two_ranks[1]["agree_error"] == "disk of rank 1 is full"

    def test_main_first_runs_rank_0_before_the_others(self, two_ranks: list[dict]) -> None:
        assert [r["main_first"] for r in two_ranks] == ["wrote", "rank 0 was here"]

    def test_cleanup_stops_the_heartbeat_before_the_process_exits(self, two_ranks: list[dict]) -> None:
        """A daemon thread still inside the store's C++ call at interpreter exit aborts the process
        (pthread_exit unwinding through it): cleanup joins the one heartbeat thread first."""
        assert two_ranks[0]["heartbeat"] == (1, False)

    def test_a_dead_rank_becomes_one_error_on_rank_0(self, two_ranks: list[dict]) -> None:
        assert two_ranks[0]["dead_peer_error"].startswith("rank 1 stopped (")


def torchrun_command(*argv: str, script: Path = ROOT / "main.py", restarts: int = 0) -> list[str]:
    """`torchrun --nproc_per_node 2 --max_restarts R script argv…` on 127.0.0.1."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD), "--max_restarts",
            str(restarts), "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{free_port()}",
            "--monitor_interval", "0.5", str(script), *argv]


def torchrun(*argv: str, cwd: Path, script: Path = ROOT / "main.py", restarts: int = 0) -> subprocess.CompletedProcess:
    """Run :func:`torchrun_command` to its end and capture its output."""
    return subprocess.run(torchrun_command(*argv, script=script, restarts=restarts), cwd=cwd, capture_output=True,
                          text=True, timeout=300)


class TestTorchrun:
    def test_two_processes_train_write_one_checkpoint_set_and_resume(self, tmp_path: Path) -> None:
        run = tmp_path / "run"
        flags = [*TINY_RUN, "--output_dir", str(run), "--epoch", "1", "--dist_timeout", "2"]
        first = torchrun(*flags, "--max_steps", "2", cwd=tmp_path)
        assert first.returncode == 0, first.stderr
        assert first.stdout.count("run folder:") == 1 and "× 2 processes" in first.stdout  # rank 0 alone prints
        assert sorted(p.name for p in (run / "save_models").iterdir()) == ["last.pt"]
        assert len(list(run.glob("events.out.tfevents.*"))) == 1
        state = torch.load(run / "save_models" / "last.pt", weights_only=False)
        assert state["step"] == 2 and not any(k.startswith("module.") for k in state["model"])

        second = torchrun(*flags, "--resume", cwd=tmp_path)
        assert second.returncode == 0, second.stderr
        state = torch.load(run / "save_models" / "last.pt", weights_only=False)
        assert state["step"] == 4 and state["scheduler"]["last_epoch"] == 4  # 64 images / 16 per step
        assert sorted(p.name for p in (run / "save_models").iterdir()) == ["0.pt", "last.pt"]
        assert len(json.loads((run / "args.json").read_text())["resumes"]) == 1


@pytest.fixture
def launched(monkeypatch: pytest.MonkeyPatch):
    """launched(rank): the environment torchrun gives rank `rank` of 2 on one machine (no group forms:
    every refusal tested here comes first, and no store answers at MASTER_PORT)."""
    def set_rank(rank: int) -> None:
        for name, value in (("RANK", rank), ("LOCAL_RANK", rank), ("WORLD_SIZE", WORLD), ("LOCAL_WORLD_SIZE", WORLD),
                            ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", free_port())):
            monkeypatch.setenv(name, str(value))
    return set_rank


class TestBadInputUnderTorchrun:
    @pytest.mark.parametrize("flags,fragments", [
        (["--bs", "15"], ("--bs 15", "multiple of 2")),
        (["--sync_bn"], ("--sync_bn", "GPUs")),
        (["--dist_timeout", "0"], ("--dist_timeout",)),
        (["--bs", "x"], ("--bs", "invalid int value")),  # refused by argparse
    ])
    def test_rank_0_reports_in_one_line_and_rank_1_exits_quietly(self, cli, launched, tmp_path: Path,
                                                                  flags: list[str], fragments: tuple[str, ...]) -> None:
        launched(0)
        assert_one_line_error(cli("main", *TINY_RUN, "--output_dir", "run", *flags), *fragments)
        launched(1)
        quiet = cli("main", *TINY_RUN, "--output_dir", "run", *flags)
        assert (quiet.returncode, quiet.stdout, quiet.stderr) == (2, "", "")
        assert not (tmp_path / "run").exists()

    @pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without GPUs")
    @pytest.mark.parametrize("flags,fragment", [
        (["--dist_backend", "nccl"], "--dist_backend gloo"),
        (["--device", "cuda"], "--device cpu"),
    ])
    def test_nccl_or_cuda_without_gpus(self, cli, launched, flags: list[str], fragment: str) -> None:
        launched(0)
        rest = [f for f in TINY_RUN if f not in ("--device", "cpu")]
        assert_one_line_error(cli("main", *rest, "--output_dir", "run", *flags), fragment)


KILL_RANK_1_AT_STEP_3 = """
import os, signal, sys
sys.path.insert(0, {root!r})
import engine
saved = engine.Training.save

def save(self, name="last.pt"):
    path = saved(self, name)
    if self.step == 3 and os.environ["RANK"] == "1" and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
        os.kill(os.getpid(), signal.SIGKILL)  # rank 1 dies mid-epoch, right after last.pt of step 3
    return path

engine.Training.save = save
import main
from plumbing.cli import run_cli
run_cli(main.main, main.get_args_parser())
"""


class TestARankThatDies:
    def test_the_other_rank_says_which_one_in_one_line_and_exits(self, tmp_path: Path) -> None:
        """Two processes without torchrun; rank 1 is killed mid-epoch. Rank 0's next collective
        fails and it exits within seconds (well inside --dist_timeout) naming rank 1, no traceback."""
        run, port = tmp_path / "run", str(free_port())
        flags = [*TINY_RUN, "--epoch", "100", "--save_every_steps", "1", "--dist_timeout", "2",
                 "--output_dir", str(run)]
        procs = []
        for rank in range(WORLD):
            env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "RANK": str(rank),
                   "LOCAL_RANK": str(rank), "WORLD_SIZE": str(WORLD), "LOCAL_WORLD_SIZE": str(WORLD)}
            procs.append(subprocess.Popen([sys.executable, str(ROOT / "main.py"), *flags], cwd=tmp_path, env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        deadline = time.monotonic() + 120
        while not (run / "save_models" / "last.pt").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        procs[1].kill()
        killed_at = time.monotonic()
        _, stderr = procs[0].communicate(timeout=90)
        procs[1].communicate()
        assert procs[0].returncode == 2 and time.monotonic() - killed_at < 60, stderr
        assert "Traceback" not in stderr
        assert stderr.strip().splitlines()[-1].startswith("error: rank 1 stopped ("), stderr[-2000:]

    def test_a_torchrun_restart_resumes_and_ends_with_the_uninterrupted_weights(self, tmp_path: Path) -> None:
        flags = [*TINY_RUN, "--epoch", "2", "--save_every_steps", "1", "--deterministic", "--dist_timeout", "2"]
        straight = torchrun(*flags, "--output_dir", str(tmp_path / "straight"), cwd=tmp_path)
        assert straight.returncode == 0, straight.stderr[-3000:]
        script = tmp_path / "kill_rank_1.py"
        script.write_text(KILL_RANK_1_AT_STEP_3.format(root=str(ROOT)))
        restarted = torchrun(*flags, "--output_dir", str(tmp_path / "restarted"), cwd=tmp_path, script=script,
                             restarts=1)
        assert restarted.returncode == 0, restarted.stderr[-3000:]
        assert "torchrun restart 1: resuming from" in restarted.stdout
        ours, reference = (torch.load(tmp_path / name / "save_models" / "last.pt", weights_only=False)
                           for name in ("restarted", "straight"))
        assert ours["step"] == reference["step"] == 8
        for key, value in reference["model"].items():
            assert torch.equal(ours["model"][key], value), key


SIGTERM_RANK_1_IN_STEP_3 = """
import os, signal, sys
sys.path.insert(0, {root!r})
import engine
real_step, calls = engine.train_step, []

def train_step(*args, **kwargs):
    calls.append(1)
    if len(calls) == 3 and os.environ["RANK"] == "1":
        os.kill(os.getpid(), signal.SIGTERM)  # rank 1 alone, as its step 3 begins
    return real_step(*args, **kwargs)

engine.train_step = train_step
import main
from plumbing.cli import run_cli
run_cli(main.main, main.get_args_parser())
"""


def wait_for(path: Path, seconds: float = 120) -> None:
    """Poll until path exists (at most `seconds`)."""
    deadline = time.monotonic() + seconds
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.exists(), path


def worker_of_rank(agent: int, rank: int) -> int:
    """The pid of the torchrun agent's worker of that rank: its child whose environment holds RANK=rank."""
    for entry in Path("/proc").iterdir():
        try:
            stat, environ = (entry / "stat").read_text(), (entry / "environ").read_bytes()
        except (OSError, ValueError):  # not a process, or one that has gone
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])  # after "pid (name)": state, then the parent's pid
        if parent == agent and f"RANK={rank}".encode() in environ.split(b"\0"):
            return int(entry.name)
    raise AssertionError(f"no worker of rank {rank} under {agent}")


def stopped_job(flags: list[str], run: Path, cwd: Path, signal_agent: bool) -> tuple[int, str, str]:
    """Start torchrun (--max_restarts 1) on main.py with flags into run; once last.pt exists, send
    SIGTERM to torchrun's agent, or to the worker of rank 1 alone; return (status, stdout, stderr)."""
    out, err = cwd / f"{run.name}.out", cwd / f"{run.name}.err"  # files, not pipes: no one reads until the end
    with out.open("w") as stdout, err.open("w") as stderr:
        job = subprocess.Popen(torchrun_command(*flags, "--output_dir", str(run), restarts=1), cwd=cwd,
                               stdout=stdout, stderr=stderr)
        wait_for(run / "save_models" / "last.pt")
        os.kill(job.pid if signal_agent else worker_of_rank(job.pid, 1), signal.SIGTERM)
        job.wait(timeout=240)
    return job.returncode, out.read_text(), err.read_text()


class TestAStopUnderTorchrun:
    """SIGTERM (or Ctrl-C) stops every rank at one step with last.pt saved and ends the torchrun job,
    with --max_restarts too: its agent does not restart after a signal it got itself, and workers it
    restarts after they exited 143 read the stop in its store and end at once."""

    FLAGS = [*TINY_RUN, "--epoch", "100", "--save_every_steps", "1", "--log_every", "1", "--deterministic",
             "--dist_timeout", "2"]

    def test_sigterm_to_torchrun_ends_the_job_and_resume_continues_it_exactly(self, tmp_path: Path) -> None:
        run = tmp_path / "stopped"
        status, stdout, stderr = stopped_job(self.FLAGS, run, tmp_path, signal_agent=True)
        assert status == 1 and "SignalException" in stderr, stderr[-3000:]  # torchrun's agent, after its workers
        step = torch.load(run / "save_models" / "last.pt", weights_only=False)["step"]
        assert f"SIGTERM: stopped at step {step}, last.pt saved" in stdout and "done:" not in stdout
        assert "torchrun restart" not in stdout and "not restarting" not in stderr  # no second attempt
        end = ["--max_steps", str(step + 2)]
        resumed = torchrun(*self.FLAGS, "--output_dir", str(run), "--resume", *end, cwd=tmp_path)
        straight = torchrun(*self.FLAGS, "--output_dir", str(tmp_path / "straight"), *end, cwd=tmp_path)
        assert resumed.returncode == straight.returncode == 0, resumed.stderr[-3000:] + straight.stderr[-3000:]
        ours, reference = (torch.load(folder / "save_models" / "last.pt", weights_only=False)
                           for folder in (run, tmp_path / "straight"))
        assert ours["step"] == reference["step"] == step + 2
        for key, value in reference["model"].items():
            assert torch.equal(ours["model"][key], value), key

    def test_sigterm_to_one_worker_stops_both_and_the_restart_ends_at_once(self, tmp_path: Path) -> None:
        run = tmp_path / "stopped"
        status, stdout, stderr = stopped_job(self.FLAGS, run, tmp_path, signal_agent=False)
        assert status == 1 and "exitcode  : 143" in stderr, stderr[-3000:]  # torchrun's report of its workers
        step = torch.load(run / "save_models" / "last.pt", weights_only=False)["step"]
        assert f"SIGTERM: stopped at step {step}, last.pt saved" in stdout  # rank 0 learnt rank 1's signal
        assert "SIGTERM stopped this run in an earlier attempt of this torchrun job: not restarting" in stderr
        assert "torchrun restart" not in stdout and "done:" not in stdout  # the restart trained nothing

    def test_sigterm_to_one_worker_in_a_step_stops_both_after_that_step(self, tmp_path: Path) -> None:
        """Rank 1 alone gets SIGTERM during its step 3 of an 8-step epoch, and the step values are
        read every 1000 steps: both ranks stop after step 3 (they agree after every step, on the
        host), not at the epoch's end; last.pt holds step 3 and --resume continues exactly."""
        flags = [*TINY_RUN, "--train_subset", "128", "--epoch", "100", "--log_every", "1000", "--deterministic",
                 "--dist_timeout", "2"]
        script = tmp_path / "sigterm_rank_1.py"
        script.write_text(SIGTERM_RANK_1_IN_STEP_3.format(root=str(ROOT)))
        run = tmp_path / "stopped"
        stopped = torchrun(*flags, "--output_dir", str(run), cwd=tmp_path, script=script)
        assert stopped.returncode == 1 and "exitcode  : 143" in stopped.stderr, stopped.stderr[-3000:]
        assert "SIGTERM: stopped at step 3, last.pt saved" in stopped.stdout, stopped.stdout[-3000:]
        assert torch.load(run / "save_models" / "last.pt", weights_only=False)["step"] == 3
        end = ["--max_steps", "5"]
        resumed = torchrun(*flags, "--output_dir", str(run), "--resume", *end, cwd=tmp_path)
        straight = torchrun(*flags, "--output_dir", str(tmp_path / "straight"), *end, cwd=tmp_path)
        assert resumed.returncode == straight.returncode == 0, resumed.stderr[-3000:] + straight.stderr[-3000:]
        ours, reference = (torch.load(folder / "save_models" / "last.pt", weights_only=False)
                           for folder in (run, tmp_path / "straight"))
        assert ours["step"] == reference["step"] == 5
        for key, value in reference["model"].items():
            assert torch.equal(ours["model"][key], value), key
