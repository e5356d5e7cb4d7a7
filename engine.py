"""The training step and the epoch loop of EMP-SSL, with what keeps a run safe: seeding, the
non-finite-loss guard and SIGTERM handling."""
from __future__ import annotations

import math
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from distributed import gather_with_grad, get_world_size, is_main, mean_over_ranks
from errors import UserError
from loss import EMPSSLLoss


class NonFiniteLoss(UserError):
    """The loss became NaN or infinite; the run stops and its last checkpoint stays as it was."""


@dataclass
class NonFiniteGuard:
    """Lets up to `budget` steps with a non-finite loss be skipped (train_step applies no update
    for them); the next one stops the run with :class:`NonFiniteLoss`."""

    budget: int = 0

    def check(self, stats: dict[str, float], step: int) -> None:
        """Pass a finite step; warn and spend the budget on a non-finite one, or raise."""
        if math.isfinite(stats["loss"]):
            return
        report = f"loss is {stats['loss']} at step {step} (invariance {stats['invariance']:.4g}, tcr {stats['tcr']:.4g})"
        if self.budget <= 0:
            raise NonFiniteLoss(f"{report}; the last checkpoint is unchanged: lower --lr, or let a few bad steps "
                                f"be skipped with --skip_nonfinite K, and --resume")
        self.budget -= 1
        tqdm.write(f"warning: {report}: step skipped, no update applied ({self.budget} more may be skipped)",
                   file=sys.stderr)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and torch; with deterministic, also make PyTorch's kernels deterministic."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it, before CUDA starts
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


class Preemption:
    """While entered, remembers a SIGTERM (what clusters send before preemption) so that the run
    saves last.pt at the next step boundary and exits cleanly instead of dying mid-step."""

    def __enter__(self) -> Preemption:
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._request)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGTERM, self._previous)

    def _request(self, signum: int, frame: Any) -> None:
        self.requested = True


def train_step(
    model: nn.Module,
    criterion: EMPSSLLoss,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    x: torch.Tensor,
    num_patches: int,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """One EMP-SSL step on x (P·B, C, H, W): P patches of this rank's B images on the device,
    patch-major (patch p of every image together). amp_dtype (e.g. torch.bfloat16) runs the
    encoder under autocast; the loss and the coding rate are always float32.

    The coding rate is taken over the images of every rank (the global batch), the invariance
    over this rank's own. Returns this rank's detached loss, invariance S and mean coding rate R.
    A non-finite loss is not applied: the weights and optimizer state stay as they were (the
    schedule still advances). A NaN anywhere reaches every rank's rate through the gather, so
    all ranks skip alike.
    """
    with torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        z, _ = model(x)  # (P·B, d) on the unit sphere
    z = z.float().view(num_patches, -1, z.shape[-1])  # (P, B, d)
    z_global = gather_with_grad(z, dim=1)  # (P, W·B, d), rank-major; z itself in one process
    loss, parts = criterion(z, z_for_rate=z_global)
    optimizer.zero_grad(set_to_none=True)
    if torch.isfinite(loss):  # one host synchronisation per step
        loss.backward()
        optimizer.step()
    scheduler.step()
    return {"loss": loss.detach(), **parts}


def train_one_epoch(
    model: nn.Module,
    criterion: EMPSSLLoss,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    batches: Iterable[torch.Tensor],
    epoch: int,
    global_step: int,
    writer: SummaryWriter | None,
    stop_step: int,
    num_patches: int,
    amp_dtype: torch.dtype | None,
    after_step: Callable[[int], bool],
    guard: NonFiniteGuard,
) -> tuple[int, bool]:
    """Train on batches (patch-major (P·B, C, H, W) tensors on the device, see dataset/source.py)
    until global_step reaches stop_step or batches end.

    stop_step is the end of this epoch (or an earlier --max_steps), so a run resumed mid-epoch
    finishes the epoch with the number of steps that remain in it. after_step(global_step) runs
    after every step (periodic saves) and returns True to stop the run there (a SIGTERM).
    Logs loss, invariance, TCR (averaged over ranks: the global batch's values), learning rate and
    patches per second to TensorBoard (writer None: not logged) every step and shows them on a
    progress bar on rank 0. guard decides on a non-finite loss, on every rank alike. Returns
    (global_step, whether after_step stopped the run).
    """
    model.train()
    bar = tqdm(batches, desc=f"epoch {epoch}", dynamic_ncols=True, leave=False, disable=not is_main())
    tick = time.perf_counter()
    for x in bar:
        lr = optimizer.param_groups[0]["lr"]
        stats = mean_over_ranks(train_step(model, criterion, optimizer, scheduler, x, num_patches, amp_dtype))
        global_step += 1
        guard.check(stats, global_step)
        now = time.perf_counter()
        stats["lr"], stats["patches_per_s"] = lr, x.shape[0] * get_world_size() / (now - tick)
        tick = now
        if writer is not None:
            for name, value in stats.items():
                writer.add_scalar(f"train/{name}", value, global_step)
        bar.set_postfix(loss=f"{stats['loss']:.3f}", sim=f"{stats['invariance']:.3f}",
                        tcr=f"{stats['tcr']:.2f}", lr=f"{lr:.3g}", refresh=False)
        if after_step(global_step):
            return global_step, True
        if global_step >= stop_step:
            break
    return global_step, False
