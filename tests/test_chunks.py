"""--patch_chunks K: one step over the whole batch computed in K slices (engine.backward_by_slices)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TINY_RUN, assert_one_line_error, full_state, optimizer_of

from engine import NonFiniteGuard, train_step
from loss import EMPSSLLoss
from model import Encoder
from optim import OPTIMIZERS
from plumbing import checkpoint as ckpt
from plumbing.errors import UserError
from plumbing.memory_plan import GIB, MARGIN, MemoryPlan, activation_bytes, choose_chunks, plan_memory

P, B = 4, 6  # patches, images: 24 patches per step


def setup(seed: int = 0) -> tuple[Encoder, torch.Tensor]:
    """A float64 encoder in training mode (BatchNorm normalises each slice by its own statistics)
    and one patch-major batch (P·B, 3, 32, 32)."""
    torch.manual_seed(seed)
    model = Encoder("resnet10-cifar", hidden_dim=32, z_dim=16).double().train()
    return model, torch.randn(P * B, 3, 32, 32, dtype=torch.float64)


def reference(model: Encoder, x: torch.Tensor, k: int) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """The same batch as k BatchNorm groups in one graph (what nn.DataParallel computed on k GPUs):
    the loss parts and every parameter gradient."""
    z = torch.cat([model(part)[0] for part in x.chunk(k)])  # (P·B, d), one graph
    z = z.float().view(P, B, -1)  # (P, B, d)
    loss, parts = EMPSSLLoss(200.0, 1.0, 0.2)(z, z)
    loss.backward()
    return {"loss": loss.detach(), **parts}, [p.grad.clone() for p in model.parameters()]


def still(model: Encoder) -> torch.optim.Optimizer:
    """An optimizer that does not move, so that .grad holds the step's gradient afterwards."""
    return torch.optim.SGD(model.parameters(), lr=0.0)


class TestSlicedStep:
    @pytest.mark.parametrize("k", [2, 3, 5])
    def test_gradient_and_loss_equal_k_batchnorm_groups_in_one_graph(self, k: int) -> None:
        model, x = setup()
        expected_parts, expected_grads = reference(model, x, k)
        twin, _ = setup()
        parts = train_step(twin, EMPSSLLoss(200.0, 1.0, 0.2), still(twin), x, P, chunks=k)
        for name, value in expected_parts.items():
            torch.testing.assert_close(parts[name], value, rtol=1e-6, atol=1e-6)
        for got, want in zip((p.grad for p in twin.parameters()), expected_grads, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)

    def test_slices_are_not_one_group(self) -> None:
        """Not vacuous: with BatchNorm in training mode, K groups differ from one group."""
        model, x = setup()
        _, one_group = reference(model, x, 1)
        twin, _ = setup()
        train_step(twin, EMPSSLLoss(200.0, 1.0, 0.2), still(twin), x, P, chunks=3)
        assert any(not torch.allclose(p.grad, g, rtol=1e-3) for p, g in zip(twin.parameters(), one_group))

    def test_running_statistics_keep_the_first_slices_update_only(self) -> None:
        """As under nn.DataParallel, whose replica on device 0 shared the module's buffers."""
        model, x = setup()
        with torch.no_grad():
            model(x.chunk(3)[0])  # the update of the first slice alone, from the same start
        twin, _ = setup()
        train_step(twin, EMPSSLLoss(200.0, 1.0, 0.2), still(twin), x, P, chunks=3)
        for got, want in zip(twin.buffers(), model.buffers(), strict=True):
            assert torch.equal(got, want)

    def test_one_chunk_is_the_plain_step_bit_for_bit(self) -> None:
        model, x = setup()
        twin, _ = setup()
        plain = train_step(model, EMPSSLLoss(200.0, 1.0, 0.2), still(model), x, P)
        sliced = train_step(twin, EMPSSLLoss(200.0, 1.0, 0.2), still(twin), x, P, chunks=1)
        assert all(torch.equal(plain[name], sliced[name]) for name in plain)
        assert all(torch.equal(a.grad, b.grad) for a, b in zip(model.parameters(), twin.parameters()))

    @pytest.mark.parametrize("name", OPTIMIZERS)
    def test_each_optimiser_steps_on_the_gradient_of_k_batchnorm_groups(self, name: str) -> None:
        """Two steps of --patch_chunks 2 with --optimizer name give the weights and optimizer state
        of the same optimiser stepping on the gradient of 2 BatchNorm groups in one graph."""
        model, x = setup()
        twin, _ = setup()
        expected, optimizer = optimizer_of(name, model), optimizer_of(name, twin)
        for batch in (x, x.flip(0)):
            expected.zero_grad()
            reference(model, batch, 2)
            expected.step()
            train_step(twin, EMPSSLLoss(200.0, 1.0, 0.2), optimizer, batch, P, chunks=2)
        # running statistics keep the first slice's update only (tested above) and no training step reads them
        torch._foreach_copy_(list(model.buffers()), list(twin.buffers()))
        ours, theirs = full_state(twin, optimizer), full_state(model, expected)
        assert len(ours) == len(theirs) > len(model.state_dict())  # the optimizer's state is compared too
        for got, want in zip(ours, theirs, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)

    @pytest.mark.parametrize("name", OPTIMIZERS)
    def test_a_nan_step_in_slices_changes_nothing(self, name: str) -> None:
        model, x = setup()
        optimizer = optimizer_of(name, model)
        train_step(model, EMPSSLLoss(200.0, 1.0, 0.2), optimizer, x, P, chunks=2)
        before = full_state(model, optimizer)
        nan = x.clone()
        nan[0, 0, 0, 0] = float("nan")
        stats = train_step(model, EMPSSLLoss(200.0, 1.0, 0.2), optimizer, nan, P, guard=NonFiniteGuard(1, x.device),
                           chunks=2)
        after = full_state(model, optimizer)
        assert torch.isnan(stats["loss"]) and all(torch.equal(a, b) for a, b in zip(before, after, strict=True))


