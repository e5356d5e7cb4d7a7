"""Encoder and backbones of EMP-SSL."""
from model.encoder import ENCODER_DEFAULTS, Encoder
from model.resnet import ARCHS, RESNET18_ARCHS, build_backbone

__all__ = ["ARCHS", "ENCODER_DEFAULTS", "RESNET18_ARCHS", "Encoder", "build_backbone"]
