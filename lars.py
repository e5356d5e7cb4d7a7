"""LARS-wrapped SGD as the official EMP-SSL code runs it (the solo-learn wrapper with clipping).

For every weight tensor w (ndim ≥ 2) with gradient g, learning rate lr and weight decay wd, the
gradient handed to SGD is

    g ← (g + wd·w) · min(η‖w‖ / (‖g‖ + wd‖w‖ + 1e-8) / lr, 1)   if ‖w‖ > 0 and ‖g‖ > 0,
    g ← g                                                       otherwise,

and SGD (momentum, Nesterov) then steps without weight decay of its own. Biases and
normalisation parameters (1-d tensors) get plain SGD without any weight decay.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import torch


MOMENTUM, NESTEROV = 0.9, True  # the official SGD momentum, with Nesterov (constants, not flags)


class LARS(torch.optim.SGD):
    """SGD(lr, momentum, nesterov, weight_decay) with layer-wise trust ratios η (see module doc).

    lr, weight_decay and eta come from main.py's --lr, --wd and --lars_eta."""

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float,
        weight_decay: float,
        eta: float,
        momentum: float = MOMENTUM,
        nesterov: bool = NESTEROV,
        eps: float = 1e-8,
    ) -> None:
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
        self.eta, self.eps = eta, eps

    @torch.no_grad()
    def _adapt_gradients(self) -> None:
        """Rescale the gradient of every ≥2-d parameter by its clipped trust ratio, in place: all
        norms of a group at once (torch._foreach_norm), no device-to-host synchronisation.

        With s = clamp(ratio, max=1) where adapted and 1 elsewhere, g ← s·g + (s·wd·[adapted])·w,
        which is (g + wd·w)·s where adapted and g elsewhere."""
        for group in self.param_groups:
            wd, lr = group["weight_decay"], group["lr"]
            params = [p for p in group["params"] if p.grad is not None and p.ndim > 1]
            if not params:
                continue
            grads = [p.grad for p in params]
            w_norm = torch.stack(torch._foreach_norm(params))  # (T,) one norm per tensor
            g_norm = torch.stack(torch._foreach_norm(grads))  # (T,)
            ratio = self.eta * w_norm / (g_norm + wd * w_norm + self.eps) / lr
            adapt = (w_norm > 0) & (g_norm > 0)
            scale = torch.where(adapt, ratio.clamp(max=1.0), 1.0)  # (T,)
            decay = torch.where(adapt, scale * wd, 0.0)  # (T,)
            torch._foreach_mul_(grads, list(scale.unbind()))
            torch._foreach_add_(grads, torch._foreach_mul(params, list(decay.unbind())))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None,  # type: ignore[override]
             apply: torch.Tensor | None = None) -> float | None:
        """Adapt the gradients, then take the Nesterov SGD step (no weight decay of its own):
        buf ← momentum·buf + g,  w ← w − lr·(g + momentum·buf)   (w ← w − lr·buf without Nesterov).

        apply, a bool tensor () on the parameters' device, decides on the device whether the
        step happens: where it is False the weights and momentum buffers keep their values
        exactly (even if the gradients are NaN), and nothing is read back to the host. Buffers
        start at zero, which gives torch.optim.SGD's first step (buf = g) exactly.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._adapt_gradients()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads, momentum = [p.grad for p in params], group["momentum"]
            update = grads
            if momentum:
                bufs = [self._momentum_buffer(p) for p in params]
                new_bufs = torch._foreach_add(torch._foreach_mul(bufs, momentum), grads,
                                              alpha=1 - group["dampening"])
                update = torch._foreach_add(grads, new_bufs, alpha=momentum) if group["nesterov"] else new_bufs
                for buf, new in zip(bufs, new_bufs):
                    buf.copy_(new if apply is None else torch.where(apply, new, buf))
            if apply is not None:
                update = [torch.where(apply, u, 0.0) for u in update]
            torch._foreach_add_(params, update, alpha=-group["lr"])
        return loss

    def _momentum_buffer(self, p: torch.Tensor) -> torch.Tensor:
        """p's momentum buffer (torch.optim.SGD's state key, so checkpoints stay compatible),
        zeros before the first step."""
        state = self.state[p]
        if state.get("momentum_buffer") is None:
            state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state["momentum_buffer"]
