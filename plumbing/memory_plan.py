"""How many slices a training step is run in (--patch_chunks), decided before the first step.

A step keeps, besides the weights, what does not shrink with K (gradients, the optimizer's state,
the non-finite guard's copies, the batch of patches) and the activations autograd saves for the
backward pass of one slice: about a · ⌈n/K⌉ bytes for n patches per step on this rank and a the
activation bytes of one patch. a is measured on a slice of real shape (one patch of every image of
this rank) before the first step: on a GPU as the peak of torch.cuda.max_memory_allocated over one
forward and backward; on the CPU as the bytes of the tensors autograd saves in one forward (an
estimate: the backward's temporaries are not counted). ``auto`` takes the smallest K whose step
fits in MARGIN of the memory free then; a K given that would not fit stops the run before
training starts, naming the K to use.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.nn as nn

from plumbing.errors import UserError

MARGIN = 0.9  # a step may use this share of the memory free before the first step
GIB = 2**30


@dataclass(frozen=True)
class MemoryPlan:
    """The memory of one step of n patches on this rank: fixed bytes + per_patch · ⌈n/K⌉, against
    the bytes available (free before the first step) on `where` ("this GPU" or "this machine")."""

    images: int
    num_patches: int
    per_patch: float
    fixed: float
    available: float
    where: str
    measured: bool  # False: the CPU's estimate

    @property
    def patches(self) -> int:
        """Patches per step on this rank, P·B."""
        return self.images * self.num_patches

    def need(self, chunks: int) -> float:
        """Bytes a step run in `chunks` slices needs beyond the weights."""
        return self.fixed + self.per_patch * math.ceil(self.patches / chunks)

    def fits(self, chunks: int) -> bool:
        return self.need(chunks) <= MARGIN * self.available

    def smallest_fit(self) -> int | None:
        """The smallest K (at most one slice per patch) whose step fits, or None."""
        return next((k for k in range(1, self.patches + 1) if self.fits(k)), None)

    def describe(self, chunks: int) -> str:
        """The plan in one line, e.g. "200 patches × 100 images = 20,000 per step: ~90.1 GiB at K = 1;
        this GPU has 139.0 GiB free; using K = 1 (~90.1 GiB)"."""
        how = "" if self.measured else " (estimated)"
        return (f"{self.num_patches} patches × {self.images} images = {self.patches:,} per step: "
                f"~{self.need(1) / GIB:,.1f} GiB at K = 1{how}; {self.where} has {self.available / GIB:,.1f} GiB free; "
                f"using K = {chunks} (~{self.need(chunks) / GIB:,.1f} GiB)")


def tensor_bytes(tensors: list[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def activation_bytes(model: nn.Module, x: torch.Tensor, amp_dtype: torch.dtype | None) -> tuple[float, bool]:
    """(activation bytes per patch of a forward and backward on x (n, C, H, W), measured or not).
    Leaves the weights, gradients and BatchNorm statistics as they were."""
    buffers = [b.clone() for b in model.buffers()]
    params = {p.data_ptr() for p in model.parameters()}
    autocast = torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None)
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
        torch.cuda.reset_peak_memory_stats(x.device)
        start = torch.cuda.memory_allocated(x.device)
        with autocast:
            z, _ = model(x)
        z.float().sum().backward()
        peak = torch.cuda.max_memory_allocated(x.device) - start - tensor_bytes(list(model.parameters()))  # grads aside
        measured = True
    else:
        saved: dict[int, int] = {}  # storage address → bytes: a tensor saved by several operations counts once

        def pack(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            if t.data_ptr() not in params:  # a weight saved for the backward is not an activation
                saved[storage.data_ptr()] = storage.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
            z, _ = model(x)
        peak, measured = sum(saved.values()), False
        del z
    model.zero_grad(set_to_none=True)
    torch._foreach_copy_(list(model.buffers()), buffers)
    return max(peak, 0) / len(x), measured


def available_bytes(device: torch.device) -> tuple[float, str]:
    """(bytes free for a step, where): a GPU's free memory plus what PyTorch holds unused; the
    machine's available memory on the CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        unused = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return free + unused, "this GPU"
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "this machine"


def plan_memory(model: nn.Module, optimizer_copies: int, sample: torch.Tensor, num_patches: int,
                amp_dtype: torch.dtype | None) -> MemoryPlan:
    """The plan of a step of num_patches patches of each of sample's images (B, C, H, W) on this rank.

    Fixed bytes: gradients (1× the weights), optimizer_copies × the weights (the optimiser's state:
    momentum 1, AdamW's two moments 2; optim.state_copies counts them), the non-finite guard's
    copies of the weights, buffers and optimizer state, and the batch (twice: made and laid out)."""
    weights = tensor_bytes(list(model.parameters()))
    buffers = tensor_bytes(list(model.buffers()))
    batch = num_patches * sample[0].numel() * 4 * len(sample)  # float32 patches
    fixed = weights * (1 + optimizer_copies) + (weights * (1 + optimizer_copies) + buffers) + 2 * batch
    per_patch, measured = activation_bytes(model, sample, amp_dtype)
    available, where = available_bytes(sample.device)
    return MemoryPlan(len(sample), num_patches, per_patch, fixed, available, where, measured)


def choose_chunks(asked: str, plan: MemoryPlan) -> int:
    """K for --patch_chunks `asked` ("auto" or an integer): auto takes the smallest K that fits; a
    K given is kept if it fits. A step that cannot fit is a UserError naming what to do."""
    best = plan.smallest_fit()
    if asked == "auto":
        if best is None:
            raise UserError(f"{plan.describe(plan.patches)}: even one patch per slice does not fit in "
                            f"{plan.where}: lower --bs or --num_patches, or use more GPUs")
        return best
    chunks = int(asked)
    if not plan.fits(chunks):
        fix = f"--patch_chunks {best} (or auto)" if best else "lower --bs or --num_patches, or use more GPUs"
        raise UserError(f"a step would not fit: {plan.describe(chunks)}: use {fix}")
    return chunks
