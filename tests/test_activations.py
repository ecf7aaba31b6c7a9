"""Stage 1's activation shards and matrix, the stable top-K, and a layer's summaries on images of the image store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dnd.activations import (
    RunningTopK,
    StoredActivations,
    load_activations,
    read_shard_summary,
    save_shard,
    shard_path,
    shard_range,
    shards_in,
    top_k_stable,
)
from dnd.config import RecordConfig
from dnd.image_store import ImageStore
from dnd.layout import ACTIVATION_SHARDS_FOLDER, ACTIVATIONS_FILE


def test_stable_top_k_puts_the_lower_row_first_among_ties():
    values = torch.tensor([[1.0, 0.0], [3.0, 0.0], [3.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    top, rows = top_k_stable(values, 3)
    assert rows[:, 0].tolist() == [1, 2, 4] and top[:, 0].tolist() == [3.0, 3.0, 3.0]
    assert rows[:, 1].tolist() == [0, 1, 2]  # a dead neuron's top images are the first ones, whatever n is


def test_running_top_k_over_blocks_equals_the_top_k_of_the_whole():
    torch.manual_seed(0)
    values = torch.randint(0, 5, (100, 7)).float()  # many ties
    indices = torch.arange(100)[:, None].expand(100, 7)
    running = RunningTopK(6)
    for block in (slice(0, 13), slice(13, 60), slice(60, 100)):
        block_top, block_rows = top_k_stable(values[block], 6)
        running.add(block_top, torch.gather(indices[block], 0, block_rows))
    expected, rows = top_k_stable(values, 6)
    assert torch.equal(running.values, expected) and torch.equal(running.indices, rows)


def test_shards_assemble_into_one_memory_mapped_float16_matrix(tmp_path):
    folder = tmp_path / ACTIVATION_SHARDS_FOLDER
    first, second = torch.rand(3, 4), torch.rand(2, 4)
    save_shard(shard_path(folder, 0, 4), first, torch.tensor([0, 1, 3]), [(2, "broken")], [4, 2, 2], top_k=2)
    save_shard(shard_path(folder, 4, 5), torch.empty(0, 0), torch.empty(0, dtype=torch.long), [(4, "x")], [], 2)
    save_shard(shard_path(folder, 5, 7), second, torch.tensor([5, 6]), [], [4, 2, 2], top_k=2)
    assert [shard_range(path) for path in shards_in(folder)] == [(0, 4), (4, 5), (5, 7)]
    summary = read_shard_summary(shards_in(folder)[0])
    assert summary.skipped == [(2, "broken")] and summary.output_shape == [4, 2, 2]
    assert torch.equal(summary.top_indices, torch.tensor([0, 1, 3])[top_k_stable(first, 2)[1]])

    activations, probe_indices = load_activations(tmp_path)
    assert activations.dtype == torch.float16
    maps = Path("/proc/self/maps")
    if maps.is_file():  # Linux: the matrix is a mapping of the file, not a copy in memory
        assert str(tmp_path / ACTIVATIONS_FILE) in maps.read_text()
    np.testing.assert_allclose(activations.float().numpy(), torch.cat([first, second]).numpy(), atol=1e-3)
    assert probe_indices.tolist() == [0, 1, 3, 5, 6]
    assert (tmp_path / ACTIVATIONS_FILE).is_file() and not folder.exists()  # assembled once, the shards removed
    again, _ = load_activations(tmp_path)
    assert torch.equal(again, activations)


def test_values_beyond_float16_keep_float32(tmp_path):
    folder = tmp_path / ACTIVATION_SHARDS_FOLDER
    save_shard(shard_path(folder, 0, 2), torch.tensor([[1e6, 0.5], [0.25, 3.0]]), torch.tensor([0, 1]), [], [2], 1)
    save_shard(shard_path(folder, 2, 3), torch.tensor([[0.5, 1.0]]), torch.tensor([2]), [], [2], 1)
    activations, _ = load_activations(tmp_path)
    assert activations.dtype == torch.float32
    assert activations.tolist() == [[1e6, 0.5], [0.25, 3.0], [0.5, 1.0]]


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


def test_batches_of_stored_images_are_kept_in_the_progress_folder_and_reused(tmp_path, mixer):
    store = ImageStore(tmp_path / "images")
    for key, colour in {"r": (255, 0, 0), "g": (0, 255, 0), "b": (0, 0, 255)}.items():
        store.put(key, Image.new("RGB", (4, 4), colour))
    progress = tmp_path / "progress"
    args = (mixer, "head", RecordConfig(), store, ["r", "g", "b"], 2, 0, "test")
    first = StoredActivations.compute(*args, progress=progress)
    assert first.batches == 2 and len(list(progress.iterdir())) == 2
    calls = mixer.module.forward_calls
    again = StoredActivations.compute(*args, progress=progress)
    assert mixer.module.forward_calls == calls and again.batches == 0  # every batch read back, none recomputed
    assert torch.equal(again.values, first.values) and again.rows == first.rows
