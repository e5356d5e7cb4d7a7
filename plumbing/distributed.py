"""Data-parallel training on torch.distributed: set-up from torchrun, rank helpers, a gather
with gradients.

Launched by `torchrun --nproc_per_node N main.py …`, every process reads RANK, LOCAL_RANK,
WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT from its environment (checked first:
:func:`launch_from_env`), joins one process group (NCCL on GPUs, gloo on CPUs) and trains a
DistributedDataParallel copy of the encoder on its B/W images of each global batch of B; a small
gloo group next to it agrees on host values, such as a stop signal after every step, without
touching a device. Without torchrun (or with one process) there is no process group and every
helper here is the identity, so the same code runs as a single process.

Gradient scaling. With W ranks, rank r embeds its images into z_r (P, B/W, d) and computes

    L_r = patch_sim · (−S(z_r)) + tcr · (−mean_p R(Z_p)),   Z = gather(z_1 … z_W)  (P, B, d),

so the coding rate is taken over the global batch, as under the official nn.DataParallel.
DDP averages the parameter gradients over ranks: (1/W) Σ_r ∂L_r/∂θ. The invariance terms give
(1/W) Σ_r ∂S(z_r)/∂θ = ∂S_global/∂θ, since S over the global batch is the mean of the equal-sized
local S(z_r). Every rank computes the same R, so the gather's backward must SUM the incoming
gradients over ranks: rank r then holds W · ∂R/∂z_r, and DDP's average gives Σ_r ∂R/∂z_r ·
∂z_r/∂θ = ∂R/∂θ. A gather that kept only the local gradient would divide the coding-rate gradient
by W. Together the update equals that of one process on the whole batch (up to BatchNorm, whose
statistics stay per rank unless --sync_bn).
"""
from __future__ import annotations

import functools
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import NamedTuple, TypeVar

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from plumbing.errors import Stopped, UserError, one_line

T = TypeVar("T")


class Launch(NamedTuple):
    """Where this process sits in a torchrun launch; (0, 0, 1, 1) for a plain `python main.py`."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int


TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
_RELAUNCH = (f"launch with torchrun, which sets {', '.join(TORCHRUN_VARIABLES[:-1])} and {TORCHRUN_VARIABLES[-1]} "
             f"together, or unset them to train in one process")


class LaunchError(UserError):
    """torchrun's variables are missing or malformed, or a rank did not join: what this process found
    in its own environment or store, so every process that meets one says so (not only local rank 0)."""


def _names(names: list[str]) -> str:
    """"A", "A and B", "A, B and C"."""
    return " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


def _told(name: str) -> str:
    """How the message names a bound: "WORLD_SIZE=2", or "WORLD_SIZE, which is not set: one process"."""
    value = os.environ.get(name)
    return f"{name}={value}" if value is not None else f"{name}, which is not set: one process"


def _env_integer(name: str, default: int, low: int, high: int, why: str) -> int:
    """The integer in the variable `name` (default when it is absent), from low to high; `why` says
    where the range comes from."""
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise LaunchError(f"{name}={text!r} is not an integer: {_RELAUNCH}") from None
    if not low <= value <= high:
        allowed = f"{low}" if low == high else f"at least {low}" if high == sys.maxsize else f"from {low} to {high}"
        raise LaunchError(f"{name}={value} must be {allowed} ({why}): {_RELAUNCH}")
    return value


def launch_from_env() -> Launch:
    """Where this process sits, from torchrun's variables, checked; a LaunchError names the first
    one that is wrong, and says to launch with torchrun or to unset them.

    Without WORLD_SIZE, or with 1, this is one process: RANK, LOCAL_RANK and LOCAL_WORLD_SIZE may be
    absent or say the same (0, 0, 1). A leftover value that names another process (LOCAL_RANK=3 in a
    shell that a launch left behind) is refused, not ignored: it says that this process was meant to
    be one of several, and alone it would train the whole run into the run folder that the others
    write too. With WORLD_SIZE > 1 all of TORCHRUN_VARIABLES are set, with 0 ≤ RANK < WORLD_SIZE,
    1 ≤ LOCAL_WORLD_SIZE ≤ WORLD_SIZE, 0 ≤ LOCAL_RANK < LOCAL_WORLD_SIZE and a MASTER_PORT from 1 to 65535.
    """
    world = _env_integer("WORLD_SIZE", 1, 1, sys.maxsize, "it counts the processes")
    missing = [name for name in TORCHRUN_VARIABLES if not os.environ.get(name, "").strip()]
    if world > 1 and missing:
        raise LaunchError(f"WORLD_SIZE={world} but {_names(missing)} {'is' if len(missing) == 1 else 'are'} not "
                          f"set: {_RELAUNCH}")
    local_world = _env_integer("LOCAL_WORLD_SIZE", world, 1, world, f"at most {_told('WORLD_SIZE')}")
    rank = _env_integer("RANK", 0, 0, world - 1, f"below {_told('WORLD_SIZE')}")
    local_rank = _env_integer("LOCAL_RANK", 0, 0, local_world - 1, f"below {_told('LOCAL_WORLD_SIZE')}")
    if world > 1:
        _env_integer("MASTER_PORT", 0, 1, 65535, "a TCP port")
    return Launch(rank, local_rank, world, local_world)


def is_initialized() -> bool:
    """Whether this process belongs to a process group (several ranks)."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's rank in the group, 0 without one."""
    return dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    """Number of ranks, 1 without a process group."""
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """True on rank 0, the one process that prints, logs and writes files."""
    return get_rank() == 0


