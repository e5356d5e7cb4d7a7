"""scripts/export.py (the backbone as a torchvision resnet18 state dict) and hubconf.py (torch.hub)."""
from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torchvision
from conftest import ROOT, assert_one_line_error

from model import Encoder
from plumbing.checkpoint import save_checkpoint

HIDDEN, Z = 32, 16


def trained_like(arch: str, seed: int = 0) -> Encoder:
    """A random encoder whose BatchNorm statistics and affine parameters are not the defaults, in eval mode."""
    torch.manual_seed(seed)
    model = Encoder(arch, HIDDEN, Z)
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def save(model: Encoder, arch: str, path: Path) -> Path:
    """One of our training checkpoints of model."""
    save_checkpoint({"model": model.state_dict(), "args": {"arch": arch, "hidden_dim": HIDDEN, "z_dim": Z},
                     "epoch": 0, "step": 1}, path)
    return path


def torchvision_resnet18(cifar_stem: bool) -> nn.Module:
    """torchvision's resnet18 set up as the export's documentation says."""
    model = torchvision.models.resnet18()
    if cifar_stem:
        model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    model.fc = nn.Identity()
    return model


class TestExport:
    @pytest.mark.parametrize("arch,cifar_stem", [("resnet18-cifar", True), ("resnet18-imagenet", False)])
    def test_loads_strictly_into_torchvision_and_gives_our_features(self, cli, tmp_path: Path, arch: str,
                                                                      cifar_stem: bool) -> None:
        ours = trained_like(arch)
        out = tmp_path / "export" / "backbone.pt"
        result = cli("scripts.export", "--ckpt", str(save(ours, arch, tmp_path / "29.pt")), "--out", str(out))
        assert result.returncode == 0, result.stderr
        exported = torch.load(out, weights_only=True)
        assert exported["stem"] == ("cifar" if cifar_stem else "imagenet") and exported["hidden_dim"] == HIDDEN

        resnet = torchvision_resnet18(cifar_stem)
        resnet.load_state_dict(exported["backbone"], strict=True)
        head = nn.Sequential(nn.Linear(512, HIDDEN), nn.BatchNorm1d(HIDDEN), nn.ReLU())
        head.load_state_dict(exported["pre_feature"], strict=True)
        x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            feature = resnet.eval()(x)
            assert feature.shape == (2, 512)
            torch.testing.assert_close(feature, ours.backbone(x), rtol=0, atol=0)
            torch.testing.assert_close(head.eval()(feature), ours(x)[1], rtol=0, atol=0)
        if cifar_stem:  # the stem change is needed: the stock 7×7 conv1 does not take these weights
            with pytest.raises(RuntimeError, match="conv1.weight"):
                torchvision_resnet18(cifar_stem=False).load_state_dict(exported["backbone"])

    def test_resnet10_is_refused_with_one_line(self, cli, tmp_path: Path) -> None:
        torch.manual_seed(0)
        path = save(Encoder("resnet10-cifar", HIDDEN, Z), "resnet10-cifar", tmp_path / "0.pt")
        out = tmp_path / "backbone.pt"
        assert_one_line_error(cli("scripts.export", "--ckpt", str(path), "--out", str(out)), "resnet10-cifar")
        assert not out.exists()


class TestHub:
    def test_torch_hub_load_local_returns_the_encoder_offline(self, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
        ours = trained_like("resnet18-cifar", seed=2)
        official = {f"module.{k}": v for k, v in ours.state_dict().items()}  # a DataParallel state dict
        torch.save(official, tmp_path / "official.pt")

        def no_network(*args: object) -> None:
            raise AssertionError("torch.hub.load tried to use the network")

        monkeypatch.setattr(socket.socket, "connect", no_network)
        model = torch.hub.load(str(ROOT), "emp_ssl_resnet18", source="local", checkpoint=tmp_path / "official.pt")
        assert isinstance(model, Encoder) and not model.training
        x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            z, feature = model(x)
            reference = ours(x)
        assert z.shape == (3, Z) and feature.shape == (3, HIDDEN)
        torch.testing.assert_close(z, reference[0], rtol=0, atol=0)
        torch.testing.assert_close(feature, reference[1], rtol=0, atol=0)

    def test_hub_leaves_a_callers_same_named_modules_alone(self, tmp_path: Path) -> None:
        """A process that has its own `model`, `checkpoint`, `errors` and `utils` gets our encoder from
        torch.hub and keeps its modules: the same objects before and after, and `import model` after
        the load still gives its own. Run in a fresh interpreter, as a user's script would."""
        torch.save(trained_like("resnet18-cifar", seed=4).state_dict(), tmp_path / "official.pt")
        own = tmp_path / "user"
        own.mkdir()
        for name in ("model", "checkpoint", "errors", "utils"):
            (own / f"{name}.py").write_text(f"WHO = 'the user\\'s {name}'\n")
        script = own / "use_hub.py"
        script.write_text(
            "import sys, torch\n"
            "import model, checkpoint, errors, utils\n"
            "mine = {m.__name__: m for m in (model, checkpoint, errors, utils)}\n"
            f"net = torch.hub.load({str(ROOT)!r}, 'emp_ssl_resnet18', source='local', "
            f"checkpoint={str(tmp_path / 'official.pt')!r})\n"
            "assert type(net).__name__ == 'Encoder' and type(net).__module__ == 'model.encoder'\n"
            "assert all(sys.modules[name] is module for name, module in mine.items())\n"
            "assert not [n for n in sys.modules if n.startswith(('model.', 'plumbing'))], sorted(sys.modules)\n"
            "import model as again\n"
            "assert again.WHO == \"the user's model\"\n"
            "z, feature = net(torch.randn(2, 3, 32, 32))\n"
            "print('ok', tuple(z.shape), tuple(feature.shape))\n")
        done = subprocess.run([sys.executable, str(script)], cwd=own, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"ok (2, {Z}) (2, {HIDDEN})"
