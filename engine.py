"""The training step and the epoch loop of EMP-SSL, with what keeps a run safe: seeding, the
non-finite-loss guard and SIGTERM handling."""
from __future__ import annotations

import math
import os
import random
import signal
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

import checkpoint as ckpt
from distributed import gather_with_grad, is_main, mean_over_ranks, on_main
from errors import UserError
from lars import LARS
from loss import EMPSSLLoss


class NonFiniteLoss(UserError):
    """The loss became NaN or infinite; the run stops and its last checkpoint stays as it was."""


class NonFiniteGuard:
    """Skips steps whose loss is not finite, deciding on the device and reporting on the host.

    A step with a non-finite loss applies no update. Up to `budget` of them are skipped; the next
    one halts training: from that step on no update is applied (the weights stay those of the
    step before it), and :meth:`report`, which sees every step's values when the host reads them,
    raises :class:`NonFiniteLoss` naming it. :meth:`allow` and :meth:`report` make the same
    decisions, one from device values without reading them, the other from the values read.
    """

    def __init__(self, budget: int, device: torch.device) -> None:
        self.budget, self.left = budget, budget
        self.skipped = torch.zeros((), dtype=torch.long, device=device)  # non-finite steps skipped so far
        self.halted = torch.zeros((), dtype=torch.bool, device=device)  # the budget ran out: no more updates

    def allow(self, loss: torch.Tensor) -> torch.Tensor:
        """Whether this step's update applies: a bool tensor () on the device, no host read."""
        bad = ~torch.isfinite(loss)
        self.halted |= bad & (self.skipped >= self.budget)
        self.skipped += bad & ~self.halted
        return ~bad & ~self.halted

    def report(self, stats: dict[str, float], step: int) -> None:
        """On the host, for the steps in order: pass a finite one; warn about a skipped one, or raise."""
        if math.isfinite(stats["loss"]):
            return
        report = f"loss is {stats['loss']} at step {step} (invariance {stats['invariance']:.4g}, tcr {stats['tcr']:.4g})"
        if self.left <= 0:
            raise NonFiniteLoss(f"{report}; the last checkpoint is unchanged: lower --lr, or let a few bad steps "
                                f"be skipped with --skip_nonfinite K, and --resume")
        self.left -= 1
        if is_main():  # every rank skips alike; one says so
            tqdm.write(f"warning: {report}: step skipped, no update applied ({self.left} more may be skipped)",
                       file=sys.stderr)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and torch; with deterministic, make PyTorch's kernels deterministic,
    else let cuDNN pick the fastest convolution algorithms (cudnn.benchmark)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = not deterministic  # cuDNN times its kernels once per shape and keeps the fastest
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it, before CUDA starts
        torch.use_deterministic_algorithms(True)


class Preemption:
    """While entered, remembers a SIGTERM (what clusters send before preemption) so that the run
    saves last.pt at its next read of the step values (every --log_every steps, at a step boundary)
    and exits cleanly instead of dying mid-step."""

    def __enter__(self) -> Preemption:
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._request)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGTERM, self._previous)

    def _request(self, signum: int, frame: Any) -> None:
        self.requested = True


@dataclass
class Training:
    """What a run trains and where it saves it: the state a training loop carries.

    model is the encoder whose state dict is saved; net is what runs the forward (model itself,
    or its DistributedDataParallel / compiled wrapper, sharing model's parameters). step counts
    the optimizer steps taken, over all epochs.
    """

    model: nn.Module
    net: nn.Module
    criterion: EMPSSLLoss
    optimizer: LARS
    scheduler: torch.optim.lr_scheduler.LRScheduler
    num_patches: int
    amp_dtype: torch.dtype | None
    steps_per_epoch: int
    run_dir: Path
    args: dict[str, Any]
    step: int = 0

    @property
    def epoch(self) -> int:
        """The epoch of the last step taken (0 before any)."""
        return max(self.step - 1, 0) // self.steps_per_epoch

    def load_state_dict(self, state: dict[str, Any], source: Path) -> None:
        """Continue from a checkpoint written by :meth:`save` (strict on the model's keys)."""
        ckpt.load_state_strict(self.model, state["model"], source)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        ckpt.set_rng_state(state["rng"])
        self.step = state["step"]

    def save(self, name: str = ckpt.LAST) -> Path:
        """Write save_models/<name> (rank 0; the others wait and stop too if it fails)."""
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "epoch": self.epoch, "step": self.step,
                 "args": self.args, "rng": ckpt.rng_state()}
        path = self.run_dir / ckpt.CHECKPOINT_DIR / name
        on_main(ckpt.save_checkpoint, state, path)
        return path

    def save_epoch(self) -> None:
        """At the end of an epoch: write <epoch>.pt once and make last.pt the same file."""
        path = self.save(f"{self.epoch}.pt")
        on_main(ckpt.link_or_copy, path, path.with_name(ckpt.LAST))


