"""The image store: images keyed by what made them, seeds that never depend on batches, only missing images made."""

from __future__ import annotations

import pytest
from PIL import Image

from dnd.backends.generators import GenerationRequest
from dnd.image_store import SEED_BITS, ImageStore, generate_missing, image_seed, image_store, plan_images


class Painter:
    name = "painter"

    def __init__(self) -> None:
        self.calls: list[list[GenerationRequest]] = []

    def generate(self, requests: list[GenerationRequest]) -> list[Image.Image]:
        self.calls.append(requests)
        return [Image.new("RGB", (2, 2), (request.seed % 256, 0, 0)) for request in requests]


class Lazy:
    """Backends whose generator is built on first use (counted)."""

    def __init__(self) -> None:
        self.builds = 0
        self.painter = Painter()

    @property
    def generator(self) -> Painter:
        self.builds += 1
        return self.painter


def test_images_are_stored_whole_under_their_key(tmp_path):
    store = image_store(tmp_path)
    assert store.root == tmp_path / "images" and not store.has("ab12")
    store.put("ab12", Image.new("RGB", (3, 2), (1, 2, 3)))
    assert store.path("ab12") == tmp_path / "images" / "ab" / "ab12.png" and store.has("ab12")
    assert store.load("ab12").getpixel((2, 1)) == (1, 2, 3)


def test_a_plan_keys_each_image_by_generator_prompt_and_seed():
    requests, keys = plan_images({"dog": "a dog", "cat": "a cat"}, 2, run_seed=0, generator="g")
    assert list(keys) == ["dog", "cat"] and all(len(ids) == 2 for ids in keys.values())
    assert [requests[key] for key in keys["dog"]] == [
        GenerationRequest("a dog", image_seed(0, "a dog", i)) for i in (0, 1)
    ]
    # The same prompt gets the same images whatever else is planned with it; another generator, other keys.
    assert plan_images({"x": "a dog"}, 2, 0, "g")[1]["x"] == keys["dog"]
    assert set(plan_images({"dog": "a dog"}, 2, 0, "other")[0]).isdisjoint(requests)
    assert all(0 <= image_seed(seed, "a dog", 3) < 2**SEED_BITS for seed in range(5))
    assert image_seed(0, "a dog", 0) != image_seed(1, "a dog", 0)


@pytest.mark.parametrize("stored", [0, 3, 5])
def test_only_missing_images_are_generated_and_the_generator_built_only_then(tmp_path, stored):
    store = ImageStore(tmp_path)
    requests, _ = plan_images({f"c{i}": f"prompt {i}" for i in range(5)}, 1, 0, "painter")
    for key in list(requests)[:stored]:
        store.put(key, Image.new("RGB", (2, 2)))
    backends = Lazy()
    generated, calls = generate_missing(store, backends, requests, 2, "test")
    assert generated == 5 - stored and calls == len(backends.painter.calls) == -(-(5 - stored) // 2)
    assert backends.builds == (1 if stored < 5 else 0)
    assert all(store.has(key) for key in requests)
