"""The final-layer benchmark's table: Label 1, the constant label and the most frequent caption scored exactly."""

from __future__ import annotations

import pytest

from benchmarks.bench_final_layer import final_layer_table
from dnd.artifacts import Caption, Captions, Labels, NeuronCaptions, NeuronLabels
from tests.compare.fakes import TableEmbedder

# dog·puppy = 0.6, car·car = 1, images·dog = images·car = 0.6, cat·dog = 0.8
VECTORS = {
    "dog": [1, 0, 0],
    "puppy": [0.6, 0.8, 0],
    "car": [0, 1, 0],
    "images": [0.6, 0.6, 0.52915],
    "cat": [0.8, 0.6, 0],
}


def captions_of(*texts: list[str]) -> Captions:
    neurons = [
        NeuronCaptions(neuron=unit, captions=[Caption(image_id=f"{unit}-{i}", text=t) for i, t in enumerate(words)])
        for unit, words in enumerate(texts)
    ]
    return Captions(layer="fc", captioner="test", neurons=neurons)


def test_label_1_beside_the_constant_and_the_most_frequent_caption():
    labels = Labels(
        layer="fc",
        function="test",
        neurons=[
            NeuronLabels(neuron=0, labels=["puppy", "cat"]),
            NeuronLabels(neuron=1, labels=["car"]),
            NeuronLabels(neuron=2, failed="no concept"),
        ],
    )
    captions = captions_of(["cat", "dog", "cat"], ["car"], ["dog"])
    table = final_layer_table(labels, captions, ["dog", "car", "cat"], TableEmbedder("table", VECTORS))
    assert table["ours_label_1"] == pytest.approx((0.6 + 1) / 2, abs=1e-4)
    assert table["constant_images"] == pytest.approx(0.6, abs=1e-4)
    assert table["most_frequent_caption"] == pytest.approx((0.8 + 1) / 2, abs=1e-4)  # "cat" twice beats "dog" once
    assert table["per_unit"] == {
        "dog": {"ours": "puppy", "most_frequent_caption": "cat"},
        "car": {"ours": "car", "most_frequent_caption": "car"},
    }
