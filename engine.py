"""The training step and the loop of EMP-SSL, with what keeps a run safe: seeding, the non-finite
guard, and every save of a run (epoch ends, --save_every_steps, a stop).

One step (:func:`train_step`): patches x (P·B, C, H, W) → encoder → z (P, B, d), the projection →
the objective of --loss (loss.py: EMP-SSL's invariance and coding rate on the unit sphere, or
VICReg's) → backward → the optimizer's step, kept only when the loss is finite
(:class:`NonFiniteGuard`), decided on the device. :func:`fit` runs the
steps of every epoch from where a run stands and saves; :class:`StepLog` reads the step values
back every --log_every steps.
"""
from __future__ import annotations

import math
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from plumbing import checkpoint as ckpt
from plumbing.distributed import gather_with_grad, is_main, max_over_ranks, mean_over_ranks, on_main, print_main
from plumbing.errors import UserError
from plumbing.preemption import Preemption

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter


class NonFiniteLoss(UserError):
    """The loss became NaN or infinite; the run stops and its last checkpoint stays as it was."""


class NonFiniteGuard:
    """Skips steps whose loss is not finite, deciding on the device and reporting on the host.

    A step with a non-finite loss changes nothing: :meth:`keep` copies the weights, the buffers
    (BatchNorm statistics) and the optimizer's state before the step, and :meth:`restore` puts them
    back where :meth:`allow` says no, with any optimizer. Up to `budget` such steps are skipped;
    the next one halts training: from that step on no update applies (the weights stay those of
    the step before it), and :meth:`report`, which sees every step's values when the host reads
    them, raises :class:`NonFiniteLoss` naming it. :meth:`allow` and :meth:`report` make the same
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

    @staticmethod
    def keep(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(tensor, copy) of every parameter, buffer and optimizer-state tensor, before a step."""
        tensors = [*model.parameters(), *model.buffers(), *optimizer_tensors(optimizer)]
        return [(t, t.detach().clone()) for t in tensors]

    @staticmethod
    @torch.no_grad()
    def restore(kept: list[tuple[torch.Tensor, torch.Tensor]], optimizer: torch.optim.Optimizer,
                apply: torch.Tensor) -> None:
        """Where apply (bool (), on the device) is False, put every kept tensor back; state the step
        created (a first step's momentum) becomes zeros, what an optimizer starts from. Tensors on
        another device than apply (Adam's step counter on the host) are left as the step made them:
        restoring them would read apply back."""
        before = {id(t) for t, _ in kept}
        created = [t for t in optimizer_tensors(optimizer) if id(t) not in before]
        for tensor, copy in [*kept, *((t, torch.zeros_like(t)) for t in created)]:
            if tensor.device == apply.device:
                tensor.copy_(torch.where(apply, tensor, copy))

    def report(self, stats: dict[str, float], step: int) -> None:
        """On the host, for the steps in order: pass a finite one; warn about a skipped one, or raise."""
        if math.isfinite(stats["loss"]):
            return
        values = ", ".join(f"{name} {value:.4g}" for name, value in stats.items() if name != "loss")
        report = f"loss is {stats['loss']} at step {step} ({values})"
        if self.left <= 0:
            raise NonFiniteLoss(f"{report}; the last checkpoint is unchanged: lower --lr, or let a few bad steps "
                                f"be skipped with --skip_nonfinite K, and --resume")
        self.left -= 1
        if is_main():  # every rank skips alike; one says so
            tqdm.write(f"warning: {report}: step skipped, no update applied ({self.left} more may be skipped)",
                       file=sys.stderr)


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Every tensor of an optimizer's state (momentum buffers, Adam's moments and step counters)."""
    return [value for state in optimizer.state.values() for value in state.values() if isinstance(value, torch.Tensor)]


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


@dataclass
class Training:
    """What a run trains and where it saves it: the state the loop carries.

    encoder is the module whose state dict is saved; wrapped is the encoder as it runs the forward
    (its DistributedDataParallel or compiled wrapper, sharing its parameters, or encoder itself).
    chunks is the number of slices a step's batch is run in (--patch_chunks). step counts the
    optimizer steps taken, over all epochs; train_seconds the wall-clock of those steps and of their
    data loading (not of saves, nor of the --eval_every kNN), over all epochs, resumes included.
    """

    encoder: nn.Module
    wrapped: nn.Module
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    num_patches: int
    amp_dtype: torch.dtype | None
    steps_per_epoch: int
    run_dir: Path
    args: dict[str, Any]
    chunks: int = 1
    step: int = 0
    train_seconds: float = 0.0

    @property
    def epoch(self) -> int:
        """The epoch of the last step taken (0 before any)."""
        return max(self.step - 1, 0) // self.steps_per_epoch

    def load_state_dict(self, state: dict[str, Any], source: Path) -> None:
        """Continue from a checkpoint written by :meth:`save` (strict on the encoder's keys)."""
        ckpt.load_state_strict(self.encoder, state["model"], source)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except ValueError as err:  # e.g. one parameter group, as before optim.param_groups
            raise UserError(f"{source}: its optimizer state does not fit this optimiser's parameter groups ({err}): "
                            f"continue it with the commit that wrote it, or start a new run") from err
        self.scheduler.load_state_dict(state["scheduler"])
        ckpt.set_rng_state(state["rng"])
        self.step = state["step"]
        self.train_seconds = state.get("train_seconds", 0.0)  # a checkpoint written before the clock: from 0

    def take_step(self, x: torch.Tensor, guard: NonFiniteGuard | None) -> dict[str, torch.Tensor]:
        """One step of the run on patches x (P·B, C, H, W): :func:`train_step` on its parts in its
        slices under the guard, then the schedule's step; step + 1. No host read: returns the step's
        values on the device (what train_one_epoch logs, and the scripts time)."""
        stats = train_step(self.wrapped, self.criterion, self.optimizer, x, self.num_patches, self.amp_dtype, guard,
                           self.chunks)
        self.scheduler.step()
        self.step += 1
        return stats

    def save(self, name: str = ckpt.LAST) -> Path:
        """Write save_models/<name> (rank 0; the others wait and stop too if it fails)."""
        state = {"model": self.encoder.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "epoch": self.epoch, "step": self.step,
                 "train_seconds": self.train_seconds, "args": self.args, "rng": ckpt.rng_state()}
        path = self.run_dir / ckpt.CHECKPOINT_DIR / name
        on_main(ckpt.save_checkpoint, state, path)
        return path

    def save_epoch(self) -> None:
        """At the end of an epoch: write <epoch>.pt once and make last.pt the same file."""
        path = self.save(f"{self.epoch}.pt")
        on_main(ckpt.link_or_copy, path, path.with_name(ckpt.LAST))


def train_step(model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
               num_patches: int, amp_dtype: torch.dtype | None = None, guard: NonFiniteGuard | None = None,
               chunks: int = 1) -> dict[str, torch.Tensor]:
    """One training step on x (P·B, C, H, W): P patches of this rank's B images on the device,
    patch-major (patch p of every image together), with no read of a device value by the host.

    amp_dtype (e.g. torch.bfloat16) runs the encoder under autocast; the loss is float32. The
    criterion is called as criterion(z, z_global): z (P, B, d) the projection of this rank's
    patches, z_global (P, W·B, d) the gathered z of every rank (z itself in one process), and
    returns (loss, {name: detached value}); it normalises z itself if it needs to (loss.py).
    EMP-SSL's takes the coding rate over the global batch and the invariance over this rank's
    images. Any optimizer works. With chunks K > 1 the encoder runs on
    K slices of the batch (:func:`backward_by_slices`: the whole batch's loss and gradient, each
    slice normalised by its own BatchNorm statistics, activation memory about 1/K). With a guard,
    a step whose loss is not finite changes nothing (weights, BatchNorm statistics, optimizer
    state; see :class:`NonFiniteGuard`); a NaN anywhere reaches every rank's rate through the
    gather, so all ranks skip alike. Returns {"loss": …, **the criterion's values}, detached, on
    the device. The caller steps the learning-rate schedule.
    """
    kept = guard.keep(model, optimizer) if guard is not None else []
    optimizer.zero_grad(set_to_none=True)
    if chunks == 1:
        with torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            z, _ = model(x)  # (P·B, d), the projection
        z = z.float().view(num_patches, -1, z.shape[-1])  # (P, B, d)
        loss, parts = criterion(z, gather_with_grad(z, dim=1))  # gathered: (P, W·B, d), rank-major
        loss.backward()
    else:
        loss, parts = backward_by_slices(model, criterion, x, num_patches, amp_dtype, chunks)
    optimizer.step()
    if guard is not None:
        guard.restore(kept, optimizer, guard.allow(loss.detach()))
    return {"loss": loss.detach(), **parts}


def backward_by_slices(model: nn.Module, criterion: nn.Module, x: torch.Tensor, num_patches: int,
                       amp_dtype: torch.dtype | None, chunks: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of the whole batch x (P·B, C, H, W) and its parameter gradients (accumulated in
    .grad), the encoder run on `chunks` slices of x so that only one slice's activations are kept.

    x is cut as nn.DataParallel cut it over K GPUs (x.chunk(K): contiguous blocks of the patch-major
    batch), and each slice is normalised by its own BatchNorm statistics, exactly what the official
    code computed on K GPUs. With z_k the embeddings of slice k:
      1. every z_k without a graph, z = cat(z_k) (P, B, d); the loss L(z) and g = ∂L/∂z by autograd
         (through the cross-rank gather, so g holds every rank's share);
      2. each slice again with a graph, and backward(g_k): Σ_k g_kᵀ ∂z_k/∂θ = ∂L/∂θ.
    Two forward passes and one backward per slice. BatchNorm running statistics (what evaluation
    uses) follow DataParallel's rule: the first pass leaves no trace, and of the second only the
    first slice's update is kept (DataParallel kept the update of its replica on device 0). Under
    DistributedDataParallel the gradients are all-reduced once, with the last slice's backward.
    """
    slices = x.chunk(chunks)  # (≈ P·B/K, C, H, W) each
    buffers = list(model.buffers())
    before = [b.clone() for b in buffers]
    with torch.no_grad(), torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        z = torch.cat([model(part)[0].float() for part in slices])  # (P·B, d)
    torch._foreach_copy_(buffers, before)  # the first pass leaves no trace in the running statistics
    z = z.view(num_patches, -1, z.shape[-1]).requires_grad_()  # (P, B, d)
    loss, parts = criterion(z, gather_with_grad(z, dim=1))  # gathered: (P, W·B, d), rank-major
    loss.backward()
    grads = z.grad.view(-1, z.shape[-1]).split([len(part) for part in slices])  # (≈ P·B/K, d) each
    no_sync = getattr(model, "no_sync", nullcontext)  # DDP: all-reduce with the last slice only
    first = before
    for k, (part, grad) in enumerate(zip(slices, grads)):
        with no_sync() if k < len(slices) - 1 else nullcontext():
            with torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                z_part, _ = model(part)  # (≈ P·B/K, d)
            z_part.float().backward(grad)
        if k == 0:
            first = [b.clone() for b in buffers]
    torch._foreach_copy_(buffers, first)  # of the second, only the first slice's update
    return loss, parts


class StepLog:
    """The values of every step, kept on the device and read by the host every `every` steps.

    A read (:meth:`flush`) stacks the pending steps' values (whatever the criterion returns),
    averages them over ranks in one all-reduce, copies them to the host once, hands each step to
    the guard, writes one TensorBoard point per value and step (writer None: not logged) and
    updates the progress bar. Between reads the host queues work without waiting for the device.
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

    def flush(self) -> None:
        """Read, check and log the pending steps (at least one: reads follow a step)."""
        rows = mean_over_ranks(torch.stack([v for _, _, v in self.pending]))  # (n, K)
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
            self.bar.set_postfix({name: f"{value:.4g}" for name, value in {**stats, "lr": lr}.items()}, refresh=False)
        self.pending = []


@dataclass(frozen=True)
class Schedule:
    """How long a run trains and how often it saves: epochs of the cosine schedule; an earlier stop
    after its first train_epochs epochs or after max_steps steps in all (None: none); last.pt every
    save_every steps (None: at epoch ends and stops only)."""

    epochs: int
    train_epochs: int | None = None
    max_steps: int | None = None
    save_every: int | None = None

    def end(self, steps_per_epoch: int) -> int:
        """The step training stops at: the schedule's last, or an earlier stop."""
        ends = [steps_per_epoch * (self.train_epochs or self.epochs), self.max_steps or steps_per_epoch * self.epochs]
        return min(ends)


def fit(training: Training, batches: Any, log: StepLog, schedule: Schedule, preemption: Preemption,
        after_epoch: Callable[[int], None] | None = None) -> signal.Signals | None:
    """Train from training.step to the end of the schedule; every save of a run happens here.

    Each epoch ends with <epoch>.pt (last.pt the same file) and then after_epoch(epoch); last.pt is
    also written every schedule.save_every steps and at a stop: --max_steps, or a SIGTERM / Ctrl-C
    that the entered `preemption` caught on any rank (looked at after every step, see
    :func:`train_one_epoch`). Returns None when the schedule (or --max_steps) ended, or the signal
    that stopped the run, the same on every rank, after a line saying so. batches: the training
    patches (dataset/patch_sources.py), with set_epoch(epoch, start_step) and steps_per_epoch.
    """
    steps_per_epoch = training.steps_per_epoch
    end = schedule.end(steps_per_epoch)
    for epoch in range(training.step // steps_per_epoch, schedule.epochs):
        stop_step = min((epoch + 1) * steps_per_epoch, end)
        if training.step >= stop_step:
            break
        batches.set_epoch(epoch, start_step=training.step - epoch * steps_per_epoch)
        stop = train_one_epoch(training, batches, log, stop_step, schedule.save_every, preemption)
        complete = training.step == (epoch + 1) * steps_per_epoch
        if complete:
            training.save_epoch()
        else:
            training.save()
        if stop is not None:
            print_main(f"{stop.name}: stopped at step {training.step}, last.pt saved; continue with --resume "
                       f"from {training.run_dir}")
            return stop
        print_main(f"epoch {epoch}: step {training.step}, checkpoint "
                   f"{training.run_dir / ckpt.CHECKPOINT_DIR / ckpt.LAST}")
        if complete and after_epoch is not None:
            after_epoch(epoch)
    return None


def train_one_epoch(training: Training, batches: Iterable[torch.Tensor], log: StepLog, stop_step: int,
                    save_every: int | None, preemption: Preemption) -> signal.Signals | None:
    """Train on batches (patch-major (P·B, C, H, W) tensors on the device) until training.step
    reaches stop_step (the end of this epoch, or an earlier --max_steps) or the batches end, so a
    run resumed mid-epoch finishes the epoch with the steps that remain in it.

    After every step the ranks agree on a SIGTERM or Ctrl-C that any of them caught, with one
    all-reduce of a host value (distributed.max_over_ranks; nothing in one process): no device value
    is read and the host does not wait for the device, so every rank stops after the same step: the
    one during which the signal came (the next, if it came while the ranks agreed). The host reads
    the step values every log.every steps, before every save, at a stop and at the end; a
    non-finite loss past the guard's budget raises there. last.pt is written every save_every
    steps. Returns the signal that stopped the run (SIGTERM over Ctrl-C where ranks got different
    ones; the caller saves and stops), or None. training.train_seconds grows by the wall-clock of the
    loop (steps, data loading, reads of the step values), the saves left out.
    """
    training.wrapped.train()
    log.tick = tick = time.perf_counter()  # training.train_seconds counts from here, saves left out
    log.bar = tqdm(batches, desc=f"epoch {training.step // training.steps_per_epoch}", dynamic_ncols=True,
                   leave=False, disable=not is_main())
    stop = 0
    for x in log.bar:
        lr = training.optimizer.param_groups[0]["lr"]
        stats = training.take_step(x, log.guard)
        log.add(training.step, lr, stats)
        stop = max_over_ranks(preemption.signum)  # 0 on every rank, or the same signal on all
        save_due = bool(save_every) and training.step % save_every == 0
        if log.due(training.step) or save_due or stop:
            log.flush()
        if stop:
            break
        if save_due:
            training.train_seconds += time.perf_counter() - tick
            training.save()
            tick = time.perf_counter()
        if training.step >= stop_step:
            break
    if log.pending:
        log.flush()
    training.train_seconds += time.perf_counter() - tick
    return signal.Signals(stop) if stop else None
