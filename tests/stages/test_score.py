"""Stage 6 (score) through the pipeline: a tiny target whose activations follow an image's colour, solid-colour
"generated" images, and a CLIP double whose embedding of an image is its mean colour.

Stages 1–2 are real (ChannelMixer's linear layer ``head``: neuron 0 = mean red, neuron 1 = mean green − mean blue);
a stand-in for stage 5 lists each neuron's concepts and stores their images in stage 5's image store.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from dnd.artifacts import ConceptImages, Generations, Labels, NeuronGenerations
from dnd.backends.container import Backends
from dnd.compare.readers import read_labels
from dnd.image_store import image_store
from dnd.pipeline import Pipeline
from dnd.stages import crop, record, score
from dnd.stages.base import StageSpec
from dnd.store import content_key, read_model
from tests.fakes import ColourClip, dummy_backends, solid
from tests.helpers import make_config
from tests.tiny_models import tiny_clip

LAYER = "head"
#: The probing set: solid images; each neuron's top-2 (= its exemplars) are its two brightest of one colour.
PROBE = {
    "img000.png": (255, 0, 0),
    "img001.png": (200, 0, 0),
    "img002.png": (0, 255, 0),
    "img003.png": (0, 200, 0),
    "img004.png": (0, 0, 255),
    "img005.png": (0, 0, 200),
}
#: The "generated" images of each concept (Q = 2), solid colours.
COLOURS = {
    "red things": [(250, 0, 0), (150, 0, 0)],
    "crimson things": [(120, 0, 0), (100, 0, 0)],
    "green things": [(0, 250, 0), (0, 150, 0)],
    "blue things": [(0, 0, 250), (0, 0, 150)],
}
#: CLIP text embeddings: crimson is 0.9/√0.82 = 0.994 similar to red (above 0.81), the rest orthogonal.
TEXTS = {
    "red things": (1.0, 0.0, 0.0),
    "crimson things": (0.9, 0.1, 0.0),
    "green things": (0.0, 1.0, 0.0),
    "blue things": (0.0, 0.0, 1.0),
}
CONCEPTS: dict[int, list[str] | str] = {  # a string is the reason stage 5 failed
    0: ["green things", "red things", "blue things", "crimson things"],
    1: ["red things", "green things"],  # shares all its images with neuron 0
    2: "summarize stage failed: no valid concept",
}
BATCH = 3
OVERRIDES = ("record.top_k=2", "crop.exemplars=2", "score.top_pool=3", f"score.batch_size={BATCH}")

# Worked out by hand (activations are colour / 255; dnd.scoring's docstring has the formulas):
# Neuron 0 (red): pool g250 g150 | r250 r150 | b250 b150 | c120 c100 with activations 0 0 .98 .59 0 0 .47 .39
#   → r250 0, r150 1, c120 2, c100 3, then the zeros in pool order: g250 4, g150 5, b250 6, b150 7.
#   TopKSq: green (16+25)/2 = 20.5, red (0+1)/2 = 0.5, blue (36+49)/2 = 42.5, crimson (4+9)/2 = 6.5
#   → idx red 0, crimson 1, green 2, blue 3. Top 3 = r250, r150, c120, all (1,0,0) like both red exemplars:
#   IP red 1, crimson 1, green −1, blue −1. Final (N = 4): red 4, crimson 3, green (4−2)(−1) = −2, blue −1.
#   Multi-label: crimson dropped (0.994 > 0.81 with red) → red, blue, green.
# Neuron 1 (green − blue): pool r250 r150 | g250 g150 with activations 0 0 .98 .59 → g250 0, g150 1, r250 2, r150 3.
#   TopKSq red 6.5, green 0.5 → idx green 0, red 1. Top 3 = g250, g150, r250; exemplars (0,1,0): IP green 1, red 0.
#   Final (N = 2): green 2·1 = 2, red 1·0 = 0.
EXPECTED_SCORES = {
    0: [("red things", 4.0), ("crimson things", 3.0), ("blue things", -1.0), ("green things", -2.0)],
    1: [("green things", 2.0), ("red things", 0.0)],
}
# Generated images: neuron 0's 8 (neuron 1's 4 are among them). CLIP images: 4 exemplars + the top-3 images of both
# neurons {r250, r150, c120} ∪ {g250, g150, r250} = 5.
UNIQUE_GENERATED = 8
CLIP_IMAGES = 4 + 5
DESCRIPTIONS = "layer,unit,description,similarity\nhead,0,red things,4.0\nhead,1,green things,2.0\nhead,2,,\n"
FINAL_RESULTS = (
    "Neuron ID,Label 1,Label 2,Label 3\n0,red things,crimson things,blue things\n1,green things,red things,\n2,,,\n"
)


def image_id(concept: str, index: int) -> str:
    return content_key({"concept": concept, "index": index})


def synthesize_stage() -> StageSpec:
    """Stands in for stage 5: each concept's solid images, stored once in the image store under ``output_dir``."""

    def compute(ctx, work):
        store = image_store(ctx.config.output_dir)
        entries = []
        for neuron in work.neurons:
            concepts = CONCEPTS[neuron]
            if isinstance(concepts, str):
                entries.append(NeuronGenerations(neuron=neuron, failed=concepts))
                continue
            images = []
            for concept in concepts:
                ids = [image_id(concept, i) for i in range(len(COLOURS[concept]))]
                for key, colour in zip(ids, COLOURS[concept], strict=True):
                    if not store.has(key):
                        store.put(key, solid(colour))
                images.append(ConceptImages(concept=concept, prompt=f"One realistic image of {concept}", image_ids=ids))
            entries.append(NeuronGenerations(neuron=neuron, concepts=images))
        return Generations(layer=work.layer, generator="solid", neurons=entries), {}

    return StageSpec("synthesize", 1, ("crop",), ("synthesize",), Generations, compute=compute)


