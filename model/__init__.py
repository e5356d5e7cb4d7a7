"""Encoder and backbones of EMP-SSL."""
from model.encoder import Encoder, strip_module_prefix
from model.resnet import ARCHS, build_backbone

__all__ = ["ARCHS", "Encoder", "build_backbone", "strip_module_prefix"]
