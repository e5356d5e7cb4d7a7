"""The training step and the epoch loop of EMP-SSL."""
from __future__ import annotations

import math
import time
from collections.abc import Iterable

import torch
import torch.nn as nn
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from errors import UserError
from loss import EMPSSLLoss


class NonFiniteLoss(UserError):
    """The loss became NaN or infinite; the run stops and its last checkpoint stays as it was."""


def train_step(
    model: nn.Module,
    criterion: EMPSSLLoss,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    x: torch.Tensor,
    num_patches: int,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """One EMP-SSL step on x (P·B, C, H, W): P patches of B images on the device, patch-major
    (patch p of every image together). amp_dtype (e.g. torch.bfloat16) runs the encoder under
    autocast; the loss and the coding rate are always float32.

    Returns the detached loss, invariance S and mean coding rate R.
    """
    with torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        z, _ = model(x)  # (P·B, d) on the unit sphere
    z = z.float().view(num_patches, -1, z.shape[-1])  # (P, B, d)
    loss, parts = criterion(z)
    optimizer.zero_grad(set_to_none=True)
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
    writer: SummaryWriter,
    stop_step: int,
    num_patches: int,
    amp_dtype: torch.dtype | None = None,
) -> int:
    """Train on batches (patch-major (P·B, C, H, W) tensors on the device, see dataset/source.py)
    until global_step reaches stop_step or batches end; return global_step.

    stop_step is the end of this epoch (or an earlier --max_steps), so a run resumed mid-epoch
    finishes the epoch with the number of steps that remain in it.
    Logs loss, invariance, TCR, learning rate and patches per second to TensorBoard every step
    and shows them on a progress bar. A non-finite loss raises :class:`NonFiniteLoss`.
    """
    model.train()
    bar = tqdm(batches, desc=f"epoch {epoch}", dynamic_ncols=True, leave=False)
    tick = time.perf_counter()
    for x in bar:
        lr = optimizer.param_groups[0]["lr"]
        stats = {k: v.item() for k, v in train_step(model, criterion, optimizer, scheduler, x, num_patches,
                                                     amp_dtype).items()}
        global_step += 1
        if not math.isfinite(stats["loss"]):
            raise NonFiniteLoss(
                f"loss is not finite at step {global_step} (invariance {stats['invariance']:.4g}, "
                f"tcr {stats['tcr']:.4g}); the last checkpoint is unchanged: lower --lr and start again")
        now = time.perf_counter()
        stats["lr"], stats["patches_per_s"] = lr, x.shape[0] / (now - tick)
        tick = now
        for name, value in stats.items():
            writer.add_scalar(f"train/{name}", value, global_step)
        bar.set_postfix(loss=f"{stats['loss']:.3f}", sim=f"{stats['invariance']:.3f}",
                        tcr=f"{stats['tcr']:.2f}", lr=f"{lr:.3g}", refresh=False)
        if global_step >= stop_step:
            break
    return global_step
