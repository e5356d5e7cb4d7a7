"""The linear probe's per-epoch training loss history."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import clusters

from probes import OFFICIAL_LINEAR, linear_probe


class TestLinearProbeLoss:
    def test_one_entry_per_epoch_decreasing_on_separable_data(self) -> None:
        train, test = clusters(400, dim=32, noise=0.2), clusters(100, dim=32, noise=0.2, seed=1)
        out = linear_probe(train, test, 10, replace(OFFICIAL_LINEAR, epochs=6, lr=1.0))
        losses = out["history_loss"]
        assert len(losses) == 6 and len(out["history_top1"]) == 6
        assert all(later < earlier for earlier, later in zip(losses, losses[1:])), losses
        assert losses[-1] < 0.5 * losses[0]

    def test_entry_is_the_mean_cross_entropy_of_the_epoch(self) -> None:
        # With lr 0 the classifier stays at its seeded initialisation, and 300 images in batches
        # of 100 are each seen once per epoch, so every entry is the initial full-set cross-entropy.
        train = clusters(300, dim=16)
        out = linear_probe(train, train, 10, replace(OFFICIAL_LINEAR, epochs=2, lr=0.0, bs=100), seed=3)
        torch.manual_seed(3)
        initial = nn.Linear(16, 10)
        expected = F.cross_entropy(initial(train[0]), train[1]).item()
        assert out["history_loss"] == pytest.approx([expected, expected], rel=1e-5)
