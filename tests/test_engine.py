"""The training step and loop on the device: no host reads, the non-finite guard, saves."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import TINY_RUN, assert_one_line_error, full_state, optimizer_of

import main as main_module
from dataset import PatchRecipe, SyntheticShapes, TrainingPatches
from dataset.sampler import ResumableSampler
from engine import NonFiniteGuard, train_step
from lars import LARS
from loss import EMPSSLLoss
from model import Encoder
from optim import OPTIMIZERS
from plumbing import checkpoint as ckpt
from plumbing.device import resolve_device
from plumbing.host_sync import HostSyncs
from plumbing.speed import compile_model, compiler_missing

P, B = 3, 8


class PoisonAt(EMPSSLLoss):
    """The EMP-SSL loss, times NaN at the calls listed in `bad` (1-based)."""

    def __init__(self, *bad: int) -> None:
        super().__init__(patch_sim=200.0, tcr=1.0, eps=0.2)
        self.bad, self.calls = bad, 0

    def forward(self, z, z_global):
        loss, parts = super().forward(z, z_global)
        self.calls += 1
        return (loss * float("nan"), parts) if self.calls in self.bad else (loss, parts)


def tiny_setup(seed: int = 0) -> tuple[Encoder, LARS, list[torch.Tensor]]:
    torch.manual_seed(seed)
    model = Encoder("resnet10-cifar", 64, 32)
    optimizer = LARS(model.parameters(), lr=0.3, weight_decay=1e-4, eta=0.005)
    return model, optimizer, [torch.randn(P * B, 3, 32, 32) for _ in range(4)]


def snapshot(model: torch.nn.Module, optimizer: LARS) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Copies of every parameter, buffer (BatchNorm statistics) and momentum buffer."""
    state = [v.clone() for v in model.state_dict().values()]
    momentum = [optimizer.state[p]["momentum_buffer"].clone() for p in model.parameters() if p in optimizer.state]
    return state, momentum


class TestNoHostReads:
    @pytest.mark.parametrize("amp_dtype", [None, torch.bfloat16], ids=["fp32", "bf16"])
    @pytest.mark.parametrize("poisoned", [False, True], ids=["finite", "nan"])
    def test_train_step_reads_nothing_back(self, amp_dtype, poisoned: bool) -> None:
        """Forward, loss, backward, LARS and the guard run without one device-to-host read."""
        model, optimizer, batches = tiny_setup()
        criterion, guard = PoisonAt(2) if poisoned else PoisonAt(), NonFiniteGuard(0, torch.device("cpu"))
        train_step(model, criterion, optimizer, batches[0], P, amp_dtype, guard)  # momentum buffers exist
        with HostSyncs() as reads:
            stats = train_step(model, criterion, optimizer, batches[1], P, amp_dtype, guard)
        assert reads.syncs == []
        assert torch.isnan(stats["loss"]).item() == poisoned


class TestNonFiniteGuard:
    def test_a_nan_step_leaves_weights_and_optimizer_state_as_before(self) -> None:
        model, optimizer, batches = tiny_setup()
        criterion, guard = PoisonAt(3), NonFiniteGuard(5, torch.device("cpu"))
        for x in batches[:2]:
            train_step(model, criterion, optimizer, x, P, guard=guard)
        before = snapshot(model, optimizer)
        train_step(model, criterion, optimizer, batches[2], P, guard=guard)  # NaN: skipped
        after = snapshot(model, optimizer)
        for old, new in zip(before[0] + before[1], after[0] + after[1], strict=True):
            assert torch.equal(old, new)
        assert guard.skipped.item() == 1 and not guard.halted.item()
        train_step(model, criterion, optimizer, batches[3], P, guard=guard)  # finite again: applied
        assert not torch.equal(snapshot(model, optimizer)[0][0], after[0][0])

    def test_past_the_budget_no_update_applies_any_more(self) -> None:
        """With budget 1, the second NaN step halts: it and every later step change nothing."""
        model, optimizer, batches = tiny_setup()
        criterion, guard = PoisonAt(1, 2), NonFiniteGuard(1, torch.device("cpu"))
        train_step(model, criterion, optimizer, batches[0], P, guard=guard)
        before = snapshot(model, optimizer)
        for x in batches[1:]:
            train_step(model, criterion, optimizer, x, P, guard=guard)
        assert all(torch.equal(a, b) for a, b in zip(before[0], snapshot(model, optimizer)[0]))
        assert guard.skipped.item() == 1 and guard.halted.item()

    def test_host_report_makes_the_same_decisions(self) -> None:
        guard = NonFiniteGuard(1, torch.device("cpu"))
        nan = {"loss": float("nan"), "invariance": 0.5, "coding_rate": float("nan")}
        guard.report({"loss": -1.0, "invariance": 0.5, "coding_rate": 20.0}, 1)
        guard.report(nan, 2)  # skipped with a warning
        with pytest.raises(main_module.UserError, match="at step 3"):
            guard.report(nan, 3)


