"""LARS-wrapped SGD as the official EMP-SSL code runs it (the solo-learn wrapper with clipping).

For every weight tensor w (ndim ≥ 2) with gradient g, learning rate lr and weight decay wd, the
gradient handed to SGD is

    g ← (g + wd·w) · min(η‖w‖ / (‖g‖ + wd‖w‖ + 1e-8) / lr, 1)   if ‖w‖ > 0 and ‖g‖ > 0,
    g ← g                                                       otherwise,

and SGD (momentum, Nesterov) then steps with its own weight decay switched off. Biases and
normalisation parameters (1-d tensors) get plain SGD without any weight decay.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import torch


class LARS(torch.optim.SGD):
    """SGD(lr, momentum, nesterov, weight_decay) with layer-wise trust ratios η (see module doc)."""

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        nesterov: bool = True,
        eta: float = 0.005,
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
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Adapt the gradients, then take the SGD step with weight decay switched off."""
        self._adapt_gradients()
        decays = [group["weight_decay"] for group in self.param_groups]
        for group in self.param_groups:
            group["weight_decay"] = 0.0
        try:
            return super().step(closure)
        finally:
            for group, wd in zip(self.param_groups, decays):
                group["weight_decay"] = wd
