"""The image store: images keyed by what made them, seeds that never depend on batches, only missing images made."""

from __future__ import annotations

import pytest
from PIL import Image

from dnd.backends.generators import GenerationRequest
from dnd.image_store import SEED_BITS, ImageStore, generate_missing, image_seed, image_store, plan_images
from tests.fakes import PaintingGenerator


class Lazy:
    """Backends whose generator is built on first use (counted)."""

    def __init__(self) -> None:
        self.builds = 0
        self.painter = PaintingGenerator(size=2, name="painter")

    @property
    def generator(self) -> PaintingGenerator:
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
        GenerationRequest("a dog", image_seed(0, "a dog", i), concept="dog", index=i) for i in (0, 1)
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


def test_equal_pixels_are_kept_once_and_requests_without_an_image_are_remembered(tmp_path):
    store = ImageStore(tmp_path / "images")
    red, blue = Image.new("RGB", (6, 4), (255, 0, 0)), Image.new("RGB", (6, 4), (0, 0, 255))
    store.put("a1", red)
    store.put("b2", red.copy())
    store.put("c3", blue)

    assert [store.load(key).getpixel((0, 0)) for key in ("a1", "b2", "c3")] == [(255, 0, 0), (255, 0, 0), (0, 0, 255)]
    pixel_files = sorted((tmp_path / "images" / "pixels").rglob("*.png"))
    assert len(pixel_files) == 2  # red once, blue once
    assert store.path("a1").stat().st_ino == store.path("b2").stat().st_ino != store.path("c3").stat().st_ino

    # A request the generator had no image for is settled, but has no image.
    assert not store.has("d4")
    store.put_nothing("d4")
    assert store.has("d4") and store.is_nothing("d4") and not store.path("d4").exists()
    assert not store.is_nothing("a1")

    # Damaged pixels are written anew when a deleted key is stored again.
    store.path("a1").unlink()
    next(p for p in pixel_files if p.stat().st_ino == store.path("b2").stat().st_ino).write_bytes(b"broken")
    store.put("a1", red)
    assert store.load("a1").getpixel((0, 0)) == (255, 0, 0)


class Retriever:
    """A generator with an image for the first ``have`` images of each concept only (like a small retrieval pool)."""

    name = "retriever"

    def __init__(self, have: int) -> None:
        self.have, self.asked = have, 0

    def generate(self, requests: list[GenerationRequest]) -> list[Image.Image | None]:
        self.asked += len(requests)
        return [Image.new("RGB", (2, 2), (r.index, 0, 0)) if r.index < self.have else None for r in requests]


def test_a_request_without_an_image_is_stored_as_such_and_not_asked_again(tmp_path):
    store = ImageStore(tmp_path)
    requests, keys = plan_images({"dog": "a dog", "cat": "a cat"}, 3, 0, "retriever")
    backends = Lazy()
    backends.painter = Retriever(have=2)

    assert generate_missing(store, backends, requests, 4, "test") == (6, 2)
    assert [store.is_nothing(key) for key in keys["dog"]] == [False, False, True]
    assert all(store.has(key) for key in requests)
    assert generate_missing(store, backends, requests, 4, "test") == (0, 0) and backends.painter.asked == 6
