"""Reductions of a layer's output inside the capture hook (:meth:`TargetNetwork.capture`), so that full feature maps
of a whole batch never pile up: one value per neuron or unit (stage 1's summaries), or the maps of chosen units."""

from __future__ import annotations

from collections.abc import Callable

import torch

from dnd.errors import DnDError
from dnd.units import UnitMap


def summary_reducer(
    summary: str, tokens: str, units: UnitMap | None = None
) -> Callable[[str, torch.Tensor], torch.Tensor]:
    """A ``reduce`` for :meth:`TargetNetwork.capture` that summarises every layer like stage 1: ``[B, C]`` per
    neuron, or ``[B, n_units]`` per unit of ``units`` (pass the target's :attr:`TargetNetwork.units`)."""

    def reduce(layer: str, output: torch.Tensor) -> torch.Tensor:
        if units is None:
            return reduce_positions(output, summary, tokens)
        return units.summaries(output, layer, lambda maps: reduce_positions(maps, summary, tokens))

    return reduce


def unit_maps_reducer(units: UnitMap | None, selected: list[int]) -> Callable[[str, torch.Tensor], torch.Tensor]:
    """A ``reduce`` for :meth:`TargetNetwork.capture` that keeps the maps of the ``selected`` units (neurons when
    ``units`` is None) in the layer's layout: ``[B, s, H, W]``, tokens ``[B, T, s]``, or ``[B, s]``."""

    def reduce(layer: str, output: torch.Tensor) -> torch.Tensor:
        if units is not None:
            return units.maps(output, layer, selected)
        return output[..., selected] if output.ndim == 3 else output[:, selected]

    return reduce


def unit_output_shape(units: UnitMap | None, shape: list[int]) -> list[int]:
    """The per-image shape of a layer's unit maps, for a layer output of per-image ``shape``."""
    return shape if units is None else units.output_shape(shape)


def reduce_positions(output: torch.Tensor, summary: str, tokens: str) -> torch.Tensor:
    """One value per neuron ``[B, C]`` (float32) of a layer output, reduced over its positions.

    Conv maps ``[B, C, H, W]``: spatial mean or max. Transformer tokens ``[B, T, C]``: the CLS token (token 0) or
    the mean over tokens. Linear outputs ``[B, C]`` are already one value per neuron.
    """
    if output.ndim == 4:
        reduced = output.mean(dim=(2, 3)) if summary == "mean" else output.amax(dim=(2, 3))
    elif output.ndim == 3:
        reduced = output[:, 0] if tokens == "cls" else output.mean(dim=1)
    elif output.ndim == 2:
        reduced = output
    else:
        raise DnDError(f"cannot summarise a layer output of shape {tuple(output.shape)} into one value per neuron")
    return reduced.float()
