"""Device names and memory layouts."""

from __future__ import annotations

import pytest
import torch

from dnd.devices import choose_memory_format, resolve_device
from dnd.errors import DnDError
from tests.helpers import ChannelMixer


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(DnDError, match="not valid"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(DnDError, match="CUDA is not available"):
            resolve_device("cuda")


def test_choose_memory_format_by_device_and_setting():
    conv = ChannelMixer()
    assert choose_memory_format(conv, torch.device("cuda"), "auto") == torch.channels_last
    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 2))
    assert choose_memory_format(linear, torch.device("cuda"), "auto") == torch.contiguous_format
    assert choose_memory_format(linear, torch.device("cpu"), "auto") == torch.contiguous_format
    assert choose_memory_format(conv, torch.device("cuda"), "contiguous") == torch.contiguous_format
