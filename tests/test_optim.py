"""The optimisers of --optimizer: LARS against a hand-computed update, the shared parameter groups,
the official path bit for bit as before the seam, and each optimiser's state in the memory plan."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_RUN, assert_one_line_error, optimizer_of

import main
from build import build_scheduler
from engine import train_step
from lars import LARS
from loss import EMPSSLLoss
from model import Encoder
from optim import OPTIMIZERS, param_groups, state_copies
from plumbing import checkpoint as ckpt
from plumbing.memory_plan import plan_memory, tensor_bytes


def hand_update(w, g, lr, wd, eta, momentum_buf=None, momentum=0.9):
    """The documented rule for one ≥2-d tensor, then Nesterov SGD without weight decay (first step)."""
    w_norm, g_norm = w.norm(), g.norm()
    trust = min((eta * w_norm / (g_norm + wd * w_norm + 1e-8) / lr).item(), 1.0)
    d = (g + wd * w) * trust
    buf = d.clone()  # first momentum step: buf = d
    return w - lr * (d + momentum * buf)


class TestLARS:
    def test_one_step_matches_hand_computation(self) -> None:
        torch.manual_seed(0)
        layer = torch.nn.Linear(6, 4)
        x = torch.randn(8, 6)
        layer(x).pow(2).sum().backward()
        w, gw = layer.weight.detach().clone(), layer.weight.grad.clone()
        b, gb = layer.bias.detach().clone(), layer.bias.grad.clone()
        opt = LARS(layer.parameters(), lr=0.3, weight_decay=1e-4, eta=0.005)
        opt.step()
        torch.testing.assert_close(layer.weight.detach(), hand_update(w, gw, 0.3, 1e-4, 0.005))
        # 1-d parameter: plain Nesterov SGD, no weight decay and no trust ratio
        torch.testing.assert_close(layer.bias.detach(), b - 0.3 * (gb + 0.9 * gb))
        assert opt.param_groups[0]["weight_decay"] == 1e-4  # switched off for SGD's step, then restored

    def test_every_tensor_gets_its_own_ratio(self) -> None:
        torch.manual_seed(1)
        net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
        (net(torch.randn(8, 6)) * 10).pow(2).sum().backward()
        net[2].weight.data.mul_(7.0)  # very different norms: a shared or misordered ratio would show
        before = [(p.detach().clone(), p.grad.clone()) for p in (net[0].weight, net[2].weight)]
        LARS(net.parameters(), lr=0.3, weight_decay=1e-4, eta=0.005).step()
        for p, (w, g) in zip((net[0].weight, net[2].weight), before):
            torch.testing.assert_close(p.detach(), hand_update(w, g, 0.3, 1e-4, 0.005))

    def test_trust_ratio_clips_at_one(self) -> None:
        w = torch.nn.Parameter(torch.full((3, 3), 10.0))
        w.grad = torch.full((3, 3), 1e-3)  # η‖w‖/‖g‖/lr ≫ 1, so the ratio clips to 1
        opt = LARS([w], lr=0.1, weight_decay=0.0, eta=0.005, momentum=0.0, nesterov=False)
        opt.step()
        torch.testing.assert_close(w.detach(), torch.full((3, 3), 10.0 - 0.1 * 1e-3))

    def test_unclipped_ratio_scales_the_step(self) -> None:
        w = torch.nn.Parameter(torch.ones(2, 2))
        w.grad = torch.full((2, 2), 4.0)  # ‖w‖ = 2, ‖g‖ = 8: ratio = 0.005·2/8/0.5 = 0.0025
        opt = LARS([w], lr=0.5, weight_decay=0.0, eta=0.005, momentum=0.0, nesterov=False)
        opt.step()
        torch.testing.assert_close(w.detach(), torch.full((2, 2), 1.0 - 0.5 * 4.0 * 0.0025))

    def test_zero_weight_gets_plain_sgd_without_decay(self) -> None:
        w = torch.nn.Parameter(torch.zeros(2, 2))
        w.grad = torch.ones(2, 2)
        opt = LARS([w], lr=0.1, weight_decay=0.5, eta=0.005, momentum=0.0, nesterov=False)
        opt.step()
        torch.testing.assert_close(w.detach(), torch.full((2, 2), -0.1))


def _net_and_batches(seed: int) -> tuple[torch.nn.Module, list[torch.Tensor]]:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.BatchNorm1d(5), torch.nn.Linear(5, 3))
    return net, [torch.randn(8, 6) for _ in range(3)]


class TestSGDStep:
    def test_equals_adapted_gradients_then_torch_sgd_without_weight_decay(self) -> None:
        """Three steps of LARS.step equal, bit for bit, the trust-ratio gradients handed to
        torch.optim.SGD (Nesterov, no weight decay): SGD's own decay is off during the step."""
        ours, batches = _net_and_batches(2)
        ref, _ = _net_and_batches(2)
        lars = LARS(ours.parameters(), lr=0.3, weight_decay=1e-4, eta=0.005)
        adapter = LARS(ref.parameters(), lr=0.3, weight_decay=1e-4, eta=0.005)
        sgd = torch.optim.SGD(ref.parameters(), lr=0.3, momentum=0.9, nesterov=True, weight_decay=0.0)
        for x in batches:
            for net, opt in ((ours, lars), (ref, adapter)):
                opt.zero_grad()
                net(x).pow(2).sum().backward()
            lars.step()
            adapter._adapt_gradients()
            sgd.step()
        for a, b in zip(ours.parameters(), ref.parameters()):
            assert torch.equal(a, b)