def print_main(*values: object) -> None:
    """print on rank 0 only."""
    if is_main():
        print(*values, flush=True)


def choose_backend(name: str, device: torch.device) -> str:
    """auto → nccl for CUDA devices, gloo for the CPU; refuse combinations that cannot run."""
    if name == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if name == "nccl" and device.type != "cuda":
        if not torch.cuda.is_available():
            raise UserError("--dist_backend nccl needs GPUs but this machine has none: "
                            "use --dist_backend gloo (or auto) to train on the CPU")
        raise UserError("--dist_backend nccl needs --device cuda (or auto)")
    if name == "gloo" and device.type == "cuda":
        raise UserError("--dist_backend gloo is for CPU training: use nccl (or auto) on GPUs, or --device cpu")
    return name


def setup(device: torch.device, backend: str, timeout_minutes: float, sync_bn: bool) -> torch.device:
    """Join torchrun's process group when launched with several processes; return this rank's device.

    Under torchrun a CUDA device becomes cuda:LOCAL_RANK. Every check here runs before the group
    forms and gives the same answer on every rank of a machine, so a refusal stops them all; a rank
    that does not join within timeout_minutes is named in one line (:func:`_joined_store`).
    Collectives that wait longer than timeout_minutes (a dead or stuck rank) raise instead of hanging.
    Next to the main group every rank joins a gloo group for host values (:func:`max_over_ranks`).
    """
    global _host_group
    launch = launch_from_env()
    if launch.world_size == 1:
        return device
    if not dist.is_available():
        raise UserError("this PyTorch build has no torch.distributed: run a single process without torchrun")
    if device.type == "cuda":
        if device.index is not None:
            raise UserError(f"--device {device} names one GPU, but under torchrun each process takes "
                            f"the GPU of its LOCAL_RANK: use --device cuda (or auto)")
        gpus = torch.cuda.device_count()
        if launch.local_world_size > gpus:  # the same answer on every rank of the machine
            raise UserError(f"torchrun started {launch.local_world_size} processes on this machine but it has {gpus} "
                            f"GPUs, one for each LOCAL_RANK below {gpus}: use --nproc_per_node {gpus}")
        device = torch.device("cuda", launch.local_rank)
    backend = choose_backend(backend, device)
    if sync_bn and device.type != "cuda":
        raise UserError("--sync_bn needs GPUs (PyTorch's SyncBatchNorm runs on CUDA only): drop it on the CPU")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    timeout = timedelta(minutes=timeout_minutes)
    dist.init_process_group(backend, timeout=timeout, device_id=device if device.type == "cuda" else None,
                            store=_joined_store(launch, timeout), rank=launch.rank, world_size=launch.world_size)
    _host_group = dist.new_group(backend="gloo", timeout=timeout)
    _start_heartbeat(launch.rank)
    return device


_host_group: dist.ProcessGroup | None = None  # every rank, over gloo: collectives of host values (max_over_ranks)


def _ranks(ranks: list[int]) -> str:
    """"rank 1", "ranks 1, 2"."""
    return f"rank{'s' * (len(ranks) > 1)} {', '.join(map(str, ranks))}"


