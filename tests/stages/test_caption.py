"""Stage 3 (caption): one caption per unique image, the caption cache, subsets, failed neurons, tiny real BLIP."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dnd.artifacts import Captions, Exemplars, TopImages
from dnd.backends import captioners as captioners_module
from dnd.backends.container import Backends
from dnd.exemplars import pixel_hash, render_exemplar
from dnd.pipeline import Pipeline
from tests.helpers import make_config
from tests.tiny_models import BLIP_VOCAB, tiny_blip


class CountingCaptioner:
    """Captions an image with its size and mean pixel value (so a caption can be checked against its image).

    Counts calls and images; ``fail_at_call`` simulates a kill at that call.
    """

    name = "fake:mean-pixel"

    def __init__(self, fail_at_call: int | None = None) -> None:
        self.calls = 0
        self.images = 0
        self.fail_at_call = fail_at_call

    def caption(self, images: list[Image.Image]) -> list[str]:
        self.calls += 1
        if self.calls == self.fail_at_call:
            raise KeyboardInterrupt("simulated kill")
        self.images += len(images)
        return [describe(image) for image in images]


def describe(image: Image.Image) -> str:
    return f"{image.width}x{image.height} mean {np.asarray(image).mean():.4f}"


def caption_stage(pipeline: Pipeline, layer: str = "conv", **kwargs) -> tuple[Captions, dict]:
    stage_dir = pipeline.run_until("caption", [layer], **kwargs)[layer]
    artifact = pipeline.store.load(layer, "caption", pipeline.key("caption", layer), Captions)
    return artifact, json.loads((stage_dir / "manifest.json").read_text())["counts"]


def load_stage(pipeline: Pipeline, stage: str, artifact_type, layer: str = "conv"):
    return pipeline.store.load(layer, stage, pipeline.key(stage, layer), artifact_type)


def spoil(path: Path) -> None:
    """Make an image unreadable without changing its size (so the probing set's fingerprint stays the same)."""
    path.write_bytes(b"\0" * path.stat().st_size)


def test_an_image_shared_by_neurons_or_files_is_captioned_once(tmp_path, image_folder, mixer):
    shutil.copy(image_folder / "img000.png", image_folder / "img012.png")  # same pixels, another file
    config = make_config(
        tmp_path, image_folder, "record.top_k=13", "crop.exemplars=13", "crop.enabled=false", "caption.batch_size=5"
    )
    fake = CountingCaptioner()
    pipeline = Pipeline(config, Backends(config, target=mixer, captioner=fake))

    captions, counts = caption_stage(pipeline)

    # Both neurons have all 13 images as exemplars: 26 exemplars, 12 distinct pixel contents, batches of 5, 5, 2.
    assert counts == {
        "unique_images": 12,
        "captioned": 12,
        "cache_hits": 0,
        "captioner_calls": 3,
        "failed_neurons": 0,
    }
    assert (fake.calls, fake.images) == (3, 12)
    assert captions.captioner == fake.name  # an injected captioner keys the cache by its own name
    exemplars = load_stage(pipeline, "crop", Exemplars)
    for entry, expected in zip(captions.neurons, exemplars.neurons, strict=True):
        assert entry.failed is None and len(entry.captions) == 13
        for caption, exemplar in zip(entry.captions, expected.exemplars, strict=True):
            assert (caption.image_id, caption.box) == (exemplar.image_id, exemplar.box)
            assert caption.text == describe(render_exemplar(pipeline.context.probe, mixer, exemplar))
    by_id = {c.image_id: c.text for c in captions.neurons[0].captions}
    assert by_id["img000.png"] == by_id["img012.png"]


def test_a_killed_run_keeps_every_finished_batch(tmp_path, image_folder, mixer):
    overrides = ("record.top_k=12", "crop.exemplars=12", "crop.enabled=false", "caption.batch_size=5")
    config = make_config(tmp_path, image_folder, *overrides)
    dying = CountingCaptioner(fail_at_call=2)
    with pytest.raises(KeyboardInterrupt):
        caption_stage(Pipeline(config, Backends(config, target=mixer, captioner=dying)))

    survivor = CountingCaptioner()
    _, counts = caption_stage(Pipeline(config, Backends(config, target=mixer, captioner=survivor)))
    assert counts == {"unique_images": 12, "captioned": 7, "cache_hits": 5, "captioner_calls": 2, "failed_neurons": 0}
    assert (survivor.calls, survivor.images) == (2, 7)


def test_crops_are_captioned_as_the_pixels_stage_2_ranked(tmp_path, image_folder, mixer):
    config = make_config(tmp_path, image_folder, "record.top_k=4")
    pipeline = Pipeline(config, Backends(config, target=mixer, captioner=CountingCaptioner()))

    captions, counts = caption_stage(pipeline)

    exemplars = load_stage(pipeline, "crop", Exemplars)
    assert exemplars.cropped and any(e.box for entry in exemplars.neurons for e in entry.exemplars)
    rendered = {
        pixel_hash(render_exemplar(pipeline.context.probe, mixer, e)): e
        for entry in exemplars.neurons
        for e in entry.exemplars
    }
    assert counts["unique_images"] == counts["captioned"] == len(rendered)
    for entry, expected in zip(captions.neurons, exemplars.neurons, strict=True):
        assert [(c.image_id, c.box) for c in entry.captions] == [(e.image_id, e.box) for e in expected.exemplars]
        for caption, exemplar in zip(entry.captions, expected.exemplars, strict=True):
            assert caption.text == describe(render_exemplar(pipeline.context.probe, mixer, exemplar))


def test_a_cached_run_never_builds_the_captioner(tmp_path, image_folder, mixer, monkeypatch):
    config = make_config(tmp_path, image_folder, "record.top_k=3", "crop.enabled=false")
    fake = CountingCaptioner()
    fake.name = captioners_module.captioner_name(
        config.caption, prompts_dir=config.prompts_dir
    )  # stands in for the configured BLIP
    first, _ = caption_stage(Pipeline(config, Backends(config, target=mixer, captioner=fake)))
    assert fake.calls == 1

    caption_stage(Pipeline(config, Backends(config, target=mixer, captioner=fake)))  # the stage itself is fresh
    assert fake.calls == 1

    def no_loading(*_args):
        raise AssertionError("the captioner was built although every caption is cached")

    monkeypatch.setattr(captioners_module, "build_captioner", no_loading)
    # Recomputing the stage (forced) finds every caption in the item cache.
    again, counts = caption_stage(Pipeline(config, Backends(config, target=mixer)), force_stages={"caption"})
    assert counts["captioner_calls"] == counts["captioned"] == 0
    assert counts["cache_hits"] == counts["unique_images"] > 0
    assert again == first


def test_a_larger_run_captions_only_the_new_images(tmp_path, image_folder, mixer):
    config = make_config(tmp_path, image_folder, "record.top_k=6")
    fake = CountingCaptioner()
    pipeline = Pipeline(config, Backends(config, target=mixer, captioner=fake))
    first, _ = caption_stage(pipeline, "head", neurons=[0])
    assert fake.images == 6

    both, counts = caption_stage(pipeline, "head", neurons=[0, 2])

    top = load_stage(pipeline, "record", TopImages, "head")
    old, new = set(top.neurons[0].image_ids), set(top.neurons[2].image_ids)
    assert old & new and new - old  # the test needs both shared and new images
    assert counts == {
        "unique_images": 6,
        "captioned": len(new - old),
        "cache_hits": len(new & old),
        "captioner_calls": 1,
        "failed_neurons": 0,
    }
    assert fake.images == 6 + len(new - old)
    assert [entry.neuron for entry in both.neurons] == [0, 2]
    assert both.neurons[0] == first.neurons[0]
    assert {c.image_id for c in both.neurons[1].captions} == new


def test_a_neuron_whose_crop_failed_is_carried_as_failed(tmp_path, image_folder, mixer):
    config = make_config(tmp_path, image_folder, "record.top_k=3")
    pipeline = Pipeline(config, Backends(config, target=mixer, captioner=CountingCaptioner()))
    pipeline.run_until("record", ["conv"])
    top = load_stage(pipeline, "record", TopImages)
    only_first = sorted(set(top.neurons[0].image_ids) - set(top.neurons[1].image_ids))
    spoil(image_folder / only_first[0])

    captions, counts = caption_stage(pipeline)

    failed, captioned = captions.neurons
    assert failed.failed.startswith("crop stage failed: ") and only_first[0] in failed.failed
    assert failed.captions == []
    exemplars = load_stage(pipeline, "crop", Exemplars).neurons[1].exemplars
    assert captioned.failed is None and len(captioned.captions) == len(exemplars)
    assert counts["captioned"] == len(
        {pixel_hash(render_exemplar(pipeline.context.probe, mixer, e)) for e in exemplars}
    )


def test_an_exemplar_unreadable_since_crop_fails_only_its_neurons(tmp_path, image_folder, mixer):
    config = make_config(tmp_path, image_folder, "record.top_k=3")
    pipeline = Pipeline(config, Backends(config, target=mixer, captioner=CountingCaptioner()))
    pipeline.run_until("crop", ["head"])
    exemplars = load_stage(pipeline, "crop", Exemplars, "head")
    ids = [{e.image_id for e in entry.exemplars} for entry in exemplars.neurons]
    lost = sorted(ids[0] - ids[1] - ids[2])[0]
    spoil(image_folder / lost)

    captions, _ = caption_stage(pipeline, "head")

    assert lost in captions.neurons[0].failed and "since stage 2" in captions.neurons[0].failed
    assert [len(entry.captions) for entry in captions.neurons] == [0, 3, 3]


def test_tiny_blip_end_to_end(tmp_path, image_folder, mixer):
    blip = tiny_blip(tmp_path / "blip")
    config = make_config(
        tmp_path, image_folder, "record.top_k=3", f"caption.model={blip}", "caption.max_new_tokens=6", "device=cpu"
    )
    pipeline = Pipeline(config, Backends(config, target=mixer))

    captions, counts = caption_stage(pipeline)

    assert captions.captioner == f"blip:{blip}:max_new_tokens=6,min_new_tokens=5,num_beams=1"
    assert counts["captioned"] == counts["unique_images"] > 0 and counts["captioner_calls"] == 1
    words = set(BLIP_VOCAB) - {"[PAD]", "[CLS]", "[SEP]", "[DEC]"}
    exemplars = load_stage(pipeline, "crop", Exemplars)
    for entry, expected in zip(captions.neurons, exemplars.neurons, strict=True):
        assert entry.failed is None and len(entry.captions) == len(expected.exemplars) >= 3
        for caption in entry.captions:
            assert 1 <= len(caption.text.split()) <= 6 and set(caption.text.split()) <= words
