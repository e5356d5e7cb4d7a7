"""Encoder and backbones of EMP-SSL."""
from model.encoder import ENCODER_DEFAULTS, Encoder
from model.resnet import ARCHS, build_backbone

__all__ = ["ARCHS", "ENCODER_DEFAULTS", "Encoder", "build_backbone"]
