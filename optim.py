"""The optimisers of main.py's --optimizer, every one built from the same parameter groups.

The weight-decay rule lives here, where every optimiser gets it (as nanoGPT's configure_optimizers
and barlowtwins' ``ndim == 1`` split keep it at the call site): tensors of two or more dimensions
(convolution and linear weights) decay by --wd; 1-d tensors (biases, BatchNorm and LayerNorm
weights) do not decay at all. Usage::

    optimizer = OPTIMIZERS["adamw"].make(param_groups(model, weight_decay=1e-4), args)

Adding an optimiser is one entry of OPTIMIZERS: one line of help, its default --lr, its default
trust coefficient (None: it takes no --lars_eta) and how it is built from the groups and main.py's
flags. --optimizer's choices and help, the resume check and the memory plan (:func:`state_copies`)
follow from the entry.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from lars import LARS, MOMENTUM, NESTEROV

ADAMW_BETAS = (0.9, 0.999)  # torch's defaults (constants, not flags)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """[{params: every ≥2-d tensor, weight_decay}, {params: every 1-d tensor, weight_decay: 0}],
    each in the order of model.parameters(). Both groups name their weight_decay, so that no
    optimiser's own default (AdamW's 0.01) reaches the biases and normalisation weights."""
    params = list(model.parameters())
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


@dataclass(frozen=True)
class Choice:
    """One --optimizer: what it is (for --help), its default --lr, its default trust coefficient η
    of --lars_eta (None: it has no trust ratio, and --lars_eta is refused), and make(groups, args),
    which builds it from :func:`param_groups` and main.py's flags (args.lr and args.lars_eta
    resolved)."""

    help: str
    lr: float
    eta: float | None
    make: Callable[[list[dict[str, Any]], argparse.Namespace], torch.optim.Optimizer]


OPTIMIZERS: dict[str, Choice] = {
    "lars": Choice("LARS-wrapped SGD, the official optimiser: a clipped trust ratio η per weight tensor, "
                   "momentum 0.9, Nesterov", lr=0.3, eta=0.005,
                   make=lambda groups, args: LARS(groups, lr=args.lr, weight_decay=args.wd, eta=args.lars_eta)),
    "sgd": Choice("torch SGD with the official momentum 0.9 and Nesterov, no trust ratio", lr=0.3, eta=None,
                  make=lambda groups, args: torch.optim.SGD(groups, lr=args.lr, momentum=MOMENTUM, nesterov=NESTEROV)),
    "adamw": Choice("torch AdamW, betas (0.9, 0.999), decoupled weight decay w ← w − lr·wd·w", lr=1e-3, eta=None,
                    make=lambda groups, args: torch.optim.AdamW(groups, lr=args.lr, betas=ADAMW_BETAS)),
}


def state_copies(make: Callable[[nn.Module], torch.optim.Optimizer]) -> int:
    """How many tensors the size of a weight the optimiser that make(module) builds keeps for it
    (SGD's and LARS's momentum: 1; AdamW's two moments: 2), counted after one step on a throw-away
    layer, so it stays true of an optimiser added to OPTIMIZERS. Draws nothing from the generators."""
    probe = nn.utils.skip_init(nn.Linear, 3, 2)  # a weight (2, 3) and a bias (2,), no random draw
    with torch.no_grad():
        for p in probe.parameters():
            p.fill_(1.0)
            p.grad = torch.ones_like(p)
    optimizer = make(probe)
    optimizer.step()
    state = optimizer.state[probe.weight].values()
    return sum(isinstance(v, torch.Tensor) and v.shape == probe.weight.shape for v in state)