#: Stages 1-2, the stand-in for stage 5, and stage 6.
STAGES = [record.SPEC, crop.SPEC, synthesize_stage(), score.SPEC]


class Run:
    """One pipeline over the solid probing set; ``score()`` runs stages 5–6 and reports what stage 6 did."""

    def __init__(self, tmp_path: Path, mixer, *overrides: str):
        probe = tmp_path / "probe"
        if not probe.is_dir():
            probe.mkdir()
            for name, colour in PROBE.items():
                solid(colour).save(probe / name)
        self.mixer, self.clip = mixer, ColourClip(texts=TEXTS)
        self.config = make_config(tmp_path, probe, *OVERRIDES, *overrides)
        self.pipeline = Pipeline(self.config, dummy_backends(self.config, mixer, clip=self.clip), stages=STAGES)

    def score(self, neurons: list[int] | None = None, force: bool = False) -> tuple[Labels, dict[str, int], int]:
        """``(Labels, manifest counts, target forward calls made by stage 6)``."""
        self.pipeline.run_until("synthesize", [LAYER], neurons)
        before = self.mixer.module.forward_calls
        folder = self.pipeline.run_until("score", [LAYER], neurons, {"score"} if force else None)[LAYER]
        counts = json.loads((folder / "manifest.json").read_text())["counts"]
        return read_model(folder / "artifact.json", Labels), counts, self.mixer.module.forward_calls - before

    @property
    def layer_dir(self) -> Path:
        return self.config.output_dir / self.config.name / LAYER


