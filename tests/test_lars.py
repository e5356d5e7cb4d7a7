"""LARS-wrapped SGD against a hand-computed update."""
import torch

from lars import LARS


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
