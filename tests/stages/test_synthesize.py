"""Stage 5 (synthesize): one generation per unique prompt, batches across concepts, seeds independent of batches, the
image store, subsets, killed runs, failed neurons, the prompt file in the key — with a painting fake generator and,
once, a tiny real Stable Diffusion.

A stand-in for stages 3-4 gives each neuron exactly the candidate concepts a case needs (a concept shared by two
neurons, a neuron whose summary failed)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dnd.artifacts import Concepts, Generations, NeuronConcepts
from dnd.backends.container import Backends
from dnd.backends.generators import GenerationRequest, generator_name
from dnd.errors import DnDError
from dnd.image_store import ImageStore, image_seed, image_store
from dnd.pipeline import Pipeline
from dnd.stages import record, synthesize
from dnd.stages.base import StageSpec
from dnd.store import content_key, read_model
from tests.fakes import PaintingGenerator, dummy_backends, forbidding, hashed_colour
from tests.helpers import make_config, stand_in_stage, stored_images
from tests.tiny_models import TINY_IMAGE_SIZE, tiny_stable_diffusion

PROMPTS = Path(__file__).resolve().parents[2] / "prompts"
LAYER = "head"  # ChannelMixer's linear layer: neurons 0, 1, 2
CONCEPTS: dict[int, list[str] | str] = {  # a string is the reason the summary failed
    0: ["striped fabric", "zebra"],
    1: ["zebra", "flowers"],
    2: "no valid concept in 5 summaries: every answer was rejected",
}
Q = 2  # synthesize.images_per_concept in these tests


NoGenerator = forbidding("generator", "every image is stored")


def summarize_stage(concepts: dict[int, list[str] | str]) -> StageSpec:
    """Stands in for stages 3-4: gives each neuron the given concepts (a string is a failure reason)."""

    def entry(neuron: int, given: list[str]) -> NeuronConcepts:
        return NeuronConcepts(neuron=neuron, concepts=given)

    return stand_in_stage("summarize", ("record",), Concepts, concepts, entry, llm="stand-in")


#: Stage 1, the stand-in for stages 3-4 with :data:`CONCEPTS`, and stage 5.
STAGES = [record.SPEC, summarize_stage(CONCEPTS), synthesize.SPEC]


@pytest.fixture
def run_stage(tmp_path, image_folder, mixer):
    """``run_stage(generator, *overrides, out="a", ...)`` → (Generations, manifest counts) of layer ``head``."""

    def run(
        generator,
        *overrides: str,
        out: str = "a",
        neurons: list[int] | None = None,
        force: bool = False,
        backends: type[Backends] = Backends,
    ) -> tuple[Generations, dict[str, int]]:
        config = make_config(tmp_path / out, image_folder, f"synthesize.images_per_concept={Q}", *overrides)
        pipeline = Pipeline(
            config, dummy_backends(config, mixer, backends, generator=generator), prompts_dir=PROMPTS, stages=STAGES
        )
        folder = pipeline.run_until("synthesize", [LAYER], neurons, {"synthesize"} if force else None)[LAYER]
        counts = json.loads((folder / "manifest.json").read_text())["counts"]
        return read_model(folder / "artifact.json", Generations), counts

    return run


def store_of(tmp_path: Path, out: str = "a") -> ImageStore:
    return image_store(tmp_path / out / "outputs")


def stored_files(tmp_path: Path, out: str = "a") -> list[Path]:
    return stored_images(store_of(tmp_path, out).root)


def test_each_concept_is_generated_once_for_every_neuron_that_proposes_it(run_stage, tmp_path):
    generator = PaintingGenerator()
    generations, counts = run_stage(generator, "synthesize.batch_size=3")

    # Three distinct concepts (zebra is proposed twice) → 3 × Q images, in batches of 3 that mix concepts.
    assert [len(call) for call in generator.calls] == [3, 3]
    assert len({request.prompt for request in generator.calls[0]}) == 2
    concepts = ("striped fabric", "zebra", "flowers")
    expected = [
        GenerationRequest(p, image_seed(0, p, i), concept=c, index=i)
        for c in concepts
        for p in [f"One realistic image of {c}"]
        for i in range(Q)
    ]
    assert generator.requests == expected
    assert counts == {
        "unique_concepts": 3,
        "images_requested": 3 * Q,
        "images_generated": 3 * Q,
        "cache_hits": 0,
        "generator_calls": 2,
        "failed_neurons": 1,
        "images_unavailable": 0,
    }
    assert generations.generator == "fake:solid-colour"
    by_neuron = {entry.neuron: entry for entry in generations.neurons}
    assert [c.concept for c in by_neuron[0].concepts] == ["striped fabric", "zebra"]
    assert [c.concept for c in by_neuron[1].concepts] == ["zebra", "flowers"]
    assert by_neuron[0].concepts[1] == by_neuron[1].concepts[0]  # the same prompt and the same images
    assert by_neuron[2].failed == "summarize stage failed: " + CONCEPTS[2]
    assert by_neuron[2].concepts == []
    # Each id is the key of (generator, prompt, seed), and the stored file holds that request's image.
    store = store_of(tmp_path)
    for entry in by_neuron[0].concepts + by_neuron[1].concepts:
        assert entry.prompt == f"One realistic image of {entry.concept}"
        for index, image_id in enumerate(entry.image_ids):
            request = GenerationRequest(entry.prompt, image_seed(0, entry.prompt, index))
            assert image_id == content_key({"generator": generator.name, "prompt": entry.prompt, "seed": request.seed})
            assert store.load(image_id).getpixel((0, 0)) == hashed_colour(request, 1).getpixel((0, 0))
    assert len(stored_files(tmp_path)) == 3 * Q


def test_a_second_run_generates_nothing_and_never_builds_the_generator(run_stage):
    first, _ = run_stage(PaintingGenerator())

    again, counts = run_stage(PaintingGenerator(), force=True, backends=NoGenerator)  # runs again, all stored
    assert again == first
    assert counts["images_generated"] == counts["generator_calls"] == 0
    assert counts["cache_hits"] == counts["images_requested"] == 3 * Q

    assert run_stage(PaintingGenerator(), backends=NoGenerator)[0] == first  # the stage itself is fresh


def test_more_neurons_later_generate_only_the_new_concepts(run_stage, tmp_path):
    generator = PaintingGenerator()
    subset, counts = run_stage(generator, neurons=[0])
    assert [entry.neuron for entry in subset.neurons] == [0]
    assert counts["images_generated"] == 2 * Q

    generations, counts = run_stage(generator)

    assert [entry.neuron for entry in generations.neurons] == [0, 1, 2]
    assert generations.neurons[0] == subset.neurons[0]
    assert {request.prompt for request in generator.requests[2 * Q :]} == {"One realistic image of flowers"}
    assert counts == {
        "unique_concepts": 2,  # zebra and flowers, for neuron 1 (neuron 2 failed upstream)
        "images_requested": 2 * Q,
        "images_generated": Q,
        "cache_hits": Q,
        "generator_calls": 1,
        "failed_neurons": 1,
        "images_unavailable": 0,
    }
    assert len(stored_files(tmp_path)) == 3 * Q


def test_images_do_not_depend_on_the_batch_size(run_stage, tmp_path):
    one_by_one, by_three = PaintingGenerator(), PaintingGenerator()
    first, _ = run_stage(one_by_one, "synthesize.batch_size=1", out="a")
    second, _ = run_stage(by_three, "synthesize.batch_size=3", out="b")

    assert (len(one_by_one.calls), len(by_three.calls)) == (3 * Q, 2)
    assert one_by_one.requests == by_three.requests
    assert first == second
    files_a, files_b = stored_files(tmp_path, "a"), stored_files(tmp_path, "b")
    assert [p.name for p in files_a] == [p.name for p in files_b]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(files_a, files_b, strict=True))


def test_the_run_seed_changes_every_image(run_stage):
    first, _ = run_stage(PaintingGenerator(), out="a")
    reseeded, _ = run_stage(PaintingGenerator(), "seed=1", out="b")

    ids = {i for entry in first.neurons for c in entry.concepts for i in c.image_ids}
    other = {i for entry in reseeded.neurons for c in entry.concepts for i in c.image_ids}
    assert len(ids) == len(other) == 3 * Q
    assert not ids & other


def test_a_killed_run_keeps_the_batches_it_finished(run_stage, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run_stage(PaintingGenerator(fail_at_call=2), "synthesize.batch_size=2")
    assert len(stored_files(tmp_path)) == 2  # the first batch
    assert not list((tmp_path / "a" / "outputs" / "test" / LAYER).glob("synthesize-*/artifact.json"))

    generator = PaintingGenerator()
    generations, counts = run_stage(generator, "synthesize.batch_size=2")

    assert len(generator.requests) == counts["images_generated"] == 3 * Q - 2
    assert counts["cache_hits"] == 2
    assert len(stored_files(tmp_path)) == 3 * Q
    assert len(generations.neurons) == 3


def test_editing_the_prompt_changes_the_synthesize_key_but_not_the_summarize_key(tmp_path, image_folder, mixer):
    prompts = tmp_path / "prompts"
    shutil.copytree(PROMPTS, prompts)
    config = make_config(tmp_path, image_folder)
    pipeline = Pipeline(config, Backends(config, target=mixer), prompts_dir=prompts)

    def keys():
        return pipeline.key("summarize", LAYER), pipeline.key("synthesize", LAYER)

    summarize_key, synthesize_key = keys()
    path = prompts / "synthesize.md"
    path.write_text(path.read_text().replace("One realistic image of", "A photo of"))
    summarize_after, synthesize_after = keys()
    assert summarize_after == summarize_key
    assert synthesize_after != synthesize_key

    config.synthesize.batch_size = 1  # an execution detail
    assert keys() == (summarize_key, synthesize_after)
    config.synthesize.steps = 20
    assert keys()[0] == summarize_key
    assert keys()[1] != synthesize_after


def test_a_malformed_prompt_file_stops_the_stage_naming_it(tmp_path, image_folder, mixer):
    prompts = tmp_path / "prompts"
    shutil.copytree(PROMPTS, prompts)
    (prompts / "synthesize.md").write_text("note\n## prompt\nOne realistic image\n")
    config = make_config(tmp_path, image_folder)
    pipeline = Pipeline(config, Backends(config, target=mixer), prompts_dir=prompts, stages=STAGES)
    with pytest.raises(DnDError, match=r"prompt synthesize.md, '## prompt' section must contain the placeholder"):
        pipeline.run_until("synthesize", [LAYER])


def test_generates_with_a_tiny_real_stable_diffusion(tmp_path, image_folder, mixer):
    model = tiny_stable_diffusion(tmp_path / "tiny-sd")
    config = make_config(
        tmp_path,
        image_folder,
        f"synthesize.model={model}",
        f"synthesize.size={TINY_IMAGE_SIZE}",
        "synthesize.steps=2",
        "synthesize.images_per_concept=2",
        "synthesize.batch_size=4",
    )
    pipeline = Pipeline(config, Backends(config, target=mixer), prompts_dir=PROMPTS, stages=STAGES)

    folder = pipeline.run_until("synthesize", [LAYER])[LAYER]

    generations = read_model(folder / "artifact.json", Generations)
    assert generations.generator == generator_name(config.synthesize)
    counts = json.loads((folder / "manifest.json").read_text())["counts"]
    assert counts["images_generated"] == 6 and counts["generator_calls"] == 2
    store = image_store(config.output_dir)
    zebra = generations.neurons[0].concepts[1]
    images = [np.asarray(store.load(image_id)) for image_id in zebra.image_ids]
    assert all(image.shape == (TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, 3) for image in images)
    assert not np.array_equal(images[0], images[1])  # two seeds, two images

    again = Pipeline(config, NoGenerator(config, target=mixer), prompts_dir=PROMPTS, stages=STAGES)
    assert again.run_until("synthesize", [LAYER], force_stages={"synthesize"})[LAYER] == folder
    assert read_model(folder / "artifact.json", Generations) == generations