class TestAnyOptimizer:
    """train_step and its guard work unchanged with every --optimizer: no special argument."""

    @pytest.mark.parametrize("name", OPTIMIZERS)
    def test_a_skipped_first_step_leaves_a_fresh_start_and_finite_steps_are_untouched(self, name: str) -> None:
        """A NaN first step, then a finite one, equals that finite step alone (weights, BatchNorm
        statistics and optimizer state — moments, step counters — bit for bit); later finite
        steps under the guard equal the same steps without it."""
        guarded, optimizer, batches = tiny_setup()
        plain, _, _ = tiny_setup()
        optimizer, reference = optimizer_of(name, guarded), optimizer_of(name, plain)
        guard = NonFiniteGuard(1, torch.device("cpu"))
        stats = train_step(guarded, PoisonAt(1), optimizer, batches[0], P, guard=guard)
        assert torch.isnan(stats["loss"]) and guard.skipped.item() == 1
        for x in batches[1:]:
            train_step(guarded, EMPSSLLoss(200.0, 1.0, 0.2), optimizer, x, P, guard=guard)
            train_step(plain, EMPSSLLoss(200.0, 1.0, 0.2), reference, x, P)
        ours, theirs = full_state(guarded, optimizer), full_state(plain, reference)
        assert len(ours) == len(theirs) > len(list(guarded.state_dict()))  # the optimizer's state is compared too
        assert all(torch.equal(a, b) for a, b in zip(ours, theirs))

    @pytest.mark.parametrize("name", OPTIMIZERS)
    def test_a_nan_step_changes_nothing(self, name: str) -> None:
        """After a finite step, a NaN step leaves every weight, BatchNorm statistic and optimizer-state
        tensor as it was (AdamW's step counter too: on the CPU it lives on the guard's device; on a
        GPU it is a host tensor the guard leaves counted, see NonFiniteGuard.restore)."""
        model, _, batches = tiny_setup()
        optimizer, guard = optimizer_of(name, model), NonFiniteGuard(1, torch.device("cpu"))
        train_step(model, EMPSSLLoss(200.0, 1.0, 0.2), optimizer, batches[0], P, guard=guard)
        before = full_state(model, optimizer)
        train_step(model, PoisonAt(1), optimizer, batches[1], P, guard=guard)
        assert len(before) > len(model.state_dict()) and guard.skipped.item() == 1
        assert all(torch.equal(a, b) for a, b in zip(before, full_state(model, optimizer), strict=True))


class TestRunLevel:
    @pytest.fixture
    def nan_at(self, monkeypatch: pytest.MonkeyPatch):
        def poison(*bad: int) -> None:
            monkeypatch.setattr(main_module, "build_criterion", lambda args: PoisonAt(*bad))
        return poison

    def test_nan_read_later_still_stops_naming_its_step_and_saves_nothing(self, cli, tmp_path: Path, nan_at) -> None:
        """With the default --log_every 10 the NaN at step 2 is read at step 4 (the epoch's end):
        the run stops naming step 2 and writes no checkpoint of the halted weights."""
        nan_at(2)
        result = cli("main", *TINY_RUN, "--output_dir", str(tmp_path / "run"), "--epoch", "1")
        assert_one_line_error(result, "at step 2", "invariance", "coding_rate")
        assert not ckpt.existing_checkpoints(tmp_path / "run")

    def test_skips_are_counted(self, cli, tmp_path: Path, nan_at) -> None:
        nan_at(2, 3)
        run = ["--output_dir", str(tmp_path / "run"), "--epoch", "1", "--log_every", "3"]
        result = cli("main", *TINY_RUN, *run, "--skip_nonfinite", "2")
        assert result.returncode == 0, result.stderr
        assert result.stderr.count("step skipped") == 2 and "(0 more may be skipped)" in result.stderr
        nan_at(2, 3)
        result = cli("main", *TINY_RUN, "--output_dir", str(tmp_path / "run2"), "--epoch", "1", "--skip_nonfinite", "1")
        assert_one_line_error(result, "at step 3")

    def test_epoch_checkpoint_is_written_once(self, cli, tmp_path: Path) -> None:
        result = cli("main", *TINY_RUN, "--output_dir", str(tmp_path / "run"), "--epoch", "2")
        assert result.returncode == 0, result.stderr
        folder = tmp_path / "run" / ckpt.CHECKPOINT_DIR
        assert os.path.samefile(folder / "1.pt", folder / ckpt.LAST)
        assert not os.path.samefile(folder / "0.pt", folder / ckpt.LAST)

    def test_compile_with_sync_bn_is_refused(self, cli, tmp_path: Path) -> None:
        result = cli("main", *TINY_RUN, "--compile", "--sync_bn", "--output_dir", str(tmp_path / "run"))
        assert_one_line_error(result, "--compile", "--sync_bn")


