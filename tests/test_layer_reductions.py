"""Reducing a layer's output to one value per neuron."""

from __future__ import annotations

import pytest
import torch

from dnd.errors import DnDError
from dnd.layer_reductions import reduce_positions


def test_reduce_positions_by_output_rank():
    maps = torch.arange(2 * 3 * 2 * 2, dtype=torch.float).view(2, 3, 2, 2)
    assert torch.equal(reduce_positions(maps, "mean", "cls"), maps.mean(dim=(2, 3)))
    assert torch.equal(reduce_positions(maps, "max", "cls"), maps[:, :, 1, 1])
    tokens = torch.rand(2, 5, 3)
    assert torch.equal(reduce_positions(tokens, "mean", "cls"), tokens[:, 0])
    assert torch.allclose(reduce_positions(tokens, "mean", "mean"), tokens.mean(dim=1))
    with pytest.raises(DnDError, match="cannot summarise"):
        reduce_positions(torch.rand(2, 3, 4, 5, 6), "mean", "cls")
