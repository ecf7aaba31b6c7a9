"""The built-in CLIP-Dissect: soft-WPMI against hand computation, and the whole command offline with a tiny CLIP."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import dnd.pipeline
from dnd.activations import load_activations
from dnd.backends.embedders import ClipEmbedder
from dnd.cli import app
from dnd.clip_dissect import clip_dissect, read_concepts, soft_wpmi, write_descriptions
from dnd.compare.readers import read_labels
from dnd.config import ClipDissectConfig
from dnd.errors import DnDError
from dnd.pipeline import Pipeline
from tests.helpers import backends_for, make_config
from tests.tiny_models import tiny_clip

CONCEPTS = ["red", "green", "blue", "dog", "stripes"]

# --- soft-WPMI against plain-Python arithmetic ------------------------------------------------------------------

# 3 images × 2 concepts × 2 neurons, 2-d embeddings (already unit length).
IMAGES = [[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]
CONCEPT_VECTORS = [[1.0, 0.0], [0.0, 1.0]]
# neuron 0 prefers images 0 > 1 > 2, neuron 1 prefers 2 > 0 > 1.
ACTIVATIONS = [[3.0, 2.0], [2.0, 1.0], [1.0, 3.0]]


def hand_soft_wpmi(params: ClipDissectConfig) -> tuple[list[int], list[float]]:
    """The method as written in method.md, one number at a time."""
    probabilities = []
    for image in IMAGES:
        logits = [params.similarity_scale * sum(x * y for x, y in zip(image, c, strict=True)) for c in CONCEPT_VECTORS]
        total = sum(math.exp(v) for v in logits)
        probabilities.append([math.exp(v) / total for v in logits])
    log_given = []
    for neuron in range(2):
        order = sorted(range(3), key=lambda i: -ACTIVATIONS[i][neuron])[: params.top_k]
        weights = [params.p_start - (i / params.top_k) * (params.p_start - params.p_end) for i in range(len(order))]
        log_given.append(
            [
                sum(
                    math.log(1 + w * (probabilities[x][c] - 1) + params.log_epsilon)
                    for w, x in zip(weights, order, strict=True)
                )
                for c in range(2)
            ]
        )
    log_prior = [math.log(sum(math.exp(log_given[k][c]) for k in range(2))) - math.log(2) for c in range(2)]
    best, scores = [], []
    for k in range(2):
        score = [log_given[k][c] - params.prior_weight * log_prior[c] for c in range(2)]
        best.append(max(range(2), key=lambda c: score[c]))
        scores.append(max(score))
    return best, scores


@pytest.mark.parametrize(
    "overrides",
    [
        {"top_k": 3},  # every image is a top image
        {"top_k": 2, "prior_weight": 0.5},  # one image left out, half the prior
        {"top_k": 100, "neurons_per_batch": 1},  # fewer images than top_k; one neuron per batch
    ],
)
def test_soft_wpmi_matches_hand_computation(overrides):
    params = ClipDissectConfig(**overrides)
    best, scores = soft_wpmi(torch.tensor(ACTIVATIONS), torch.tensor(IMAGES), torch.tensor(CONCEPT_VECTORS), params)
    expected_best, expected_scores = hand_soft_wpmi(params)
    assert best.tolist() == expected_best == [0, 1]
    assert scores.tolist() == pytest.approx(expected_scores, abs=2e-5)  # float32 sums of logs


def test_soft_wpmi_normalises_its_inputs_and_batches_neurons_alike():
    generator = torch.Generator().manual_seed(0)
    activations = torch.randn(40, 7, generator=generator)
    images, concepts = torch.randn(40, 5, generator=generator), torch.randn(9, 5, generator=generator)
    reference = soft_wpmi(activations, images, concepts, ClipDissectConfig(top_k=10))
    scaled = soft_wpmi(activations, 3 * images, 0.5 * concepts, ClipDissectConfig(top_k=10, neurons_per_batch=2))
    assert torch.equal(reference[0], scaled[0])
    torch.testing.assert_close(reference[1], scaled[1])


def test_read_concepts_drops_blanks_and_repeats(tmp_path):
    path = tmp_path / "concepts.txt"
    path.write_text("dog\n\n cat \ndog\nstripes\n")
    assert read_concepts(path) == ["dog", "cat", "stripes"]
    with pytest.raises(DnDError, match="concept file .* not found"):
        read_concepts(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(DnDError, match="holds no concept"):
        read_concepts(tmp_path / "empty.txt")


# --- the command's logic, end to end -----------------------------------------------------------------------------


class CountingClip(ClipEmbedder):
    """A real (tiny) CLIP that counts the images and texts it embeds."""

    def __init__(self, folder: Path):
        super().__init__("clip", str(folder), torch.device("cpu"), batch_size=5)
        self.images = self.texts = 0

    def embed_images(self, images):
        self.images += len(images)
        return super().embed_images(images)

    def embed(self, texts):
        self.texts += len(texts)
        return super().embed(texts)


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory) -> Path:
    return tiny_clip(tmp_path_factory.mktemp("clip"))


def test_clip_dissect_end_to_end_offline(tmp_path, image_folder, mixer, clip_folder):
    config = make_config(tmp_path, image_folder, f"embed.clip_model={clip_folder}", "clip_dissect.top_k=4")
    clip = CountingClip(clip_folder)

    labels = clip_dissect(Pipeline(config, backends_for(config, mixer)), "conv", CONCEPTS, clip)

    # Same answer as soft-WPMI over the recorded activations and CLIP embeddings of the same images, in row order.
    stage_dir = Pipeline(config, backends_for(config, mixer)).run_until("record", ["conv"])["conv"]
    activations, probe_indices = load_activations(stage_dir)
    probe = sorted(image_folder.glob("*.png"))
    images = clip.embed_images([Image.open(probe[i]).convert("RGB") for i in probe_indices.tolist()])
    best, scores = soft_wpmi(activations, images, clip.embed(CONCEPTS), config.clip_dissect)
    assert [(row.layer, row.unit) for row in labels.rows] == [("conv", 0), ("conv", 1)]
    assert [row.labels[0] for row in labels.rows] == [CONCEPTS[i] for i in best.tolist()]
    assert [row.score for row in labels.rows] == pytest.approx(scores.tolist(), rel=1e-5)
    assert mixer.module.forward_calls == 3  # 12 images in batches of 4, recorded once

    # A second run reuses the recording and both embedding caches.
    again = CountingClip(clip_folder)
    assert clip_dissect(Pipeline(config, backends_for(config, mixer)), "conv", CONCEPTS, again) == labels
    assert (again.images, again.texts, mixer.module.forward_calls) == (0, 0, 3)

    # The CSV is CLIP-Dissect's format: our reader reads it back unchanged.
    out = tmp_path / "descriptions.csv"
    write_descriptions(labels, out)
    assert out.read_text().splitlines()[0] == "layer,unit,description,similarity"
    back = read_labels(out)
    assert back.method == "clip-dissect" and not back.warnings
    assert [(r.unit, r.labels) for r in back.rows] == [(r.unit, r.labels) for r in labels.rows]
    assert [r.score for r in back.rows] == pytest.approx([r.score for r in labels.rows])


def test_clip_dissect_command(tmp_path, image_folder, mixer, clip_folder, monkeypatch):
    config_file = tmp_path / "run.yaml"
    config_file.write_text(
        f"name: test\noutput_dir: {tmp_path / 'outputs'}\nprobe: {{path: {image_folder}, num_workers: 0}}\n"
        f"embed: {{clip_model: {clip_folder}}}\n"
    )
    monkeypatch.setattr(dnd.pipeline, "Pipeline", lambda config: Pipeline(config, backends_for(config, mixer)))
    concepts = tmp_path / "concepts.txt"
    concepts.write_text("\n".join(CONCEPTS))
    runner = CliRunner()
    args = ["clip-dissect", "--config", str(config_file), "--layer", "conv", "--concepts", str(concepts)]

    result = runner.invoke(app, [*args, "--set", "clip_dissect.top_k=3"])
    assert result.exit_code == 0, result.output
    assert "conv: 2 neurons labelled from 5 concepts" in result.output
    written = read_labels(tmp_path / "outputs" / "test" / "conv" / "clip-dissect.csv")
    assert [row.unit for row in written.rows] == [0, 1]
    assert {row.labels[0] for row in written.rows} <= set(CONCEPTS)

    result = runner.invoke(app, [*args[:-1], str(tmp_path / "nope.txt")])
    assert result.exit_code == 2
    assert "nope.txt not found" in " ".join(result.output.split())


def test_clip_dissect_help_has_an_example():
    result = CliRunner().invoke(app, ["clip-dissect", "--help"])
    assert result.exit_code == 0
    assert "Example: dnd clip-dissect --config" in " ".join(result.output.split())
