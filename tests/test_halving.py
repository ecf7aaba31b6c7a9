"""Batches that run out of GPU memory are halved and retried; CUDA's out-of-memory error is simulated on the CPU."""

from __future__ import annotations

import pytest
import torch

from dnd.backends.target_network import TargetNetwork
from dnd.errors import DnDError
from dnd.halving import FittingBatches, joined_lists
from tests.helpers import ChannelMixer, to_tensor


class SmallGpu(ChannelMixer):
    """ChannelMixer on a "GPU" that holds at most ``capacity`` images: bigger batches raise CUDA's OOM error."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity, self.sizes = capacity, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(len(x))
        if len(x) > self.capacity:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().forward(x)


def test_a_batch_too_big_is_halved_and_the_size_that_fits_is_kept():
    network = TargetNetwork("small-gpu", SmallGpu(capacity=3), to_tensor)
    pixels = torch.rand(10, 3, 4, 4)
    captured = network.capture(pixels, ["conv"])["conv"]
    assert network.module.sizes == [10, 5, 2, 2, 2, 2, 2]  # 10 fails, then 5; 2 fits for the rest
    expected = torch.cat([ChannelMixer().conv(pixels[i : i + 1]) for i in range(10)])
    torch.testing.assert_close(captured, expected)
    network.module.sizes.clear()
    network.capture(pixels[:4], ["conv"])
    assert network.module.sizes == [2, 2]  # later batches start at the size that fitted


def test_one_item_that_does_not_fit_is_a_clear_error():
    network = TargetNetwork("tiny-gpu", SmallGpu(capacity=0), to_tensor)
    with pytest.raises(DnDError, match=r"ran out of GPU memory on a single item .*--set device=cpu"):
        network.capture(torch.rand(2, 3, 4, 4), ["conv"])


def test_other_errors_are_not_retried():
    fitting = FittingBatches("captioner")

    def broken(items):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        fitting.run(broken, [1, 2, 3], joined_lists)
    assert fitting.limit is None

    def small(items):
        if len(items) > 1:
            raise RuntimeError("CUDA error: out of memory")  # how some libraries word it
        return [item * 2 for item in items]

    assert fitting.run(small, [1, 2, 3], joined_lists) == [2, 4, 6] and fitting.limit == 1
