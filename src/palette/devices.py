"""Devices: which one a run uses, and the process-wide switches of CUDA. Training and inference both need these;
they live here so that sampling does not import the trainer."""

from __future__ import annotations

import torch

from .errors import ArgumentError


def resolve_device(name: str, argument: str = "device") -> torch.device:
    """``auto`` picks CUDA when present; asking for an absent GPU is an error naming ``argument``, not a silent CPU
    run."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ArgumentError(argument, f"{name}: no CUDA GPU is available here; use cpu (or auto)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ArgumentError(argument, f"{name}: MPS is not available here; use cpu (or auto)")
    return device


def configure_cuda(cudnn_benchmark: bool = True, tf32: bool = True) -> None:
    """PyTorch's process-wide CUDA switches for a run with fixed shapes: cuDNN's algorithm search
    (``torch.backends.cudnn.benchmark``) and TF32 for float32 matmuls and convolutions. Called only for CUDA devices."""
    torch.backends.cudnn.benchmark = cudnn_benchmark
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
