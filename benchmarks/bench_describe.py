"""All six stages of `dnd describe --config configs/offline.yaml` on every neuron of blocks.10, from a cold start.

The real offline models throughout (EfficientNet-Lite0 as target, captioner and image embedder; SmolLM2; MiniLM;
retrieval from the 1,000 ImageNet samples): wall time per stage and in all (the README's goal: under 10 minutes on 2
CPU cores after setup), LLM requests per neuron (goal: at most N + 1), captions per unique image (goal: 1), retrieved
images per neuron, target passes.

:func:`run_naive` (``python -m benchmarks.run naive``, not in the default set) times the naive way as a ratio: the
same pipeline one neuron at a time for ``NAIVE_NEURONS`` neurons with nothing shared between neurons (each in a fresh
output folder; the recorded activations are copied in, as the released code caches them too, and the loaded models,
retrieval's captioned pool included, are handed over, so the ratio measures reuse and batching, not model loading).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import IMAGENET_SAMPLES, ROOT
from dnd.artifacts import Concepts, Exemplars, Generations, Labels
from dnd.backends.container import Backends
from dnd.config import RunConfig, load_config
from dnd.layout import ARTIFACT_FILE, MANIFEST_FILE
from dnd.pipeline import Pipeline
from dnd.stages.registry import STAGE_NAMES as STAGES
from dnd.store import read_model

LAYER = "blocks.10"
NAIVE_NEURONS = list(range(8))
#: What the naive runs are handed over from ours instead of loading their own.
ROLES = ("target", "captioner", "concept_llm", "generator", "image_embedder", "text_embedder")


def run() -> dict[str, Any]:
    if not IMAGENET_SAMPLES.is_dir():
        return {"skipped": f"needs {IMAGENET_SAMPLES}"}
    with tempfile.TemporaryDirectory() as tmp:
        pipeline = Pipeline(_offline_config(Path(tmp) / "ours"))
        started = time.perf_counter()
        pipeline.describe([LAYER])
        return _report(pipeline, time.perf_counter() - started)


def run_naive() -> dict[str, Any]:
    """Stages 2-6 for ``NAIVE_NEURONS`` one neuron at a time against ours for them together, both with warm models."""
    if not IMAGENET_SAMPLES.is_dir():
        return {"skipped": f"needs {IMAGENET_SAMPLES}"}
    with tempfile.TemporaryDirectory() as tmp:
        pipeline = Pipeline(_offline_config(Path(tmp) / "ours"))
        pipeline.describe([LAYER], NAIVE_NEURONS)  # untimed: records the layer, loads every model, captions the pool
        naive = _naive(pipeline, Path(tmp))
        ours = _subset_seconds(pipeline, Path(tmp))
    return {
        "layer": LAYER,
        "neurons": len(NAIVE_NEURONS),
        "naive_seconds_stages_2_to_6": naive,
        "ours_seconds_stages_2_to_6": ours,
        "naive_over_ours": round(naive / ours, 2),
    }


def _offline_config(output_dir: Path) -> RunConfig:
    """configs/offline.yaml over the ImageNet samples with this checkout's prompts, writing to ``output_dir``."""
    return load_config(
        ROOT / "configs/offline.yaml",
        [f"output_dir={output_dir}", f"probe.path={IMAGENET_SAMPLES}", f"prompts_dir={ROOT / 'prompts'}"],
    )


def _report(pipeline: Pipeline, wall: float) -> dict[str, Any]:
    folder = {stage: pipeline.store.stage_dir(LAYER, stage, pipeline.key(stage, LAYER)) for stage in STAGES}
    manifests = {stage: json.loads((folder[stage] / MANIFEST_FILE).read_text()) for stage in STAGES}
    exemplars = read_model(folder["crop"] / ARTIFACT_FILE, Exemplars)
    concepts = read_model(folder["summarize"] / ARTIFACT_FILE, Concepts)
    generations = read_model(folder["synthesize"] / ARTIFACT_FILE, Generations)
    labels = read_model(folder["score"] / ARTIFACT_FILE, Labels)
    neurons = len(labels.neurons)
    captions, llm, synthesis = (manifests[s]["counts"] for s in ("caption", "summarize", "synthesize"))
    retrieved = sum(len(c.image_ids) for entry in generations.neurons for c in entry.concepts)
    return {
        "config": "configs/offline.yaml",
        "network": "efficientnet_lite0",
        "layer": LAYER,
        "neurons": neurons,
        "failed_neurons": sum(entry.failed is not None for entry in labels.neurons),
        "neurons_with_label_1": sum(bool(entry.labels) for entry in labels.neurons),
        "exemplars": sum(len(entry.exemplars) for entry in exemplars.neurons),
        "unique_exemplar_images": captions["unique_images"],
        "captions_per_unique_image": round(captions["captioned"] / max(captions["unique_images"], 1), 3),
        "llm_requests_per_neuron": round(llm["llm_requests"] / neurons, 2),
        "llm_tokens_per_neuron": round((llm["prompt_tokens"] + llm["completion_tokens"]) / neurons, 1),
        "candidate_concepts_per_neuron": round(sum(len(e.concepts) for e in concepts.neurons) / neurons, 2),
        "distinct_concepts": synthesis["unique_concepts"],
        "retrieved_images_per_neuron": round(retrieved / neurons, 2),
        "images_unavailable": synthesis["images_unavailable"],
        "target_passes_over_retrieved_images": manifests["score"]["counts"]["target_passes"],
        "wall_seconds_per_stage": {stage: round(seconds, 1) for stage, seconds in pipeline.wall_seconds.items()},
        "wall_seconds_total": round(wall, 1),
    }


def _naive(ours: Pipeline, tmp: Path) -> float:
    """Seconds for each of ``NAIVE_NEURONS`` alone in a fresh output folder: no caption or LLM answer shared."""
    started = time.perf_counter()
    for neuron in NAIVE_NEURONS:
        _handed_over(ours, tmp / f"naive-{neuron}").describe([LAYER], [neuron])
    return round(time.perf_counter() - started, 2)


def _subset_seconds(ours: Pipeline, tmp: Path) -> float:
    """Our stages 2-6 for the naive run's neurons together, in a fresh folder with the same handed-over models."""
    pipeline = _handed_over(ours, tmp / "together")
    started = time.perf_counter()
    pipeline.describe([LAYER], NAIVE_NEURONS)
    return round(time.perf_counter() - started, 2)


def _handed_over(ours: Pipeline, output_dir: Path) -> Pipeline:
    """A pipeline writing to the empty ``output_dir`` with our recorded activations and our loaded models."""
    config = _offline_config(output_dir)
    pipeline = Pipeline(config, Backends(config, **{role: getattr(ours.backends, role) for role in ROLES}))
    record = ours.store.stage_dir(LAYER, "record", ours.key("record", LAYER))
    shutil.copytree(record, pipeline.store.stage_dir(LAYER, "record", pipeline.key("record", LAYER)))
    return pipeline
