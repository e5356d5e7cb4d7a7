"""LARS-wrapped SGD as the official EMP-SSL code runs it (the solo-learn wrapper with clipping).

For every weight tensor w (ndim ≥ 2) with gradient g, learning rate lr and weight decay wd, the
gradient handed to SGD is

    g ← (g + wd·w) · min(η‖w‖ / (‖g‖ + wd‖w‖ + 1e-8) / lr, 1)   if ‖w‖ > 0 and ‖g‖ > 0,
    g ← g                                                       otherwise,

and SGD (momentum, Nesterov) then steps without weight decay of its own. Biases and
normalisation parameters (1-d tensors) get plain SGD without any weight decay: no trust ratio,
so none of the decay folded into it, whatever their group's weight_decay (main.py hands LARS
optim.param_groups, whose 1-d group has weight_decay 0 too). As in the official wrapper, SGD's own
weight decay is switched off during its step.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

MOMENTUM, NESTEROV = 0.9, True  # the official SGD momentum, with Nesterov (constants, not flags)


class LARS(torch.optim.SGD):
    """SGD(lr, momentum, nesterov, weight_decay) with layer-wise trust ratios η (see module doc).

    lr and eta come from main.py's --lr and --lars_eta; each parameter group's weight_decay (--wd
    for ≥2-d tensors in optim.param_groups) overrides the weight_decay given here."""

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
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Adapt the gradients, then take torch.optim.SGD's step with its own weight decay switched
        off for the step (the decay is in the adapted gradients already; 1-d tensors get none):
        buf ← momentum·buf + g,  w ← w − lr·(g + momentum·buf) (Nesterov). No value is read back
        from the device."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._adapt_gradients()
        decays = [group["weight_decay"] for group in self.param_groups]
        for group in self.param_groups:
            group["weight_decay"] = 0.0
        try:
            super().step()
        finally:
            for group, decay in zip(self.param_groups, decays):
                group["weight_decay"] = decay
        return loss
