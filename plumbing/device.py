"""The device a command computes on: --device auto, cpu, cuda or cuda:N."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch

from plumbing.errors import UserError


def nvidia_gpu_present() -> bool:
    """Whether the machine has an NVIDIA driver loaded (whatever PyTorch makes of it)."""
    return Path("/proc/driver/nvidia/version").exists() or shutil.which("nvidia-smi") is not None


def resolve_device(name: str) -> torch.device:
    """auto → cuda when PyTorch can use it, else cpu; cuda:N also becomes the current CUDA device.

    An unavailable CUDA device is a UserError. When auto falls back to the CPU although an NVIDIA
    GPU is present (typically a driver older than the CUDA of the PyTorch wheel), one warning on
    stderr says so instead of a silent CPU run.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if nvidia_gpu_present():
            print(f"warning: an NVIDIA GPU is present but this PyTorch (CUDA {torch.version.cuda}) cannot use it, "
                  f"often because the driver is older than the wheel's CUDA: running on the CPU; install the "
                  f"PyTorch build for your driver, or pass --device cpu", file=sys.stderr)
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UserError(f"--device {name!r} is not a device: use auto, cpu, cuda or cuda:N") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for CUDA but this machine has no GPU: use --device cpu")
    if device.type == "cuda" and device.index is not None:
        if device.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} GPUs, numbered from 0")
        torch.cuda.set_device(device)  # kernels, generators and cuDNN handles default to this GPU
    return device
