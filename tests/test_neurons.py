"""Parsing ``--neurons`` selections."""

from __future__ import annotations

import pytest

from dnd.errors import DnDError
from dnd.neurons import parse_neurons


def test_ranges_and_single_neurons_are_sorted_and_deduplicated():
    assert parse_neurons("0-3,7, 5") == [0, 1, 2, 3, 5, 7]
    assert parse_neurons("2,1-2") == [1, 2]


def test_nothing_means_every_neuron():
    assert parse_neurons(None) is None
    assert parse_neurons("  ") is None


@pytest.mark.parametrize("bad", ["a-b", "5-2", "-1"])
def test_bad_specs_are_clear_errors(bad):
    with pytest.raises(DnDError, match="--neurons"):
        parse_neurons(bad)
