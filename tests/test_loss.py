"""The EMP-SSL objective against the published formula, its sign and its gradients."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import loss as loss_module
from engine import train_step
from lars import LARS
from loss import EMPSSLLoss, cuda_matmul_precision, invariance, total_coding_rate
from model import Encoder
from plumbing.speed import prepare_model


def direct_rate(z: torch.Tensor, eps: float) -> torch.Tensor:
    """The published d×d formula in float64, one group at a time: ½ logdet(I_d + d/(Bε) ZᵀZ)."""
    _, b, d = z.shape
    eye = torch.eye(d, dtype=torch.float64)
    return torch.stack([0.5 * torch.logdet(eye + d / (b * eps) * zp.T @ zp) for zp in z.double()])


def reference_similarity(z: torch.Tensor) -> torch.Tensor:
    """The official invariance as a per-patch loop in float64: the mean embedding z̄_b = mean_p z_pb
    is not detached, so the gradient flows through it too."""
    z = z.double()
    z_avg = z.mean(0)
    return sum(F.cosine_similarity(z[p], z_avg, dim=1).mean() for p in range(z.shape[0])) / z.shape[0]


def reference_loss(z: torch.Tensor, patch_sim: float, tcr: float, eps: float) -> torch.Tensor:
    """The official formulation in float64: the rows put on the unit sphere (the official encoder's
    last step), then the per-patch loop."""
    z = F.normalize(z.double(), dim=-1)
    return patch_sim * -reference_similarity(z) + tcr * -direct_rate(z, eps).mean()


def unit_rows(*shape: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


class TestTotalCodingRate:
    @pytest.mark.parametrize("b,d", [(12, 40), (40, 12)])  # B < d uses ZZᵀ, B > d uses ZᵀZ
    def test_matches_direct_formula_values_and_gradients(self, b: int, d: int) -> None:
        z = unit_rows(3, b, d).requires_grad_()
        ours = total_coding_rate(z, eps=0.2)
        z64 = z.detach().double().requires_grad_()
        ref = direct_rate(z64, eps=0.2)
        assert ours.dtype == torch.float32 and ours.shape == (3,)
        torch.testing.assert_close(ours.double(), ref.detach(), rtol=1e-5, atol=0)
        (g,) = torch.autograd.grad(ours.sum(), z)
        (g_ref,) = torch.autograd.grad(ref.sum(), z64)
        assert ((g.double() - g_ref).norm() / g_ref.norm()).item() < 1e-5

    def test_grows_as_rows_spread_apart(self) -> None:
        base = unit_rows(1, 1, 32)
        noise = unit_rows(1, 16, 32, seed=1)
        rates = [total_coding_rate(F.normalize(base + s * noise, dim=-1), 0.2).item() for s in (0.0, 0.1, 0.5, 2.0)]
        assert rates == sorted(rates) and rates[-1] > rates[0] + 1.0

    def test_collapsed_rows_have_the_rank_one_rate(self) -> None:
        z = unit_rows(1, 1, 16).expand(1, 10, 16)  # every row identical: ZᵀZ has one eigenvalue B
        expected = 0.5 * torch.log(torch.tensor(1 + 16 / (10 * 0.2) * 10))
        torch.testing.assert_close(total_coding_rate(z, 0.2), expected.reshape(1))

    def test_float32_under_bf16_autocast(self) -> None:
        z = unit_rows(2, 8, 16).bfloat16()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            rate = total_coding_rate(z, 0.2)
        assert rate.dtype == torch.float32
        torch.testing.assert_close(rate.double(), direct_rate(z.float(), 0.2), rtol=1e-5, atol=0)

    def test_float32_inside_a_bf16_training_step(self, monkeypatch: pytest.MonkeyPatch) -> None:
        seen = []

        def spy(z: torch.Tensor, eps: float = 0.2) -> torch.Tensor:
            rate = total_coding_rate(z, eps)
            seen.append((z.dtype, rate.dtype))
            return rate

        monkeypatch.setattr(loss_module, "total_coding_rate", spy)
        torch.manual_seed(0)
        model = Encoder("resnet10-cifar", 64, 32)
        optimizer = LARS(model.parameters(), lr=0.3, weight_decay=1e-4, eta=0.005)
        stats = train_step(model, EMPSSLLoss(200.0, 1.0, 0.2), optimizer, torch.randn(24, 3, 32, 32), 3, torch.bfloat16)
        assert math.isfinite(stats["loss"].item()) and seen == [(torch.float32, torch.float32)]

    def test_non_finite_input_gives_nan_not_an_exception(self) -> None:
        z = unit_rows(2, 6, 8)
        z[0, 1, 2] = float("nan")
        rate = total_coding_rate(z, 0.2)
        assert torch.isnan(rate[0]) and torch.isfinite(rate[1])


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


class TestTrueFloat32Products:
    """The coding rate's products are true float32 (no TF32) whatever the process allows, and the
    process's setting is left as it was."""

    @pytest.mark.parametrize("device", DEVICES)
    def test_value_and_gradient_keep_float32_accuracy_when_the_process_allows_tf32(self, device: str) -> None:
        """TF32 keeps 10 mantissa bits: its rounding of the products' inputs alone puts this gradient
        2.6·10⁻⁴ (relative) from the float64 formula; true float32 stays within 10⁻⁵. The CPU has no
        TF32: there the parity and the process's setting after both passes are what is checked."""
        z64 = unit_rows(4, 64, 256, seed=1).double().requires_grad_()
        z = z64.detach().float().to(device).requires_grad_()
        with cuda_matmul_precision("tf32"):
            rate = total_coding_rate(z, 0.2)
            (grad,) = torch.autograd.grad(rate.sum(), z)
            assert torch.backends.cuda.matmul.fp32_precision == "tf32"  # as the process had it
        ref = direct_rate(z64, 0.2)
        (grad_ref,) = torch.autograd.grad(ref.sum(), z64)
        torch.testing.assert_close(rate.double().cpu(), ref.detach(), rtol=1e-5, atol=0)
        assert ((grad.double().cpu() - grad_ref).norm() / grad_ref.norm()).item() < 1e-5

    def test_the_previous_setting_is_restored_on_error(self) -> None:
        before = torch.backends.cuda.matmul.fp32_precision
        with cuda_matmul_precision("tf32"):
            with pytest.raises(ZeroDivisionError), cuda_matmul_precision("ieee"):
                assert torch.backends.cuda.matmul.fp32_precision == "ieee"
                _ = 1 / 0
            assert torch.backends.cuda.matmul.fp32_precision == "tf32"
        assert torch.backends.cuda.matmul.fp32_precision == before

    @pytest.mark.parametrize("precision", ["ieee", "tf32"])
    def test_prepare_model_leaves_the_matmul_setting_alone(self, precision: str) -> None:
        with cuda_matmul_precision(precision):
            prepare_model(nn.Linear(2, 2), torch.device("cuda"), channels_last=False)  # touches no CUDA memory
            assert torch.backends.cuda.matmul.fp32_precision == precision