def _joined_store(launch: Launch, timeout: timedelta) -> dist.Store:
    """The launch's key-value store (torchrun's agent store, or one that rank 0 hosts without
    torchrun) under a prefix of this attempt, so that the workers torchrun restarts (--max_restarts)
    never read the addresses of the ones that died, once every rank has arrived in it.

    Within `timeout` in all, this rank reaches the store, sets its key joined/<rank> and waits for
    the others' (polling: torch's own waits log C++ warnings and stacks before they raise). A store
    that cannot be reached or hosted, or a rank that never comes (not started, or started with
    another MASTER_PORT), is then one line (LaunchError) instead of torch's DistStoreError.
    """
    env = os.environ
    address, minutes = f"{env['MASTER_ADDR']}:{env['MASTER_PORT']}", f"{timeout.total_seconds() / 60:g} minutes"
    deadline = time.monotonic() + timeout.total_seconds()
    host = env.get("TORCHELASTIC_USE_AGENT_STORE") != "True" and launch.rank == 0
    if not host and not _reachable(env["MASTER_ADDR"], int(env["MASTER_PORT"]), deadline):
        raise LaunchError(f"could not reach this launch's store at {address} within --dist_timeout ({minutes}): "
                          f"start rank 0, which hosts it, with the same MASTER_ADDR and MASTER_PORT")
    try:
        store = dist.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), launch.world_size, is_master=host,
                              timeout=timeout, wait_for_workers=False)
    except RuntimeError as err:  # torch's DistNetworkError: the port is taken, or it is not a store's
        raise LaunchError(f"cannot {'host' if host else 'use'} this launch's store at {address} "
                          f"({one_line(err, sentence=True)}): choose another MASTER_PORT") from err
    store = dist.PrefixStore(f"emp-ssl/attempt-{env.get('TORCHELASTIC_RESTART_COUNT', '0')}/", store)
    keys = [f"joined/{rank}" for rank in range(launch.world_size)]
    try:
        store.set(keys[launch.rank], "1")
        while not store.check(keys) and time.monotonic() < deadline:
            time.sleep(0.1)
        absent = [rank for rank, key in enumerate(keys) if not store.check([key])]
    except RuntimeError as err:  # the store's host has gone
        raise LaunchError(f"this launch's store at {address} went away while the ranks joined (its host, rank 0 "
                          f"without torchrun, stopped): see its output") from err
    if absent:
        raise LaunchError(f"{_ranks(absent)} did not join within --dist_timeout ({minutes}): start every rank "
                          f"with the same WORLD_SIZE, MASTER_ADDR and MASTER_PORT (torchrun starts them all), or "
                          f"give a slow start a larger --dist_timeout")
    return store


def _reachable(address: str, port: int, deadline: float) -> bool:
    """Whether a TCP connection to address:port opens before the deadline (time.monotonic()),
    trying every 0.1 s."""
    while True:
        try:
            socket.create_connection((address, port), timeout=1).close()
            return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)


HEARTBEAT_S = 0.5  # how often every rank says it is alive
WATCH_S = 3.0  # how long a survivor watches the heartbeats before naming the ranks that stopped


def _launch_store() -> dist.Store | None:
    """A client of the launch's key-value store (torchrun's, or rank 0's without it), or None."""
    env = os.environ
    if "MASTER_ADDR" not in env or "MASTER_PORT" not in env:
        return None
    return dist.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), is_master=False,
                         timeout=timedelta(seconds=WATCH_S))


STOP_KEY = "emp-ssl/stopped"  # in torchrun's store: the signal that stopped this job's run


def _agent_store() -> dist.Store | None:
    """A client of torchrun's agent store, which outlives the workers of an attempt (one per torchrun
    job: a new job starts without any key), or None without one (no torchrun, or a rendezvous whose
    store a worker hosts)."""
    return _launch_store() if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" else None


def record_stop(signum: int) -> None:
    """Under torchrun: note in the agent's store that signum stopped the run, before this worker exits
    with 128 + signum. torchrun restarts workers that exit non-zero (--max_restarts) unless its agent
    got the signal itself; the restarted ones read the note (:func:`earlier_stop`) and end at once, so
    a stop stays a stop. Best effort: a store already gone (its host has exited) is left alone."""
    try:
        store = _agent_store()
        if store is not None:
            store.set(STOP_KEY, str(signum))
    except RuntimeError:
        pass


def earlier_stop() -> int | None:
    """The signal that stopped an earlier attempt of this torchrun job (:func:`record_stop`), read by
    the workers torchrun restarted; None in a first attempt, without torchrun, or after no stop."""
    if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
        return None
    store = _agent_store()
    return int(store.get(STOP_KEY)) if store is not None and store.check([STOP_KEY]) else None


_heartbeat: tuple[threading.Thread, threading.Event] | None = None  # this process's beating thread, and its stop


