"""Stages 1–4 on the offline config: reuse (captions per unique image), LLM cost per neuron, time per stage.

EfficientNet-Lite0 and SmolLM2 are the real offline models. No BLIP weights can be had offline, so the captioner
is a tiny random BLIP (the same code path; its captions are random words, which costs the LLM the same tokens).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import dnd.backends.captioners as captioners
from benchmarks.common import IMAGENET_SAMPLES, ROOT
from dnd.artifacts import Captions, Exemplars
from dnd.config import load_config
from dnd.pipeline import Pipeline
from dnd.store import read_model
from tests.tiny_models import tiny_blip

NEURONS = list(range(16))
IMAGES = 200
LAYER = "blocks.10"
STAGES = ("record", "crop", "caption", "summarize")


def run() -> dict[str, Any]:
    if not IMAGENET_SAMPLES.is_dir():
        return {"skipped": f"needs {IMAGENET_SAMPLES}"}
    captioned = {"images": 0}
    real_build = captioners.build_captioner

    def counting_build(config, device):  # counts every image the captioner really sees
        captioner = real_build(config, device)
        caption = captioner.caption

        def counted(images):
            captioned["images"] += len(images)
            return caption(images)

        captioner.caption = counted
        return captioner

    captioners.build_captioner = counting_build
    try:
        with tempfile.TemporaryDirectory() as tmp:
            config = load_config(
                ROOT / "configs/offline.yaml",
                [
                    f"output_dir={tmp}/outputs",
                    f"probe.path={IMAGENET_SAMPLES}",
                    f"probe.limit={IMAGES}",
                    f"caption.model={tiny_blip(Path(tmp) / 'blip')}",
                    f"prompts_dir={ROOT / 'prompts'}",
                    "stop_after=null",
                ],
            )
            pipeline = Pipeline(config)
            pipeline.describe([LAYER], NEURONS)
            return _report(pipeline, captioned["images"])
    finally:
        captioners.build_captioner = real_build


def _report(pipeline: Pipeline, images_captioned: int) -> dict[str, Any]:
    folders = {stage: pipeline.store.stage_dir(LAYER, stage, pipeline.key(stage, LAYER)) for stage in STAGES}
    manifests = {stage: json.loads((folder / "manifest.json").read_text()) for stage, folder in folders.items()}
    exemplars = read_model(folders["crop"] / "artifact.json", Exemplars)
    captions = read_model(folders["caption"] / "artifact.json", Captions)
    llm = manifests["summarize"]["counts"]
    unique = manifests["caption"]["counts"]["unique_images"]
    return {
        "network": "efficientnet_lite0",
        "layer": LAYER,
        "neurons": len(NEURONS),
        "probe_images": IMAGES,
        "exemplars": sum(len(entry.exemplars) for entry in exemplars.neurons),
        "unique_exemplar_images": unique,
        "captions_per_unique_image": round(images_captioned / unique, 3),
        "captioned_neurons": sum(entry.failed is None for entry in captions.neurons),
        "llm_requests_per_neuron": round(llm["llm_requests"] / len(NEURONS), 2),
        "llm_tokens_per_neuron": round((llm["prompt_tokens"] + llm["completion_tokens"]) / len(NEURONS), 1),
        "released_code_llm_requests_per_neuron": 15,  # method.md: 10 simplifications + 5 summaries
        "seconds_per_stage": {stage: manifest["seconds"] for stage, manifest in manifests.items()},
    }
