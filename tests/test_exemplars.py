"""Rendering exemplars: the network's view, cropped and resized back; pixel hashes; each exemplar rendered once."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dnd.artifacts import CropBox, ExemplarImage
from dnd.backends.target_network import TargetNetwork
from dnd.data import ProbeSet, UnreadableImage
from dnd.exemplars import CROP_RESAMPLE, ExemplarPixels, crop_view, pixel_hash, render_exemplar
from tests.helpers import ChannelMixer, to_tensor


def test_pixel_hash_follows_pixels_not_files():
    red = Image.new("RGB", (4, 2), (255, 0, 0))
    assert pixel_hash(red) == pixel_hash(red.copy().convert("RGBA"))
    assert pixel_hash(red) != pixel_hash(Image.new("RGB", (2, 4), (255, 0, 0)))  # same bytes, other shape
    assert pixel_hash(red) != pixel_hash(Image.new("RGB", (4, 2), (254, 0, 0)))


class Probe:
    """Four 8×8 images, image 3 unreadable; counts loads."""

    def __init__(self) -> None:
        self.loads = 0
        rng = np.random.default_rng(0)
        self.images = [Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)) for _ in range(3)]

    def load(self, index: int) -> Image.Image:
        self.loads += 1
        if index == 3:
            raise UnreadableImage("truncated file")
        return self.images[index]


@pytest.fixture
def probe() -> Probe:
    return Probe()


def exemplar(index: int, box: CropBox | None = None) -> ExemplarImage:
    return ExemplarImage(image_id=f"img{index}.png", probe_index=index, box=box, activation=0.0)


def test_an_exemplar_is_its_view_cropped_and_resized_back(probe):
    target = TargetNetwork("mixer", ChannelMixer(), to_tensor)
    box = CropBox(x0=2, y0=0, x1=6, y1=4)
    probe_set = ProbeSet(ids=["a", "b", "c", "d"], load=probe.load, fingerprint="f")
    assert render_exemplar(probe_set, target, exemplar(0)) == probe.images[0]
    cropped = render_exemplar(probe_set, target, exemplar(0, box))
    assert cropped.size == (8, 8)
    assert (
        cropped == probe.images[0].crop((2, 0, 6, 4)).resize((8, 8), CROP_RESAMPLE) == crop_view(probe.images[0], box)
    )


def test_each_exemplar_is_rendered_once_and_an_unreadable_image_tried_once(probe):
    target = TargetNetwork("mixer", ChannelMixer(), to_tensor)
    pixels = ExemplarPixels(ProbeSet(ids=["a", "b", "c", "d"], load=probe.load, fingerprint="f"), target)
    box = CropBox(x0=0, y0=0, x1=4, y1=4)
    hashes = [pixels.hash(exemplar(0)), pixels.hash(exemplar(0, box)), pixels.hash(exemplar(0))]
    assert hashes[0] == hashes[2] == pixel_hash(probe.images[0]) != hashes[1]
    assert probe.loads == 2
    assert pixels.render(exemplar(0, box)) is not None and probe.loads == 2  # the last rendering is kept
    for _ in range(2):
        with pytest.raises(UnreadableImage, match="truncated file"):
            pixels.hash(exemplar(3))
    assert probe.loads == 3