class TestLinkOrCopy:
    def test_copies_where_links_are_impossible(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        source = tmp_path / "0.pt"
        source.write_bytes(b"weights")
        (tmp_path / "last.pt").write_bytes(b"old")
        monkeypatch.setattr(ckpt.os, "link", lambda *a: (_ for _ in ()).throw(OSError("no links here")))
        ckpt.link_or_copy(source, tmp_path / "last.pt")
        assert (tmp_path / "last.pt").read_bytes() == b"weights"
        assert not os.path.samefile(source, tmp_path / "last.pt")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["0.pt", "last.pt"]


class FakeCuda:
    """torch.cuda as seen on a machine with `count` GPUs, recording set_rng_state calls."""

    def __init__(self, count: int) -> None:
        self.count, self.restored = count, []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: self.count)
        monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, index: self.restored.append(index))


class TestGpuBookkeeping:
    @pytest.mark.parametrize("saved, visible, restored", [(4, 2, [0, 1]), (1, 2, [0]), (2, 2, [0, 1])])
    def test_cuda_generator_states_fit_the_visible_gpus(self, monkeypatch, saved, visible, restored) -> None:
        state = {**ckpt.rng_state(), "cuda": [torch.zeros(16, dtype=torch.uint8)] * saved}
        fake = FakeCuda(visible)
        fake.install(monkeypatch)
        ckpt.set_rng_state(state)
        assert fake.restored == restored

    def test_auto_warns_when_a_gpu_is_present_but_unusable(self, monkeypatch, capsys) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        monkeypatch.setattr("plumbing.device.nvidia_gpu_present", lambda: True)
        assert resolve_device("auto") == torch.device("cpu")
        assert "NVIDIA GPU is present" in capsys.readouterr().err
        monkeypatch.setattr("plumbing.device.nvidia_gpu_present", lambda: False)
        resolve_device("auto")
        assert capsys.readouterr().err == ""

    def test_a_numbered_gpu_becomes_the_current_device(self, monkeypatch) -> None:
        chosen = []
        FakeCuda(2).install(monkeypatch)
        monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
        assert resolve_device("cuda:1") == torch.device("cuda", 1) and chosen == [torch.device("cuda", 1)]
        with pytest.raises(main_module.UserError, match="has 2 GPUs"):
            resolve_device("cuda:2")


class TestBatchesWithoutHostReads:
    def test_a_batched_step_of_images_held_on_the_device_reads_nothing(self, tmp_path: Path) -> None:
        """The step's image indices, the augmentation and the layout change read nothing back."""
        images = SyntheticShapes(train=True, num_per_class=8)  # 80 images, 10 steps of 8
        source = TrainingPatches(images, PatchRecipe.of("synthetic", "batched", 4, seed=0), ResumableSampler(80, 8), 0,
                                 torch.device("cpu"), torch.channels_last)
        source.set_epoch(1, start_step=3)
        batches = iter(source)
        with HostSyncs() as reads:
            x = next(batches)
        assert reads.syncs == [] and x.shape == (4 * 8, 3, 32, 32)


class TestPrecisionAndCompile:
    def test_a_bf16_run_trains_finite_and_its_checkpoint_evaluates_in_bf16(self, cli, tmp_path: Path) -> None:
        """Every step is read (--log_every 1) and the default guard stops at the first non-finite
        loss, so a clean exit means every loss was finite; the checkpoint then evaluates in bf16."""
        run = tmp_path / "run"
        result = cli("main", *TINY_RUN, "--precision", "bf16", "--epoch", "1", "--log_every", "1",
                     "--output_dir", str(run))
        assert result.returncode == 0, result.stderr
        state = torch.load(run / "save_models" / "last.pt", weights_only=False)
        assert state["step"] == 4 and state["args"]["precision"] == "bf16"
        assert all(torch.isfinite(v.float()).all() for v in state["model"].values())
        result = cli("evaluate", "--ckpt", str(run / "save_models" / "last.pt"), "--precision", "bf16",
                     "--train_subset", "40", "--test_subset", "40", "--test_patches", "2", "--linear_epochs", "2",
                     "--workers", "0")
        assert result.returncode == 0, result.stderr
        record = json.loads((run / "save_models" / "last.eval.json").read_text())
        assert record["precision"] == "bf16" and 0 <= record["knn"]["top1"] <= 100 and record["train_images"] == 40

    def test_a_compiled_step_computes_what_the_eager_step_does(self) -> None:
        """torch.compile of the encoder (inductor; skipped only where no compiler can run): two
        steps from the same weights and patches give the eager steps' losses and weights."""
        why = compiler_missing(torch.device("cpu"))
        if why:
            pytest.skip(why)
        eager, optimizer, batches = tiny_setup()
        compiled_model, compiled_optimizer, _ = tiny_setup()
        compiled = compile_model(compiled_model, torch.device("cpu"))
        criterion = EMPSSLLoss(200.0, 1.0, 0.2)
        for x in batches[:2]:
            ours = train_step(compiled, criterion, compiled_optimizer, x, P, guard=NonFiniteGuard(0, x.device))
            reference = train_step(eager, criterion, optimizer, x, P, guard=NonFiniteGuard(0, x.device))
            for name in reference:
                assert ours[name].item() == pytest.approx(reference[name].item(), rel=1e-4, abs=1e-4), name
        for a, b in zip(compiled_model.parameters(), eager.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
