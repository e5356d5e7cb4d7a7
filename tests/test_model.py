"""Encoder shapes for every backbone, and official checkpoints mapping onto our names."""
import pytest
import torch
import torch.nn as nn
from torchvision.models import resnet18

from model import ARCHS, Encoder
from plumbing.checkpoint import strip_module_prefix


class OfficialLayoutEncoder(nn.Module):
    """The official encoder's structure, rebuilt from torchvision for resnet18-cifar: the names
    of its parameters are what official checkpoints hold (behind DataParallel's `module.`)."""

    def __init__(self, hidden_dim: int, z_dim: int) -> None:
        super().__init__()
        self.backbone = resnet18()
        self.backbone.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.backbone.maxpool = nn.Identity()
        self.backbone.fc = nn.Identity()
        self.pre_feature = nn.Sequential(nn.Linear(512, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU())
        self.projection = nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.BatchNorm1d(hidden_dim),
                                        nn.ReLU(), nn.Linear(hidden_dim, z_dim))


class TestEncoder:
    @pytest.mark.parametrize("arch,size", [("resnet18-cifar", 32), ("resnet10-cifar", 32),
                                           ("resnet18-imagenet", 64), ("resnet18-tinyimagenet", 64)])
    def test_output_shapes_and_the_projection_as_it_is(self, arch: str, size: int) -> None:
        """z is the projection of the feature, not normalised: the objective owns that (loss.py)."""
        model = Encoder(arch, hidden_dim=64, z_dim=16).eval()
        z, feature = model(torch.randn(3, 3, size, size))
        assert z.shape == (3, 16) and feature.shape == (3, 64)
        assert torch.equal(z, model.projection(feature))
        assert not torch.allclose(z.norm(dim=1), torch.ones(3), rtol=0.01)
        assert (feature >= 0).all()  # pre_feature ends in a ReLU

    def test_features_are_forwards_pre_feature_without_the_projection(self) -> None:
        torch.manual_seed(0)
        model = Encoder("resnet10-cifar", hidden_dim=32, z_dim=8).eval()
        calls = []
        model.projection.register_forward_hook(lambda module, inputs, output: calls.append(output.shape))
        x = torch.randn(4, 3, 32, 32)
        feature = model.features(x)
        assert calls == [] and feature.shape == (4, 32)
        torch.testing.assert_close(feature, model(x)[1], rtol=0, atol=0)
        assert calls == [(4, 8)]  # the hook sees forward's projection

    def test_every_arch_is_tested(self) -> None:
        """The parametrisation of test_output_shapes_and_the_projection_as_it_is names every arch of ARCHS."""
        (marker,) = [m for m in self.test_output_shapes_and_the_projection_as_it_is.pytestmark
                     if m.name == "parametrize"]
        assert marker.args[0] == "arch,size"
        assert sorted(arch for arch, _ in marker.args[1]) == sorted(ARCHS)

    def test_cifar_stem_keeps_resolution(self) -> None:
        backbone = Encoder("resnet18-cifar", 64, 16).backbone
        assert backbone.conv1.kernel_size == (3, 3) and backbone.conv1.stride == (1, 1)
        assert isinstance(backbone.maxpool, nn.Identity)

    def test_resnet10_has_the_official_small_layout(self) -> None:
        state = Encoder("resnet10-cifar", 64, 16).state_dict()
        assert state["backbone.conv1.weight"].shape == (32, 3, 3, 3)
        assert state["backbone.layer2.0.shortcut.0.weight"].shape == (64, 32, 1, 1)
        assert state["backbone.layer4.0.conv2.weight"].shape == (256, 256, 3, 3)
        assert state["pre_feature.0.weight"].shape == (64, 256)


class TestOfficialCheckpoint:
    def test_dataparallel_state_dict_loads_strictly_and_gives_same_outputs(self) -> None:
        torch.manual_seed(0)
        official = nn.DataParallel(OfficialLayoutEncoder(hidden_dim=32, z_dim=8))
        state = official.state_dict()
        assert all(k.startswith("module.") for k in state)
        ours = Encoder("resnet18-cifar", hidden_dim=32, z_dim=8)
        ours.load_state_dict(strip_module_prefix(state), strict=True)
        ours.eval()
        official.module.eval()
        x = torch.randn(2, 3, 32, 32)
        feature = official.module.pre_feature(official.module.backbone(x))
        torch.testing.assert_close(ours(x)[1], feature)
