"""The hooked target network: layer lookup, capture, layer listing, memory layout, identity of a module from Python."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torch import nn

from dnd.backends.target_network import TargetNetwork
from dnd.errors import DnDError
from tests.helpers import ChannelMixer, to_tensor


def test_unknown_layer_lists_close_module_paths():
    module = nn.Sequential(nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU()), nn.Flatten())
    network = TargetNetwork("tiny", module, to_tensor)
    with pytest.raises(DnDError) as error:
        network.layer("0.O")
    near = str(error.value).split("Closest module paths: ")[1].split(". ")[0].split(", ")
    assert {"0.0", "0.1"} <= set(near)
    with pytest.raises(DnDError, match=r"Closest module paths: 0, 1\."):
        network.layer("zzz")


def test_capture_stops_after_the_last_requested_layer():
    class Tail(nn.Module):
        calls = 0

        def forward(self, x):
            Tail.calls += 1
            return x

    network = TargetNetwork("net", nn.Sequential(nn.Conv2d(3, 2, 1), Tail()), to_tensor)
    outputs = network.capture(torch.rand(2, 3, 4, 4), ["0"])
    assert outputs["0"].shape == (2, 2, 4, 4)
    assert Tail.calls == 0


def test_describe_layers_gives_output_shapes():
    network = TargetNetwork("mixer", ChannelMixer(), to_tensor)
    rows = network.describe_layers(Image.new("RGB", (6, 5)))
    assert rows == [("conv", "Conv2d", "2 × 5 × 6"), ("head", "Linear", "3")]


def test_memory_format_is_an_execution_option():
    conv = TargetNetwork("mixer", ChannelMixer(), to_tensor)
    assert conv.to("cpu").memory_format == torch.channels_last  # auto: channels-last for convolutions
    assert conv.to("cpu", "contiguous").memory_format == torch.contiguous_format
    assert conv.to("cpu", "channels_last").memory_format == torch.channels_last
    assert conv.module.conv.weight.is_contiguous(memory_format=torch.channels_last)
    pixels = torch.rand(2, 3, 4, 4)
    assert conv.place(pixels).is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(conv.capture(pixels, ["head"])["head"], ChannelMixer()(pixels))


def test_a_network_with_batch_norm_passed_from_python_gets_a_parameter_hash():
    module = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))  # num_batches_tracked is a 0-d tensor
    first, second = TargetNetwork("bn", module, to_tensor), TargetNetwork("bn", module, to_tensor)
    assert first.identity == second.identity and len(first.identity["parameters"]) == 16
