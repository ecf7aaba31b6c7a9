"""Where a run computes: the device a config names and the memory layout a network runs in there."""

from __future__ import annotations

import torch
from torch import nn

from dnd.errors import DnDError


def resolve_device(device: str, gpu: int = 0) -> torch.device:
    """The device ``device`` (auto, cpu, cuda or cuda:N) names; ``auto`` and a bare ``cuda`` mean GPU ``gpu`` (the
    process's local rank in a job of several processes)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise DnDError(f"device {device!r} is not valid: use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise DnDError(f"device {device!r} requested but CUDA is not available here: use device=cpu or auto")
    if resolved.type == "cuda" and resolved.index is None and gpu:
        if gpu >= torch.cuda.device_count():
            raise DnDError(
                f"this is process {gpu} on this machine but only {torch.cuda.device_count()} GPU(s) are visible: "
                f"start at most that many processes per machine (torchrun --nproc_per_node)"
            )
        resolved = torch.device("cuda", gpu)
    return resolved


def choose_memory_format(module: nn.Module, device: torch.device, setting: str) -> torch.memory_format:
    """The layout ``setting`` (``execution.memory_format``) names for ``module`` on ``device``. auto: channels-last
    for a network with 2-d convolutions on the CPU (faster there, see :mod:`dnd.cpu`) and on CUDA (where
    mixed-precision convolutions run faster in it), the default layout otherwise."""
    from dnd.cpu import memory_format

    if setting == "channels_last":
        return torch.channels_last
    if setting == "contiguous":
        return torch.contiguous_format
    if device.type == "cuda":
        convolutional = any(isinstance(layer, nn.Conv2d) for layer in module.modules())
        return torch.channels_last if convolutional else torch.contiguous_format
    return memory_format(module, device)