class TestRuns:
    def test_one_chunk_trains_exactly_as_today_and_k_chunks_resume_exactly(self, cli, tmp_path: Path) -> None:
        exact = [*TINY_RUN, "--epoch", "1", "--deterministic"]
        assert cli("main", *exact, "--output_dir", str(tmp_path / "plain")).returncode == 0
        assert cli("main", *exact, "--patch_chunks", "1", "--output_dir", str(tmp_path / "one")).returncode == 0
        for a, b in zip(weights(tmp_path / "plain").values(), weights(tmp_path / "one").values(), strict=True):
            assert torch.equal(a, b)
        sliced = [*exact, "--patch_chunks", "2"]
        assert cli("main", *sliced, "--output_dir", str(tmp_path / "straight")).returncode == 0
        assert cli("main", *sliced, "--output_dir", str(tmp_path / "resumed"), "--max_steps", "2").returncode == 0
        assert cli("main", *sliced, "--output_dir", str(tmp_path / "resumed"), "--resume").returncode == 0
        for a, b in zip(weights(tmp_path / "straight").values(), weights(tmp_path / "resumed").values(), strict=True):
            assert torch.equal(a, b)

    @pytest.mark.parametrize("flags", [["--precision", "bf16", "--channels_last"], ["--augment", "pil"]])
    def test_slices_train_with_the_fast_path_and_the_official_pipeline(self, cli, tmp_path: Path,
                                                                        flags: list[str]) -> None:
        result = cli("main", *TINY_RUN, "--epoch", "1", "--patch_chunks", "3", "--log_every", "1", *flags,
                     "--output_dir", str(tmp_path / "run"))
        assert result.returncode == 0, result.stderr
        state = torch.load(tmp_path / "run" / ckpt.CHECKPOINT_DIR / ckpt.LAST, weights_only=False)
        assert state["step"] == 4 and state["args"]["patch_chunks"] == "3"


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / ckpt.CHECKPOINT_DIR / ckpt.LAST, weights_only=False)["model"]


class TestMemoryPlan:
    def test_the_smallest_k_that_fits_within_the_margin(self) -> None:
        plan = MemoryPlan(images=100, num_patches=200, per_patch=4.5 * 2**20, fixed=2 * GIB, available=40 * GIB,
                          where="this GPU", measured=True)
        assert plan.patches == 20_000 and plan.need(1) == pytest.approx(2 * GIB + 20_000 * 4.5 * 2**20)
        k = plan.smallest_fit()
        assert plan.need(k) <= MARGIN * 40 * GIB < plan.need(k - 1) and k == 3  # ~89.9 GiB at K = 1
        assert choose_chunks("auto", plan) == 3 and choose_chunks("4", plan) == 4
        assert "20,000 per step: ~89.9 GiB at K = 1; this GPU has 40.0 GiB free; using K = 3" in plan.describe(3)
        with pytest.raises(UserError, match="use --patch_chunks 3 .or auto."):
            choose_chunks("2", plan)

    def test_the_cpu_estimate_is_the_activations_autograd_keeps(self) -> None:
        """resnet18-cifar keeps about 4.5 MiB per 32×32 patch in float32 (REFERENCE's figure)."""
        torch.manual_seed(0)
        model = Encoder("resnet18-cifar", 4096, 1024)
        per_patch, measured = activation_bytes(model, torch.randn(4, 3, 32, 32), None)
        assert not measured and 4.0 * 2**20 < per_patch < 5.0 * 2**20
        assert all(p.grad is None for p in model.parameters())

    def test_auto_slices_a_step_that_would_not_fit_and_a_k_too_small_stops_before_anything_is_written(
            self, cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
        run = [*TINY_RUN, "--epoch", "1", "--max_steps", "1"]
        torch.manual_seed(0)
        plan = plan_memory(Encoder("resnet10-cifar", 64, 32), 1, torch.randn(16, 3, 32, 32), 4, None)  # TINY_RUN's
        between = (plan.need(1) + plan.need(2)) / 2 / MARGIN  # K = 1 does not fit, K = 2 does
        monkeypatch.setattr("plumbing.memory_plan.available_bytes", lambda device: (between, "this GPU"))
        result = cli("main", *run, "--patch_chunks", "auto", "--output_dir", str(tmp_path / "auto"))
        assert result.returncode == 0, result.stderr
        assert "4 patches × 16 images = 64 per step" in result.stdout and "this GPU has" in result.stdout
        assert "using K = 2" in result.stdout
        assert torch.load(tmp_path / "auto/save_models/last.pt", weights_only=False)["args"]["patch_chunks"] == "auto"
        result = cli("main", *run, "--patch_chunks", "1", "--output_dir", str(tmp_path / "refused"))
        assert_one_line_error(result, "would not fit", "use --patch_chunks 2 (or auto)")
        assert not (tmp_path / "refused").exists()
