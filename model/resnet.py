"""Backbones: torchvision ResNet-18 variants and the official small ResNet-10 for CIFAR.

Every backbone maps images (N, 3, H, W) to features (N, F) and is returned with F.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models import resnet18

RESNET18_ARCHS = ("resnet18-cifar", "resnet18-imagenet", "resnet18-tinyimagenet")  # torchvision's resnet18, fc = Identity
ARCHS = (*RESNET18_ARCHS, "resnet10-cifar")


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with a residual shortcut (1×1 conv when the shape changes)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet10CIFAR(nn.Module):
    """The official small CIFAR network: 3×3 stem (32 channels) with max-pool, one basic block
    per stage at widths 32-64-128-256, global average pool to a 256-d feature.

    Parameter names follow the official `Resnet10CIFAR` so its weights load unchanged.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        widths, strides, in_planes = (32, 64, 128, 256), (1, 2, 2, 2), 32
        for i, (width, stride) in enumerate(zip(widths, strides), start=1):
            setattr(self, f"layer{i}", nn.Sequential(BasicBlock(in_planes, width, stride)))
            in_planes = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pool(F.relu(self.bn1(self.conv1(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return out.mean((2, 3))  # (N, 256)


def build_backbone(arch: str) -> tuple[nn.Module, int]:
    """Return (backbone, feature dimension) for one of :data:`ARCHS`.

    resnet18-cifar replaces the stem by a 3×3 stride-1 convolution and drops the max-pool;
    resnet18-imagenet and resnet18-tinyimagenet keep torchvision's stem (the latter is the
    official variant with adaptive average pooling, which torchvision already uses).
    """
    if arch == "resnet10-cifar":
        return ResNet10CIFAR(), 256
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    net = resnet18()
    if arch == "resnet18-cifar":
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    return net, 512