def tiny_encoder(seed: int = 0) -> Encoder:
    torch.manual_seed(seed)
    return Encoder("resnet10-cifar", 64, 32)


class TestParamGroups:
    def test_weights_decay_and_every_bias_and_normalisation_weight_does_not(self) -> None:
        model = tiny_encoder()
        decay, no_decay = param_groups(model, weight_decay=1e-4)
        assert (decay["weight_decay"], no_decay["weight_decay"]) == (1e-4, 0.0)
        named = dict(model.named_parameters())
        ids = {id(p): name for name, p in named.items()}
        one_d = {ids[id(p)] for p in no_decay["params"]}
        norms = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.LayerNorm)
        assert one_d == {f"{prefix}.{name}" for prefix, module in model.named_modules()
                         for name, _ in module.named_parameters(recurse=False)
                         if name == "bias" or isinstance(module, norms)}  # named by what they are, not by ndim
        assert len(decay["params"]) + len(one_d) == len(named) and all(p.ndim >= 2 for p in decay["params"])

    @pytest.mark.parametrize("name", OPTIMIZERS)
    def test_every_optimiser_gets_the_groups_and_keeps_their_decay(self, name: str) -> None:
        optimizer = optimizer_of(name, tiny_encoder())
        assert [group["weight_decay"] for group in optimizer.param_groups] == [1e-4, 0.0]  # not AdamW's 0.01
        assert [group["lr"] for group in optimizer.param_groups] == [OPTIMIZERS[name].lr] * 2

    @pytest.mark.parametrize("name,shrink", [("sgd", 0.3 * 1e-4 * (1 + 0.9)), ("adamw", 1e-3 * 1e-4)])
    def test_with_zero_gradients_only_the_weights_move_by_their_decay(self, name: str, shrink: float) -> None:
        """SGD: w − lr·(wd·w + 0.9·wd·w) (Nesterov, first step); AdamW: w·(1 − lr·wd) (zero moments
        move nothing). torch's optimisers on model.parameters() would decay the 1-d tensors too."""
        model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
        before = [p.detach().clone() for p in model.parameters()]
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        optimizer_of(name, model).step()
        for p, old in zip(model.parameters(), before, strict=True):
            expected = old * (1 - shrink) if p.ndim >= 2 else old
            torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=0)
            assert torch.equal(p.detach(), old) == (p.ndim < 2)

    def test_lr_and_eta_default_to_the_optimisers_own(self) -> None:
        """(main.py refuses --lars_eta with sgd or adamw: tests/test_main.py.)"""
        parse = main.get_args_parser().parse_args
        assert (parse([]).lr, parse([]).lars_eta) == (0.3, 0.005)  # the official LARS
        assert (parse(["--optimizer", "adamw"]).lr, parse(["--optimizer", "adamw"]).lars_eta) == (1e-3, None)
        assert parse(["--optimizer", "sgd", "--lr", "0.1"]).lr == 0.1 and parse(["--lars_eta", "0.01"]).lars_eta == 0.01