class TestInvariance:
    def test_is_one_when_patches_agree_and_lower_otherwise(self) -> None:
        same = unit_rows(1, 6, 8).expand(5, 6, 8)
        assert invariance(same).item() == pytest.approx(1.0, abs=1e-6)
        assert invariance(unit_rows(5, 6, 8)).item() < 0.7

    def test_gradient_flows_through_the_mean(self) -> None:
        """A detached mean fails here. The rows have varied norms: for unit rows the mean's direction
        maximises Σ_p cos(z_pb, ·), so the gradient through the mean is exactly zero and a detach
        would change nothing."""
        norms = torch.linspace(0.5, 2.0, 40).view(4, 10, 1)  # (P, B, 1)
        z = (unit_rows(4, 10, 24) * norms).requires_grad_()
        z64 = z.detach().double().requires_grad_()
        (g,) = torch.autograd.grad(invariance(z), z)
        (g_ref,) = torch.autograd.grad(reference_similarity(z64), z64)
        assert ((g.double() - g_ref).norm() / g_ref.norm()).item() < 1e-5
        (g_detached,) = torch.autograd.grad(F.cosine_similarity(z, z.mean(0).detach(), dim=-1).mean(), z)
        assert ((g_detached.double() - g_ref).norm() / g_ref.norm()).item() > 1e-2