def test_labels_scores_and_exports_match_hand_computation(tmp_path, mixer):
    run = Run(tmp_path, mixer)
    labels, counts, forward_calls = run.score()

    assert labels.layer == LAYER and labels.function == "topk_squared_image_products"
    by_neuron = {entry.neuron: entry for entry in labels.neurons}
    for neuron, expected in EXPECTED_SCORES.items():
        assert [(s.concept, s.score) for s in by_neuron[neuron].scores] == expected
    zero = by_neuron[0]
    assert zero.labels == ["red things", "crimson things", "blue things"]
    assert zero.multi_labels == ["red things", "blue things", "green things"]
    assert zero.interpretability == pytest.approx(1.0)  # both exemplars are pure red
    assert zero.exemplar_ids == ["img000.png", "img001.png"]
    crimson = next(s for s in zero.scores if s.concept == "crimson things")
    assert (crimson.ranks, crimson.image_ids) == (
        [2, 3],
        [image_id("crimson things", 0), image_id("crimson things", 1)],
    )
    assert (crimson.topk_squared, crimson.mean_rank, crimson.image_products) == (6.5, 2.5, 1.0)
    assert by_neuron[1].labels == ["green things", "red things"]
    assert by_neuron[1].multi_labels == ["green things", "red things"]
    assert by_neuron[2].failed == "synthesize stage failed: summarize stage failed: no valid concept"
    assert by_neuron[2].labels == [] and by_neuron[2].scores == []

    # One batched pass of the target network over the layer's unique generated images.
    assert forward_calls == math.ceil(UNIQUE_GENERATED / BATCH) == 3
    assert counts["generated_images"] == UNIQUE_GENERATED
    assert (counts["target_passes"], counts["target_batches"]) == (1, 3)
    # Each image and text embedded once, although neurons 0 and 1 share r250 in their top pools.
    assert len(run.clip.images) == len(set(run.clip.images)) == CLIP_IMAGES
    assert sorted(run.clip.texts) == sorted(TEXTS)
    assert (counts["clip_images_embedded"], counts["clip_texts_embedded"], counts["clip_cache_hits"]) == (9, 4, 0)
    assert counts["failed_neurons"] == 1

    assert (run.layer_dir / "descriptions.csv").read_text() == DESCRIPTIONS
    assert (run.layer_dir / "final_results.csv").read_text() == FINAL_RESULTS


def test_a_second_run_calls_neither_the_target_nor_clip(tmp_path, mixer):
    first, _, _ = Run(tmp_path, mixer).score()
    again = Run(tmp_path, mixer)
    labels, _, forward_calls = again.score()
    assert labels == first
    assert forward_calls == 0 and again.clip.calls == 0

    # Forced, the stage runs the target again (activations are not cached) but takes every embedding from the cache.
    forced = Run(tmp_path, mixer)
    labels, counts, forward_calls = forced.score(force=True)
    assert labels == first
    assert forward_calls == 3 and forced.clip.calls == 0
    assert (counts["clip_images_embedded"], counts["clip_texts_embedded"], counts["clip_cache_hits"]) == (0, 0, 13)


def test_a_subset_run_is_extended_by_a_larger_one(tmp_path, mixer):
    run = Run(tmp_path, mixer)
    labels, counts, forward_calls = run.score(neurons=[1])
    assert [entry.neuron for entry in labels.neurons] == [1]
    assert forward_calls == math.ceil(4 / BATCH)  # neuron 1's four images only
    assert (
        run.layer_dir / "final_results.csv"
    ).read_text() == "Neuron ID,Label 1,Label 2,Label 3\n1,green things,red things,\n"

    labels, counts, _ = Run(tmp_path, mixer).score()
    assert [entry.neuron for entry in labels.neurons] == [0, 1, 2]
    assert [(s.concept, s.score) for s in labels.neurons[0].scores] == EXPECTED_SCORES[0]
    # New: neuron 0's two exemplars and r150, c120 (r250 is cached from neuron 1); texts crimson and blue.
    assert (counts["clip_images_embedded"], counts["clip_texts_embedded"], counts["clip_cache_hits"]) == (4, 2, 3)
    assert (run.layer_dir / "final_results.csv").read_text() == FINAL_RESULTS