def train_step(model: nn.Module, criterion: EMPSSLLoss, optimizer: LARS, x: torch.Tensor, num_patches: int,
               amp_dtype: torch.dtype | None = None, guard: NonFiniteGuard | None = None) -> dict[str, torch.Tensor]:
    """One EMP-SSL step on x (P·B, C, H, W): P patches of this rank's B images on the device,
    patch-major (patch p of every image together), with no read of a device value by the host.

    amp_dtype (e.g. torch.bfloat16) runs the encoder under autocast; the loss and the coding rate
    are always float32. The coding rate is taken over the images of every rank (the global batch),
    the invariance over this rank's own. With a guard, a step whose loss is not finite applies no
    update (the weights, BatchNorm statistics and optimizer state keep their values; decided on
    the device, see :class:`NonFiniteGuard`); a NaN anywhere reaches every rank's rate through the
    gather, so all ranks skip alike. Returns this rank's detached loss, invariance S and mean coding rate R, on
    the device. The caller steps the learning-rate schedule.
    """
    kept = [(buffer, buffer.clone()) for buffer in model.buffers()] if guard is not None else []  # BatchNorm statistics
    with torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        z, _ = model(x)  # (P·B, d) on the unit sphere
    z = z.float().view(num_patches, -1, z.shape[-1])  # (P, B, d)
    z_global = gather_with_grad(z, dim=1)  # (P, W·B, d), rank-major; z itself in one process
    loss, parts = criterion(z, z_for_rate=z_global)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if guard is None:
        optimizer.step()
    else:
        apply = guard.allow(loss.detach())
        optimizer.step(apply=apply)
        for buffer, before in kept:  # a skipped step leaves no trace in the running statistics either
            buffer.copy_(torch.where(apply, buffer, before))
    return {"loss": loss.detach(), **parts}


class StepLog:
    """The values of every step, kept on the device and read by the host every `every` steps.

    A read (:meth:`flush`) stacks the pending steps' values, averages them over ranks together
    with the SIGTERM flag in one all-reduce, copies them to the host once, hands each step to the
    guard, writes one TensorBoard point per step (writer None: not logged) and updates the
    progress bar. Between reads the host queues work without waiting for the device.
    patches_per_step (P·B over all ranks) gives the logged throughput, per read.
    """

    def __init__(self, writer: SummaryWriter | None, every: int, guard: NonFiniteGuard, patches_per_step: int) -> None:
        self.writer, self.every, self.guard, self.patches_per_step = writer, every, guard, patches_per_step
        self.pending: list[tuple[int, float, torch.Tensor]] = []  # (step, lr, values (K,) on the device)
        self.names: tuple[str, ...] = ()
        self.bar: tqdm | None = None
        self.tick = time.perf_counter()

    def add(self, step: int, lr: float, stats: dict[str, torch.Tensor]) -> None:
        """Queue one step's values (no host read)."""
        self.names = tuple(stats)
        self.pending.append((step, lr, torch.stack([v.float().reshape(()) for v in stats.values()])))  # (K,)

    def due(self, step: int) -> bool:
        """Whether the host reads at this step."""
        return step % self.every == 0

    def flush(self, stop_requested: bool) -> bool:
        """Read, check and log the pending steps (at least one: reads follow a step); return whether
        any rank asked to stop (SIGTERM)."""
        rows, stop = mean_over_ranks(torch.stack([v for _, _, v in self.pending]), stop_requested)  # (n, K); flag
        now = time.perf_counter()
        rate = len(rows) * self.patches_per_step / (now - self.tick)
        self.tick = now
        for (step, lr, _), row in zip(self.pending, rows, strict=True):
            stats = dict(zip(self.names, row, strict=True))
            self.guard.report(stats, step)
            if self.writer is not None:
                for name, value in {**stats, "lr": lr}.items():
                    self.writer.add_scalar(f"train/{name}", value, step)
        if self.writer is not None:
            self.writer.add_scalar("train/patches_per_s", rate, step)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{stats['loss']:.3f}", sim=f"{stats['invariance']:.3f}",
                                 tcr=f"{stats['tcr']:.2f}", lr=f"{lr:.3g}", refresh=False)
        self.pending = []
        return stop


def train_one_epoch(training: Training, batches: Iterable[torch.Tensor], log: StepLog, stop_step: int,
                    save_every: int | None, preemption: Preemption) -> bool:
    """Train on batches (patch-major (P·B, C, H, W) tensors on the device, see dataset/source.py)
    until training.step reaches stop_step (the end of this epoch, or an earlier --max_steps) or the
    batches end, so a run resumed mid-epoch finishes the epoch with the steps that remain in it.

    The host reads the step values every log.every steps, before every save and at the end; a
    non-finite loss past the guard's budget raises there. last.pt is written every save_every
    steps. Returns True when a read found a SIGTERM on any rank: the caller saves and stops.
    """
    training.net.train()
    log.tick = time.perf_counter()
    log.bar = tqdm(batches, desc=f"epoch {training.step // training.steps_per_epoch}", dynamic_ncols=True,
                   leave=False, disable=not is_main())
    for x in log.bar:
        lr = training.optimizer.param_groups[0]["lr"]
        stats = train_step(training.net, training.criterion, training.optimizer, x, training.num_patches,
                           training.amp_dtype, log.guard)
        training.scheduler.step()
        training.step += 1
        log.add(training.step, lr, stats)
        save_due = bool(save_every) and training.step % save_every == 0
        if (log.due(training.step) or save_due) and log.flush(preemption.requested):
            return True
        if save_due:
            training.save()
        if training.step >= stop_step:
            break
    return bool(log.pending) and log.flush(preemption.requested)
