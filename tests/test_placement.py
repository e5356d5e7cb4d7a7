"""The objective owns the normalisation of z: EMP-SSL's loss normalising the encoder's projection
trains bit for bit as the encoder that normalised it did, in float32, whole and in slices."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import full_state, optimizer_of

import loss as loss_module
from engine import train_step
from loss import EMPSSLLoss, invariance, total_coding_rate
from model import Encoder

P, B = 4, 6  # patches, images: 24 patches per step


class NormalisedInside(nn.Module):
    """The placement before: the encoder's forward ended in F.normalize(projection, dim=1)."""

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z, feature = self.encoder(x)
        return F.normalize(z, dim=1), feature


class LossOnGivenRows(nn.Module):
    """The EMP-SSL loss before: on the rows as given (unit rows from the encoder)."""

    def forward(self, z: torch.Tensor, z_global: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        sim, rate = invariance(z), total_coding_rate(z_global, 0.2).mean()
        return 200.0 * (-sim) + 1.0 * (-rate), {"invariance": sim.detach(), "coding_rate": rate.detach()}


def train(model: nn.Module, encoder: Encoder, criterion: nn.Module, chunks: int) -> list[torch.Tensor]:
    """Three LARS steps (main.py's optimiser) of model, whose parameters are encoder's, on fixed
    batches: every step's values, then every weight, buffer and optimizer-state tensor."""
    optimizer = optimizer_of("lars", encoder)
    batches = torch.randn(3, P * B, 3, 32, 32, generator=torch.Generator().manual_seed(1))  # (steps, P·B, C, H, W)
    values = [v for x in batches for v in train_step(model, criterion, optimizer, x, P, chunks=chunks).values()]
    return values + full_state(encoder, optimizer)


def encoder(seed: int = 0) -> Encoder:
    torch.manual_seed(seed)
    return Encoder("resnet10-cifar", hidden_dim=32, z_dim=16).train()


class TestNormalisationInTheLoss:
    @pytest.mark.parametrize("chunks", [1, 2])
    def test_float32_training_is_bit_identical_to_normalising_in_the_encoder(self, chunks: int) -> None:
        """Every step's loss and parts, then every weight, buffer and momentum, torch.equal. With
        F.normalize(z, dim=-1) on the (P, B, d) tensor instead of loss.unit_rows, the gradients
        differ in the last bit from the first step on (the coding rate's column-major gradient)."""
        before, now = encoder(), encoder()
        old = train(NormalisedInside(before), before, LossOnGivenRows(), chunks)
        new = train(now, now, EMPSSLLoss(200.0, 1.0, 0.2), chunks)
        assert len(new) == len(old) and all(torch.equal(a, b) for a, b in zip(new, old))
        assert not torch.equal(now.projection[3].weight, encoder().projection[3].weight)  # the steps moved it

    def test_the_loss_normalises_rows_as_a_flat_matrix(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Not vacuous: the test above fails with the plain F.normalize along the last dimension."""
        monkeypatch.setattr(loss_module, "unit_rows", lambda z: F.normalize(z, dim=-1))
        before, now = encoder(), encoder()
        old = train(NormalisedInside(before), before, LossOnGivenRows(), 1)
        new = train(now, now, EMPSSLLoss(200.0, 1.0, 0.2), 1)
        assert not all(torch.equal(a, b) for a, b in zip(new, old))