def _start_heartbeat(rank: int) -> None:
    """A daemon thread that adds 1 to the counter emp-ssl/alive/<rank> every HEARTBEAT_S, with its
    own connection to the store, until :func:`cleanup` stops it."""
    global _heartbeat
    store = _launch_store()
    if store is None:
        return
    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            try:
                store.add(f"emp-ssl/alive/{rank}", 1)
            except RuntimeError:  # the store is gone (its host stopped): nothing left to tell
                return
            stop.wait(HEARTBEAT_S)

    thread = threading.Thread(target=beat, name="emp-ssl-heartbeat", daemon=True)
    thread.start()
    _heartbeat = (thread, stop)


def _stop_heartbeat() -> None:
    """Stop the heartbeat thread and wait for it. A daemon thread still inside the store's C++ call
    when the interpreter exits is ended by pthread_exit, whose unwinding through that call aborts
    the process ("terminate called without an active exception"): seen under load at the end of
    runs that had finished."""
    global _heartbeat
    if _heartbeat is not None:
        thread, stop = _heartbeat
        stop.set()
        thread.join(timeout=WATCH_S)
        _heartbeat = None


def stopped_ranks() -> list[int]:
    """The ranks whose heartbeat did not move over WATCH_S seconds: the ones that stopped (killed,
    out of memory, an error). A store that cannot be reached names rank 0, its host outside torchrun."""
    store = _launch_store()
    if store is None:
        return []
    keys = [f"emp-ssl/alive/{rank}" for rank in range(get_world_size())]
    try:
        before = [store.add(key, 0) for key in keys]  # add 0: read a counter, 0 if it never beat
        time.sleep(WATCH_S)
        after = [store.add(key, 0) for key in keys]
    except RuntimeError:
        return [0]
    return [rank for rank, (a, b) in enumerate(zip(before, after)) if a == b]


class PeerStopped(UserError):
    """Another rank stopped: every surviving rank says so in one line (the others may be gone), and
    ends at once: leaving a process group with a dead member can block or abort."""

    exit_at_once = True


def peer_stopped(err: BaseException, stopped: list[int] | None = None) -> PeerStopped:
    """The one line for a collective that failed or timed out: which ranks stopped (default: watched
    now, :func:`stopped_ranks`), and what to do."""
    stopped = [rank for rank in (stopped_ranks() if stopped is None else stopped) if rank != get_rank()]
    who = f"{_ranks(stopped)} stopped" if stopped else "another rank did not answer within --dist_timeout"
    return PeerStopped(f"{who} ({one_line(err, sentence=True)}): see its output; this rank stops too. A torchrun "
                       f"restart (--max_restarts) resumes from last.pt")


def cleanup() -> None:
    """Stop the heartbeat and leave the process group, if any."""
    global _host_group
    _stop_heartbeat()
    _host_group = None
    if is_initialized():
        dist.destroy_process_group()


def entry_point(main: Callable[..., None]) -> Callable[..., None]:
    """Wrap an entry point's main(args): leave the process group at exit, and let one process
    report a UserError. Before the group forms every rank refuses alike, so local rank 0 of each
    machine reports; afterwards rank 0 reports (:func:`fail_together` brings other ranks' messages to it).
    Every other process exits with status 2 and says nothing, but for a :class:`LaunchError` (its own
    environment, or the ranks it waited for), which every rank says. When a collective fails because ranks
    stopped (killed, out of memory, an error), every surviving rank says which in one line
    (:class:`PeerStopped`) and exits with status 2, within --dist_timeout. A run that a signal
    stopped (:class:`errors.Stopped`) leaves the group on every rank, which then exits with
    128 + the signal's number."""

    @functools.wraps(main)
    def run(*args: object) -> None:
        try:
            main(*args)
        except (PeerStopped, LaunchError):
            raise  # every rank says so (the rank that would report may be the one that stopped, or not there)
        except Stopped:
            cleanup()  # every rank stopped at the same step, as they finish
            raise
        except UserError:
            reporter = is_main() if is_initialized() else launch_from_env().local_rank == 0
            cleanup()
            if reporter:
                raise
            raise SystemExit(2) from None
        except RuntimeError as err:  # a collective (the gather, DDP's all-reduce, a read) that lost a rank
            stopped = stopped_ranks() if is_initialized() else []
            if stopped:
                raise peer_stopped(err, stopped) from err
            cleanup()
            raise
        cleanup()

    return run


