"""How many slices a training step is run in (--patch_chunks), decided before the first step.

A step of n patches is run as x.chunk(K) of its patch-major batch, as nn.DataParallel cut it over K
GPUs: slices of ⌈n/K⌉ patches and a last one of what remains, so fewer than K slices where ⌈n/K⌉
does not fit K times (x.chunk(7) of 24 patches is 6 slices of 4); :func:`slicing` says what a K
gives, and the run uses that number. Every slice must hold at least two patches: BatchNorm needs
two values per channel (the projector's BatchNorm1d sees one row per patch), so a K that would cut
a slice of one patch is refused, naming the nearest K that works (at most n/2 slices).

A step keeps, besides the weights, what does not shrink with K (gradients, the optimizer's state,
the non-finite guard's copies, the batch of patches) and the activations autograd saves for the
backward pass of one slice: about a · ⌈n/K⌉ bytes for n patches per step on this rank and a the
activation bytes of one patch. a is measured on a slice of real shape (one patch of every image of
this rank) before the first step: on a GPU as the peak of torch.cuda.max_memory_allocated over one
forward and backward; on the CPU as the bytes of the tensors autograd saves in one forward (an
estimate: the backward's temporaries are not counted). ``auto`` takes the smallest K whose step
fits in MARGIN of the memory free then, from a formula (the largest slice that fits, then the
fewest slices of at most that many patches), not a search over every K; a K given that would not
fit stops the run before training starts, naming the K to use. A measurement that itself runs out
of memory stops the run with one line too.
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


def slicing(patches: int, chunks: int) -> tuple[int, int, int]:
    """x.chunk(chunks) of a batch of `patches` patches, as torch cuts it: (the number of slices,
    the patches of each but the last, the patches of the last). Slices hold ⌈n/K⌉ patches, so
    x.chunk(7) of 24 patches is (6, 4, 4) and x.chunk(12) of 25 is (9, 3, 1)."""
    size = -(-patches // chunks)  # ⌈n/K⌉
    count = -(-patches // size)
    return count, size, patches - (count - 1) * size


def whole_slices(patches: int, chunks: int, finer: bool = False) -> int | None:
    """The number of slices of x.chunk(K) for the K nearest to `chunks` whose every slice holds at
    least two patches (BatchNorm's minimum): chunks' own when it has that, else the nearest with
    fewer slices (finer: with more slices); None when none has. The walk goes over slice sizes s, not
    over K, and is short: a last slice of one patch means n = (c-1)·s + 1 with c ≤ K slices, and with
    (s-1)·K < n that needs s ≤ K, so only slices of at most about √n patches are ever refused."""
    size = slicing(patches, chunks)[1] if finer else max(slicing(patches, chunks)[1], 2)
    while 2 <= size <= patches:
        count, made, last = slicing(patches, -(-patches // size))  # the fewest slices of at most `size`
        if made == size and last >= 2:
            return count
        size += -1 if finer else 1
    return None


def check_slices(chunks: int, patches: int) -> int:
    """The number of slices --patch_chunks `chunks` runs a step of `patches` patches (this rank's)
    in, which x.chunk gives; a UserError naming the K to use when a slice would hold one patch."""
    count, size, last = slicing(patches, chunks)
    if last >= 2:
        return count
    cut = f"{count:,} slices of one patch" if size == 1 else f"{count - 1:,} slices of {size:,} and a last one of 1"
    raise UserError(f"--patch_chunks {chunks} would cut the {patches:,} patches of a step on this process into {cut} "
                    f"(x.chunk({chunks}), as nn.DataParallel cut them), and BatchNorm needs at least two patches in "
                    f"every slice: use --patch_chunks {whole_slices(patches, chunks)} (at most "
                    f"{whole_slices(patches, patches)} slices for this step)")


def describe_slices(patches: int, chunks: int) -> str:
    """x.chunk(chunks) of `patches` patches in words: "6 slices of 4 patches", or "7 slices: 6 of 5
    patches and one of 2"."""
    count, size, last = slicing(patches, chunks)
    if last == size:
        return f"{count:,} slice{'s' * (count > 1)} of {size:,} patches"
    return f"{count:,} slices: {count - 1:,} of {size:,} patches and one of {last:,}"


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
        return self.fixed + self.per_patch * slicing(self.patches, chunks)[1]

    def largest_slice(self) -> int:
        """The most patches a slice may hold for the step to fit in MARGIN of the memory available."""
        room = MARGIN * self.available - self.fixed
        if room < 0:
            return 0
        return self.patches if room >= self.per_patch * self.patches else math.floor(room / self.per_patch)

    def fits(self, chunks: int) -> bool:
        return slicing(self.patches, chunks)[1] <= self.largest_slice()

    def smallest_fit(self) -> int | None:
        """The fewest slices (each of two patches or more) whose step fits, or None: the fewest slices
        of at most largest_slice() patches, ⌈n / largest⌉, then finer if a slice would hold one patch."""
        largest = self.largest_slice()
        return whole_slices(self.patches, -(-self.patches // largest), finer=True) if largest >= 2 else None

    def summary(self) -> str:
        """The step and the memory, e.g. "200 patches × 100 images = 20,000 per step: ~90.1 GiB at K = 1;
        this GPU has 139.0 GiB free"."""
        how = "" if self.measured else " (estimated)"
        return (f"{self.num_patches:,} patches × {self.images:,} images = {self.patches:,} per step: "
                f"~{self.need(1) / GIB:,.1f} GiB at K = 1{how}; {self.where} has {self.available / GIB:,.1f} GiB free")

    def describe(self, chunks: int, asked: str | None = None) -> str:
        """The plan in one line: the summary, then e.g. "using K = 2: 2 slices of 10,000 patches
        (~45.3 GiB)"; a --patch_chunks `asked` that x.chunk cuts into fewer slices says so."""
        count = slicing(self.patches, chunks)[0]
        rounded = "" if asked in (None, "auto", str(count)) else f"--patch_chunks {asked} runs as x.chunk({asked}): "
        return (f"{self.summary()}; using K = {count:,}: {rounded}{describe_slices(self.patches, chunks)} "
                f"(~{self.need(chunks) / GIB:,.1f} GiB)")


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
    available, where = available_bytes(sample.device)
    try:
        per_patch, measured = activation_bytes(model, sample, amp_dtype)
    except RuntimeError as err:  # torch.cuda.OutOfMemoryError is one
        if not out_of_memory(err):
            raise
        model.zero_grad(set_to_none=True)
        raise UserError(f"measuring the memory of a step ran out of memory on {where} ({out_of_memory(err)}): one "
                        f"patch of each of the {len(sample):,} images of a step on this process, forward and "
                        f"backward, does not fit: lower --bs") from err
    return MemoryPlan(len(sample), num_patches, per_patch, fixed, available, where, measured)


def out_of_memory(err: BaseException) -> str:
    """What ran out when err is a failed allocation ("CUDA out of memory", "can't allocate memory"),
    else ""."""
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return "CUDA out of memory"
    return "can't allocate memory" if "can't allocate memory" in str(err) else ""


def choose_chunks(asked: str, plan: MemoryPlan) -> int:
    """The slices of a step for --patch_chunks `asked` ("auto" or an integer): auto takes the fewest
    that fit; a K given runs in the slices x.chunk(K) gives (:func:`check_slices`), if they fit. A step
    that cannot be cut or cannot fit is a UserError naming what to do."""
    best = plan.smallest_fit()
    if asked == "auto":
        if best is None:
            finest = whole_slices(plan.patches, plan.patches) or 1
            raise UserError(f"a step does not fit even in slices of two patches: {plan.summary()}; in "
                            f"{describe_slices(plan.patches, finest)} it needs ~{plan.need(finest) / GIB:,.1f} GiB, "
                            f"~{plan.fixed / GIB:,.1f} GiB of which do not shrink with K (the patches, gradients, "
                            f"optimizer state): lower --bs or --num_patches, or use more GPUs")
        return best
    chunks = check_slices(int(asked), plan.patches)
    if not plan.fits(chunks):
        fix = f"--patch_chunks {best} (or auto)" if best else "lower --bs or --num_patches, or use more GPUs"
        raise UserError(f"a step would not fit: {plan.describe(chunks, asked)}: use {fix}")
    return chunks
