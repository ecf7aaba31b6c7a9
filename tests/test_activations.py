"""Stage 1's activation file, and a layer's summaries on images of the image store."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from dnd.activations import StoredActivations, load_activations, save_activations
from dnd.config import RecordConfig
from dnd.image_store import ImageStore
from dnd.layout import ACTIVATIONS_FILE


def test_activations_round_trip(tmp_path):
    activations, indices = torch.randn(5, 3), torch.tensor([0, 2, 3, 5, 6])
    save_activations(tmp_path, activations, indices)
    assert (tmp_path / ACTIVATIONS_FILE).is_file()
    loaded, loaded_indices = load_activations(tmp_path)
    assert torch.equal(loaded, activations) and torch.equal(loaded_indices, indices)


def test_summaries_of_stored_images_in_batches_with_unreadable_ones_reported(tmp_path, mixer):
    store = ImageStore(tmp_path)
    colours = {"r": (255, 0, 0), "g": (0, 255, 0), "b": (0, 0, 255)}
    for key, colour in colours.items():
        store.put(key, Image.new("RGB", (4, 4), colour))
    store.path("x").parent.mkdir(parents=True, exist_ok=True)
    store.path("x").write_bytes(b"not a png")
    computed = StoredActivations.compute(mixer, "head", RecordConfig(), store, ["r", "x", "g", "b"], 2, 0, "test")
    assert computed.batches == 2 and set(computed.errors) == {"x"} and sorted(computed.rows) == ["b", "g", "r"]
    # ChannelMixer's head: neuron 0 = mean red, neuron 1 = mean green − mean blue.
    assert computed.of(0, [["r", "g"], ["b"]]) == pytest.approx({"r": 1.0, "g": 0.0, "b": 0.0})
    assert computed.of(1, [["g", "b"]]) == pytest.approx({"g": 1.0, "b": -1.0})
    nothing = StoredActivations.compute(mixer, "head", RecordConfig(), store, [], 2, 0, "test")
    assert (nothing.values.numel(), nothing.rows, nothing.errors, nothing.batches) == (0, {}, {}, 0)
