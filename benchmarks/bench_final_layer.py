"""Label quality, measured end to end offline: the output layer of CIFAR-10 ResNet-20 described with the offline preset.

Unit ``k`` of ``fc`` is class ``k``, so a good Label 1 means its class name. The score is the mean MiniLM cosine
similarity between each unit's Label 1 and its class name (method.md, section 3, in the offline sentence space),
beside two baselines from the same run: the constant label "images", and each unit's most frequent exemplar caption
(what stage 3 alone says, no LLM). This is the number to watch when editing ``prompts/``. The same run's manifests give
the wall time per stage, the LLM requests per neuron and the captions per unique image.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections import Counter
from typing import Any

import torch

from benchmarks.common import ROOT, SHARED
from dnd.artifacts import Captions, Labels
from dnd.backends.embedders import TextEmbedder, load_text_embedder
from dnd.compare.readers import LabelRow, LabelSet
from dnd.config import EmbedConfig, load_config
from dnd.data import open_probe
from dnd.evaluate.final_layer import evaluate_final_layer
from dnd.layout import ARTIFACT_FILE, MANIFEST_FILE
from dnd.pipeline import Pipeline
from dnd.stages.registry import STAGE_NAMES as STAGES

LAYER = "fc"
CONSTANT = "images"


def run() -> dict[str, Any]:
    if not (SHARED / "data" / "cifar10-test").is_dir() or not (SHARED / "models").is_dir():
        return {"skipped": f"needs the CIFAR-10 images and ResNet-20 weights in {SHARED}"}
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(
            ROOT / "configs/cifar10_resnet20.yaml",
            [
                f"output_dir={tmp}",
                f"probe.path={SHARED / 'data' / 'cifar10-test'}",
                f"target.weights={SHARED / 'models' / 'resnet20-12fca82f.th'}",
                f"prompts_dir={ROOT / 'prompts'}",
            ],
        )
        pipeline = Pipeline(config)
        started = time.perf_counter()
        pipeline.describe([LAYER])
        wall = time.perf_counter() - started
        folders = {stage: pipeline.store.stage_dir(LAYER, stage, pipeline.key(stage, LAYER)) for stage in STAGES}
        labels = Labels.model_validate_json((folders["score"] / ARTIFACT_FILE).read_text())
        captions = Captions.model_validate_json((folders["caption"] / ARTIFACT_FILE).read_text())
        classes = open_probe(config.probe).class_names  # the folders, in CIFAR-10's class order
        embedder = load_text_embedder("minilm", EmbedConfig(), torch.device("cpu"))
        table = final_layer_table(labels, captions, classes, embedder)
        manifests = {stage: json.loads((folder / MANIFEST_FILE).read_text()) for stage, folder in folders.items()}
    neurons = len(labels.neurons)
    caption_counts, llm = manifests["caption"]["counts"], manifests["summarize"]["counts"]
    return {
        "network": "cifar_resnet20",
        "layer": LAYER,
        "config": "configs/cifar10_resnet20.yaml",
        "neurons": neurons,
        "failed_neurons": sum(entry.failed is not None for entry in labels.neurons),
        "final_layer_minilm_cosine": table,
        "llm_requests_per_neuron": round(llm["llm_requests"] / neurons, 2),
        "captions_per_unique_image": round(caption_counts["captioned"] / max(caption_counts["unique_images"], 1), 3),
        "wall_seconds_per_stage": {stage: round(seconds, 1) for stage, seconds in pipeline.wall_seconds.items()},
        "wall_seconds_total": round(wall, 1),
    }


def final_layer_table(labels: Labels, captions: Captions, classes: list[str], embedder: TextEmbedder) -> dict[str, Any]:
    """Mean cosine (in ``embedder``'s space) to the class name of: our Label 1, the constant label, the most frequent
    caption; over the units that have a label (a failed unit is listed, not scored). ``classes[k]`` names unit k."""
    units = [entry.neuron for entry in labels.neurons if entry.labels]
    ours = {entry.neuron: entry.labels[0] for entry in labels.neurons if entry.labels}
    frequent = {entry.neuron: _most_frequent([c.text for c in entry.captions]) for entry in captions.neurons}
    sets = {
        "ours_label_1": ours,
        f"constant_{CONSTANT}": dict.fromkeys(units, CONSTANT),
        "most_frequent_caption": {unit: frequent[unit] for unit in units if frequent.get(unit)},
    }
    table: dict[str, Any] = {}
    for name, chosen in sets.items():
        rows = [LabelRow(layer=LAYER, unit=unit, labels=[label]) for unit, label in chosen.items()]
        result = evaluate_final_layer(
            LabelSet(source=name, method="bench", rows=rows), {"first-synonym": classes}, [embedder], bins=10
        )[0]
        table[name] = round(result.stats.mean, 4)
    table["per_unit"] = {
        classes[unit]: {"ours": ours[unit], "most_frequent_caption": frequent.get(unit)} for unit in units
    }
    return table


def _most_frequent(texts: list[str]) -> str | None:
    """The most frequent text; ties go to the one that comes first (the better exemplar)."""
    return Counter(texts).most_common(1)[0][0] if texts else None


if __name__ == "__main__":
    print(json.dumps(run(), indent=1))