def fail_together(step: Callable[[], T]) -> T:
    """Run step on every rank; if it raises UserError on any rank, all ranks stop together.

    Rank 0 raises the message of the lowest failing rank (prefixed `rank r:` when that is not
    itself), so a decision such as "this run folder already holds checkpoints" is the same
    everywhere and is reported once. A rank that is dead or silent past --dist_timeout also
    becomes a UserError here. Collective: every rank must call it at the same point.
    """
    if not is_initialized():
        return step()
    try:
        result, message = step(), None
    except UserError as err:
        result, message = None, str(err)
    messages: list[str | None] = [None] * get_world_size()
    try:
        dist.all_gather_object(messages, message)
    except RuntimeError as err:  # gloo and NCCL raise RuntimeError subclasses for lost or silent peers
        raise peer_stopped(err) from err
    failed = [(rank, text) for rank, text in enumerate(messages) if text is not None]
    if failed:
        rank, text = failed[0]
        raise UserError(text if rank == get_rank() else f"rank {rank}: {text}")
    return result  # type: ignore[return-value]


def on_main(step: Callable[..., T], *args: object) -> T | None:
    """step(*args) on rank 0 only (writing files); the other ranks wait, get None, and stop too
    if it fails."""
    return fail_together(lambda: step(*args) if is_main() else None)


def main_first(step: Callable[[], T]) -> T:
    """Run step on rank 0 while the others wait, then on the others (rank 0 downloads a data set
    once, the rest then read it); a UserError anywhere stops every rank."""
    first = fail_together(step if is_main() else lambda: None)
    return fail_together(lambda: first if is_main() else step())


def wrap(model: nn.Module, device: torch.device, sync_bn: bool) -> nn.Module:
    """DistributedDataParallel around model when several ranks train, else model itself.

    sync_bn converts model's BatchNorm layers to SyncBatchNorm in place (same parameters and
    state-dict keys), so statistics span the global batch; off, each rank normalises with its
    own images, as each GPU did under the official nn.DataParallel. DDP's default
    broadcast_buffers keeps every rank's running statistics equal to rank 0's.
    """
    if not is_initialized():
        return model
    if sync_bn:
        nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along `dim` whose backward sums the incoming gradients over ranks."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, dim: int) -> torch.Tensor:
        ctx.dim, ctx.size = dim, x.shape[dim]
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        return torch.cat(parts, dim=dim)  # x's shape with W·n along dim, rank-major blocks

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.clone(memory_format=torch.contiguous_format)  # all_reduce works in place: use a copy
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad.narrow(ctx.dim, dist.get_rank() * ctx.size, ctx.size), None  # this rank's block


def gather_with_grad(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Concatenate every rank's x along dim, in rank order, keeping the autograd graph.

    x: this rank's tensor with n entries along dim (the same shape on every rank); returns W·n
    entries along dim, rank r's at [r·n, (r+1)·n), as the sampler splits each global batch. The
    gradient reaching x is the sum over ranks of the gradients of their copies of that block
    (all-reduce, then this rank's slice); see the module docstring for why. Without a process
    group it returns x itself.
    """
    if not is_initialized():
        return x
    return _GatherWithGrad.apply(x, dim)


def max_over_ranks(value: int) -> int:
    """The largest of every rank's value (value itself in one process). Collective, on the host
    whatever the backend: one all-reduce of a CPU tensor over the gloo group that :func:`setup` makes
    next to the main one, written and read through its NumPy view, so no device value is read and
    the host waits for no GPU, only for the other ranks' hosts to reach the same call (about 0.3 ms
    on one machine): cheap enough for every step (the stop signal, engine.train_one_epoch)."""
    if not is_initialized():
        return value
    packed = torch.zeros(1, dtype=torch.int64)  # on the host
    packed.numpy()[0] = value  # the NumPy view shares its memory: no operator, no read
    dist.all_reduce(packed, op=dist.ReduceOp.MAX, group=_host_group)
    return int(packed.numpy()[0])


def mean_over_ranks(values: torch.Tensor) -> list:
    """values averaged over ranks, as nested Python lists.

    values: any float tensor on this rank's device (e.g. (steps, K) statistics), the same shape on
    every rank; the mean of equal-sized local losses is the global loss. One all-reduce and one
    device-to-host copy read them: the only synchronisation of a read.
    """
    packed = values.detach().to(torch.float32, copy=True)  # all_reduce works in place: a copy
    if is_initialized():
        dist.all_reduce(packed, op=dist.ReduceOp.SUM)
        packed /= get_world_size()
    return packed.cpu().tolist()  # the one device-to-host copy