class TestOfficialPathUnchanged:
    def test_lars_from_the_groups_trains_bit_for_bit_as_lars_of_all_parameters(self) -> None:
        """Three cosine-scheduled steps through build_optimizer(--optimizer lars, the defaults) equal
        those of the call main.py made before the seam, LARS(model.parameters(), 0.3, 1e-4, 0.005):
        every weight, BatchNorm statistic and momentum buffer, with torch.equal."""
        models = tiny_encoder(), tiny_encoder()
        optimizers = (optimizer_of("lars", models[0]),
                      LARS(models[1].parameters(), lr=0.3, weight_decay=1e-4, eta=0.005))
        schedulers = [build_scheduler(optimizer, total_steps=4) for optimizer in optimizers]
        torch.manual_seed(1)
        for x in [torch.randn(3 * 8, 3, 32, 32) for _ in range(3)]:  # (P·B, C, H, W)
            for model, optimizer, scheduler in zip(models, optimizers, schedulers):
                train_step(model, EMPSSLLoss(200.0, 1.0, 0.2), optimizer, x, 3)
                scheduler.step()
        ours, before = (list(m.state_dict().values()) for m in models)
        assert all(torch.equal(a, b) for a, b in zip(ours, before, strict=True))
        for p, q in zip(models[0].parameters(), models[1].parameters(), strict=True):
            assert torch.equal(optimizers[0].state[p]["momentum_buffer"], optimizers[1].state[q]["momentum_buffer"])
        conv1 = "backbone.conv1.weight"
        assert not torch.equal(models[0].state_dict()[conv1], tiny_encoder().state_dict()[conv1])  # it trained


class TestMemoryPlan:
    @pytest.mark.parametrize("name,copies", [("lars", 1), ("sgd", 1), ("adamw", 2)])
    def test_state_copies_are_counted_from_one_step(self, name: str, copies: int) -> None:
        generator = torch.get_rng_state()
        assert state_copies(lambda module: optimizer_of(name, module)) == copies
        assert torch.equal(torch.get_rng_state(), generator)  # the run's random draws are untouched

    def test_adamw_needs_its_second_moment_and_the_guards_copy_of_it_more_than_lars(self) -> None:
        model, sample = tiny_encoder(), torch.randn(4, 3, 32, 32)
        fixed = {name: plan_memory(model, state_copies(lambda module: optimizer_of(name, module)),
                                   sample, 3, None).fixed for name in ("lars", "adamw")}
        assert fixed["adamw"] - fixed["lars"] == 2 * tensor_bytes(list(model.parameters()))


class TestRuns:
    @pytest.mark.parametrize("name", OPTIMIZERS)
    def test_each_optimiser_trains_in_slices_and_records_its_learning_rate(self, cli, tmp_path: Path,
                                                                          name: str) -> None:
        result = cli("main", *TINY_RUN, "--optimizer", name, "--max_steps", "2", "--log_every", "1",
                     "--patch_chunks", "2", "--output_dir", str(tmp_path / "run"))
        assert result.returncode == 0, result.stderr
        state = torch.load(tmp_path / "run" / ckpt.CHECKPOINT_DIR / ckpt.LAST, weights_only=False)
        record = json.loads((tmp_path / "run" / "args.json").read_text())["args"]
        for args in (state["args"], record):
            assert (args["optimizer"], args["lr"], args["lars_eta"]) == (name, OPTIMIZERS[name].lr,
                                                                         OPTIMIZERS[name].eta)
        assert [group["weight_decay"] for group in state["optimizer"]["param_groups"]] == [1e-4, 0.0]
        assert all(torch.isfinite(v.float()).all() for v in state["model"].values())

    def test_a_checkpoint_with_one_parameter_group_is_refused_in_one_line(self, cli, tmp_path: Path) -> None:
        """last.pt written before param_groups held LARS(model.parameters()): one group, not two."""
        run = tmp_path / "run"
        assert cli("main", *TINY_RUN, "--max_steps", "1", "--output_dir", str(run)).returncode == 0
        last = run / ckpt.CHECKPOINT_DIR / ckpt.LAST
        state = torch.load(last, weights_only=False)
        state["optimizer"] = LARS(tiny_encoder().parameters(), lr=0.3, weight_decay=1e-4, eta=0.005).state_dict()
        torch.save(state, last)
        result = cli("main", *TINY_RUN, "--max_steps", "2", "--resume", "--output_dir", str(run))
        assert_one_line_error(result, "last.pt", "parameter groups", "start a new run")
