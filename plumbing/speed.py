"""Speed settings of the encoder: mixed precision, memory layout and compilation.

Precision policy: ``--precision bf16`` autocasts the encoder's forward to bfloat16; the
embeddings are cast back to float32 before the loss. The coding rate guarantees its own
precision: it forms its Gram matrix in float32 with true float32 products (no TF32), forward and
backward, whatever the process-wide setting (loss.py, :func:`loss.cuda_matmul_precision`), so
this module leaves the process's float32 matmul setting alone (PyTorch's default: no TF32;
evaluate.py allows TF32 for its probes under ``--precision bf16``). cuDNN convolutions may use
TF32 as PyTorch allows by default (and as the official float32 runs did).
"""
from __future__ import annotations

import importlib.util
import os
import shutil

import torch
import torch.nn as nn

from plumbing.errors import UserError

AMP_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}


def compiler_missing(device: torch.device) -> str | None:
    """Why torch.compile cannot work on this device, or None: the CPU backend needs a C++
    compiler, the CUDA backend needs Triton."""
    if device.type == "cuda":
        return None if importlib.util.find_spec("triton") else "Triton is not installed (pip install triton)"
    compilers = [os.environ.get("CXX"), "g++", "c++", "clang++"]
    if any(c and shutil.which(c) for c in compilers):
        return None
    return "no C++ compiler (g++ or clang++) was found, and the CPU backend needs one"


def memory_format(channels_last: bool) -> torch.memory_format:
    """The layout of --channels_last: channels-last, else contiguous (NCHW)."""
    return torch.channels_last if channels_last else torch.contiguous_format


def prepare_model(model: nn.Module, device: torch.device, channels_last: bool) -> None:
    """Allow TF32 in cuDNN convolutions (PyTorch's default) and, if asked, apply the channels-last
    layout (in place; before any DistributedDataParallel wrapper is built around the model). The
    float32 matmul setting is left as it is: the coding rate scopes its own."""
    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = True  # PyTorch's default for convolutions
    if channels_last:
        model.to(memory_format=torch.channels_last)


def compile_model(net: nn.Module, device: torch.device) -> nn.Module:
    """torch.compile(net), which shares its parameters; a UserError when no compiler can run."""
    why = compiler_missing(device)
    if why:
        raise UserError(f"--compile cannot run on {device}: {why}; install it or drop --compile")
    return torch.compile(net)
