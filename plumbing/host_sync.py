"""What makes the host wait for the device, counted on any machine and refused on a GPU.

On a GPU the CPU queues kernels ahead of the device; any of these makes it wait until the device
has caught up, so the queue drains and the GPU idles while Python runs:

- a read of a device value: `.item()`, `if tensor`, `int(tensor)` (all `_local_scalar_dense`),
  `.tolist()`, `nonzero` and ops whose output size depends on values (`masked_select`, `unique`,
  boolean-mask indexing);
- a tensor made from host data (`torch.tensor`, `new_tensor`, `as_tensor` of Python values: each
  dispatches `lift_fresh`): on CUDA its copy from pageable host memory is a blocking
  `cudaMemcpy` followed by a stream synchronisation.

:class:`HostSyncs` counts both by the operators dispatched, so a test on the CPU proves what a
GPU would do. :func:`refuse_syncs` is the GPU's own check: CUDA's sync debug mode raises at the
first synchronising call.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class HostSyncs(TorchDispatchMode):
    """Counts the operations that would make the host wait for a GPU while it is entered.

    ``syncs`` lists what was met, in order (empty: the code could run ahead of the device).
    """

    READS = ("_local_scalar_dense", "nonzero", "is_nonzero", "masked_select", "unique", "_unique2",
             "repeat_interleave", "bincount", "equal", "allclose", "item")
    FROM_HOST = ("lift_fresh",)  # torch.tensor / new_tensor / as_tensor of Python values
    MASK_INDEXING = ("index", "index_put", "index_put_")

    def __enter__(self) -> HostSyncs:
        self.syncs: list[str] = []
        self._tolist = torch.Tensor.tolist

        def tolist(tensor: torch.Tensor):  # no operator is dispatched for .tolist() on the CPU
            self.syncs.append("tolist")
            return self._tolist(tensor)

        torch.Tensor.tolist = tolist
        return super().__enter__()

    def __exit__(self, *exc: object) -> None:
        torch.Tensor.tolist = self._tolist
        super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in self.READS or name in self.FROM_HOST:
            self.syncs.append(name)
        elif name in self.MASK_INDEXING and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or ())):
            self.syncs.append(f"{name} with a boolean mask")
        return func(*args, **(kwargs or {}))


@contextmanager
def refuse_syncs() -> Iterator[None]:
    """While entered, any call that synchronises the current CUDA device with the host raises a
    RuntimeError (torch.cuda.set_sync_debug_mode("error")); the previous mode is restored after."""
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)