class TestEMPSSLLoss:
    def test_equals_per_patch_reference(self) -> None:
        z = unit_rows(4, 10, 24)
        loss, parts = EMPSSLLoss(patch_sim=200.0, tcr=1.0, eps=0.2)(z, z)
        torch.testing.assert_close(loss.double(), reference_loss(z, 200.0, 1.0, 0.2), rtol=1e-5, atol=1e-4)
        assert parts["invariance"].item() == pytest.approx(invariance(z).item())
        assert parts["coding_rate"].item() == pytest.approx(direct_rate(z, 0.2).mean().item(), rel=1e-5)

    def test_gradient_equals_the_per_patch_reference(self) -> None:
        """On rows of varied norms, which the loss puts on the unit sphere itself (the encoder returns
        the projection as it is): a loss that skipped the normalisation would fail here."""
        norms = torch.linspace(0.5, 2.0, 40).view(4, 10, 1)  # (P, B, 1)
        z = (unit_rows(4, 10, 24) * norms).requires_grad_()
        loss, _ = EMPSSLLoss(patch_sim=200.0, tcr=1.0, eps=0.2)(z, z)
        z64 = z.detach().double().requires_grad_()
        ref = reference_loss(z64, 200.0, 1.0, 0.2)
        torch.testing.assert_close(loss.double(), ref.detach(), rtol=1e-5, atol=1e-4)
        (g,) = torch.autograd.grad(loss, z)
        (g_ref,) = torch.autograd.grad(ref, z64)
        assert ((g.double() - g_ref).norm() / g_ref.norm()).item() < 1e-5

    def test_rows_are_put_on_the_unit_sphere(self) -> None:
        """The loss of z equals the loss of its rows scaled by any positive factors (local and global
        alike), and the rate is that of unit rows, not of z as it is."""
        z = unit_rows(3, 8, 16)
        z_global = torch.cat([z, unit_rows(3, 8, 16, seed=5)], dim=1)  # (P, 2B, d)
        scale = torch.rand(3, 16, 1, generator=torch.Generator().manual_seed(2)) * 3 + 0.1  # (P, 2B, 1)
        criterion = EMPSSLLoss(200.0, 1.0, 0.2)
        unit_loss, unit_parts = criterion(z, z_global)
        loss, parts = criterion(z * scale[:, :8], z_global * scale)
        torch.testing.assert_close(loss, unit_loss, rtol=1e-5, atol=1e-4)
        assert parts["coding_rate"].item() == pytest.approx(direct_rate(z_global, 0.2).mean().item(), rel=1e-5)
        assert direct_rate(z_global * scale, 0.2).mean().item() > parts["coding_rate"].item() + 0.5

    def test_official_sign_both_terms_reduce_the_loss(self) -> None:
        z = unit_rows(4, 10, 24)
        loss, parts = EMPSSLLoss(200.0, 1.0, 0.2)(z, z)
        assert loss.item() == pytest.approx(-200 * parts["invariance"].item() - parts["coding_rate"].item(), rel=1e-5)
        assert loss.item() < 0

    def test_rate_is_taken_over_the_given_global_batch(self) -> None:
        z = unit_rows(3, 8, 16)
        z_global = torch.cat([z, unit_rows(3, 8, 16, seed=5)], dim=1)  # (P, 2B, d)
        _, parts = EMPSSLLoss(200.0, 1.0, 0.2)(z, z_global)
        assert parts["coding_rate"].item() == pytest.approx(direct_rate(z_global, 0.2).mean().item(), rel=1e-5)
        assert parts["invariance"].item() == pytest.approx(invariance(z).item())

    def test_decreases_under_sgd(self) -> None:
        raw = torch.randn(4, 16, 32, generator=torch.Generator().manual_seed(0), requires_grad=True)
        opt = torch.optim.SGD([raw], lr=0.01)
        criterion = EMPSSLLoss(200.0, 1.0, 0.2)
        losses = []
        for _ in range(20):
            loss, _ = criterion(raw, raw)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[-1] < losses[0] - 1.0