def test_a_missing_generated_image_fails_only_the_neurons_using_it(tmp_path, mixer):
    run = Run(tmp_path, mixer)
    run.pipeline.run_until("synthesize", [LAYER])
    missing = image_id("crimson things", 1)  # only neuron 0 has crimson things
    image_store(run.config.output_dir).path(missing).unlink()

    labels, counts, _ = run.score()
    zero, one, _ = labels.neurons
    assert zero.failed is not None
    assert "generated image(s) missing or unreadable in the image store" in zero.failed
    assert missing in zero.failed and "dnd run synthesize --force" in zero.failed
    assert one.failed is None and one.labels == ["green things", "red things"]
    assert counts["failed_neurons"] == 2


def test_an_unreadable_exemplar_fails_its_neuron(tmp_path, mixer):
    run = Run(tmp_path, mixer)
    run.pipeline.run_until("synthesize", [LAYER])
    (tmp_path / "probe" / "img000.png").unlink()  # neuron 0's best exemplar, gone after stage 2 read it

    labels, _, _ = run.score()
    zero, one, _ = labels.neurons
    assert zero.failed is not None and "exemplar image is unreadable" in zero.failed
    assert one.failed is None and one.labels == ["green things", "red things"]


def test_the_real_clip_embedder_from_a_saved_tiny_clip(tmp_path, mixer):
    # embed.clip_model names a tiny random CLIP folder and no CLIP double is given: Backends builds ClipEmbedder.
    run = Run(tmp_path, mixer, f"embed.clip_model={tiny_clip(tmp_path / 'clip')}")
    run.pipeline = Pipeline(run.config, Backends(run.config, target=mixer), stages=STAGES)
    labels, counts, _ = run.score()

    zero = labels.neurons[0]
    assert [s.topk_squared for s in sorted(zero.scores, key=lambda s: s.concept)] == [42.5, 6.5, 20.5, 0.5]
    assert all(-1.0 <= s.image_products <= 1.0 for s in zero.scores) and len(zero.labels) == 3
    # Interpretability = the cosine of neuron 0's two exemplars (solid reds 255 and 200), embedded here directly.
    red_255, red_200 = run.pipeline.backends.clip.embed_images([solid(PROBE["img000.png"]), solid(PROBE["img001.png"])])
    assert zero.interpretability == pytest.approx(float(red_255 @ red_200), abs=1e-6)
    assert (counts["clip_images_embedded"], counts["clip_texts_embedded"]) == (CLIP_IMAGES, len(TEXTS))


def test_dnd_compare_reads_the_score_folder(tmp_path, mixer):
    run = Run(tmp_path, mixer)
    run.score()
    folder = run.pipeline.store.stage_dir(LAYER, "score", run.pipeline.key("score", LAYER))

    label_set = read_labels(folder)
    assert label_set.method == "dnd"
    assert [(row.layer, row.unit, row.labels, row.score) for row in label_set.rows] == [
        (LAYER, 0, ["red things", "crimson things", "blue things"], 4.0),
        (LAYER, 1, ["green things", "red things"], 2.0),
    ]
    reason = "synthesize stage failed: summarize stage failed: no valid concept"
    assert label_set.warnings == [f"{folder.name}: unit 2 of head has no label: {reason}"]


def test_exports_follow_the_config_that_ran_last_even_when_cached(tmp_path, mixer):
    Run(tmp_path, mixer).score()
    exported = (Run(tmp_path, mixer).layer_dir / "descriptions.csv").read_text()
    Run(tmp_path, mixer, "score.function=mean_rank").score()
    assert (Run(tmp_path, mixer).layer_dir / "descriptions.csv").read_text() != exported

    labels, _, forward_calls = Run(tmp_path, mixer).score()  # the first config again: every stage is cached
    assert forward_calls == 0
    assert (Run(tmp_path, mixer).layer_dir / "descriptions.csv").read_text() == exported == DESCRIPTIONS
