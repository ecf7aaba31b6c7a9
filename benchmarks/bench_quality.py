"""Hidden-layer label quality without humans: simulation and ablation of our labels, CLIP-Dissect's and baselines.

Two networks, described with their offline presets (outputs under ``outputs/``, so a finished ``make describe`` run
is reused and a cold one is made first):

- CIFAR-10 ResNet-20 ``layer3`` (``configs/cifar10_resnet20.yaml``): simulation over the CIFAR-10 test set (the
  probing set) and ablation on it (its class folders are the network's classes);
- EfficientNet-Lite0 ``blocks.10`` (``configs/offline.yaml``): simulation over the 1,000 ImageNet samples;
- the same layer's units as the latents of a 32-latent SAE trained here on its features (``units.sae``; the SAE is
  kept in ``outputs/sae/``, so its hash and the run's keys stay the same), simulated like the neurons beside them.

Each is scored for our Label 1, our ``dnd clip-dissect`` labels on the same recorded activations (concept set
``20k.txt``, the offline caption space standing in for CLIP), and the baselines (labels shuffled across neurons,
the constant "images", each neuron's most frequent exemplar caption; ablation adds random neurons). The simulator
is the offline stand-in: MiniLM similarity of a label with each image's classifier caption. This is the number to
watch when editing ``prompts/`` or scoring.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import IMAGENET_SAMPLES, ROOT, SHARED
from dnd.backends.embedders import load_text_embedder
from dnd.clip_dissect import clip_dissect, read_concepts
from dnd.compare.readers import read_run_labels
from dnd.config import EmbedConfig, load_config
from dnd.evaluate.ablation import evaluate_ablation
from dnd.evaluate.baselines import quality_sources, run_captions
from dnd.evaluate.metrics import PairedDifference
from dnd.evaluate.simulation import evaluate_simulation
from dnd.image_embeddings import CAPTION_SPACE, image_text_space
from dnd.pipeline import Pipeline
from dnd.units import train_sae

CIFAR = SHARED / "data" / "cifar10-test"
CONCEPTS = SHARED / "reference" / "concept-sets" / "20k.txt"
OURS, CLIP_DISSECT = "ours (Label 1)", "clip-dissect"
NETWORKS = {
    "cifar_resnet20 layer3": ("configs/cifar10_resnet20.yaml", "layer3"),
    "efficientnet_lite0 blocks.10": ("configs/offline.yaml", "blocks.10"),
}
SAE_NETWORK = "efficientnet_lite0 blocks.10 SAE"
SAE_LATENTS = 32
SAE_TRAINING_IMAGES = 200  # every 5th ImageNet sample: 39,200 positions of 112 features
SHUFFLES = 5
K = 3


def run() -> dict[str, Any]:
    if not CIFAR.is_dir() or not IMAGENET_SAMPLES.is_dir() or not CONCEPTS.is_file():
        return {"skipped": f"needs the CIFAR-10 test images, the ImageNet samples and 20k.txt in {SHARED}"}
    results: dict[str, Any] = {"simulator": "captions (MiniLM similarity of label and classifier caption)", "k": K}
    for network, (config_file, layer) in NETWORKS.items():
        # The configs as they are (relative paths, from the repository root, as make runs it): the keys of a
        # `make describe` run, so its stages are reused.
        results[network] = quality(load_config(ROOT / config_file), layer, ablate=network.startswith("cifar"))
    results[SAE_NETWORK] = quality(sae_config(), "blocks.10", ablate=False)
    return results


def sae_config() -> Any:
    """configs/offline.yaml describing the latents of a ReLU SAE on ``blocks.10`` (run ``offline-sae``), trained on
    its features at every position of :data:`SAE_TRAINING_IMAGES` probe images the first time, then read back."""
    from safetensors.torch import save_file

    config = load_config(ROOT / "configs" / "offline.yaml")
    path = Path(config.output_dir) / "sae" / f"efficientnet_lite0-blocks.10-{SAE_LATENTS}.safetensors"
    if not path.is_file():
        pipeline = Pipeline(config)
        probe, target = pipeline.context.probe, pipeline.backends.target
        indices = range(0, len(probe), len(probe) // SAE_TRAINING_IMAGES)
        features, size = [], config.probe.batch_size
        for start in range(0, len(indices), size):
            pixels = torch.stack([target.preprocess(probe.load(i)) for i in indices[start : start + size]])
            maps = target.capture(pixels, ["blocks.10"])["blocks.10"].float().cpu()
            features.append(maps.movedim(1, -1).flatten(0, 2))
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(train_sae(torch.cat(features), SAE_LATENTS).tensors, str(path))
    return load_config(ROOT / "configs" / "offline.yaml", [f"units.sae={path}", "name=offline-sae"])


def quality(config: Any, layer: str, ablate: bool) -> dict[str, Any]:
    """Simulation (and ablation on the probing set's class folders) of our labels, CLIP-Dissect's and baselines."""
    pipeline = Pipeline(config)
    ours = read_run_labels(pipeline.describe([layer])[layer]).model_copy(update={"source": OURS})
    space, _ = image_text_space(CAPTION_SPACE, pipeline.backends)
    theirs = clip_dissect(pipeline, layer, read_concepts(CONCEPTS), space).model_copy(update={"source": CLIP_DISSECT})
    captions = run_captions(pipeline, layer, sorted(ours.units(layer)))
    sources = quality_sources(ours, layer, captions, config.seed, SHUFFLES)
    sources = {OURS: sources.pop(OURS), CLIP_DISSECT: [theirs], **sources}
    simulation = evaluate_simulation(pipeline, sources, layer, space)
    result: dict[str, Any] = {
        "neurons": len(ours.rows),
        "held_out_images": simulation.n_held_out,
        "distinct_labels": len({row.labels[0] for row in ours.rows}),
        "simulation": {
            r.source: {
                "pearson": round(r.pearson.mean, 4),
                "pearson_std": round(r.pearson.std, 3),
                "share_above_0.1": round(r.pearson.share_above, 3),
                "spearman": round(r.spearman.mean, 4),
                **_versus_ours(r.first_minus_this),
            }
            for r in simulation.results
        },
    }
    if ablate:
        text = load_text_embedder("minilm", EmbedConfig(), torch.device("cpu"))
        ablation = evaluate_ablation(config, sources, layer, config.probe.path, text, K)
        result["accuracy_before_ablation"] = round(ablation.accuracy, 4)
        result["ablation"] = {
            r.source: {
                "targeted_drop": round(r.targeted_drop, 4),
                "untargeted_drop": round(r.untargeted_drop, 4),
                "score": round(r.score, 4),
                **_versus_ours(r.first_minus_this),
            }
            for r in ablation.results
        }
    return result


def _versus_ours(difference: PairedDifference | None) -> dict[str, Any]:
    """Ours minus this label set, per neuron or class, with its 95 % bootstrap interval (nothing for ours)."""
    if difference is None:
        return {}
    interval = [round(difference.low, 4), round(difference.high, 4)]
    return {"ours_minus_this": round(difference.mean, 4), "ours_minus_this_95": interval}


def table(results: dict[str, Any]) -> list[str]:
    """The hidden-layer quality table ``make bench`` prints: per network and label set, mean held-out Pearson (share
    of neurons above 0.1) and, where measured, the ablation score (targeted − untargeted accuracy drop); beside each,
    ours minus it with the 95 % bootstrap interval over neurons (classes for ablation)."""
    if "skipped" in results:
        return [f"quality: skipped ({results['skipped']})"]
    lines = [
        f"{'network':<34}{'labels':<24}{'simulation r':>13}{'> 0.1':>7}{'ours − this [95 %]':>28}"
        f"{'ablation':>10}{'ours − this [95 %]':>28}"
    ]
    for network in [*NETWORKS, SAE_NETWORK]:
        if network not in results:
            continue
        result = results[network]
        names = dict.fromkeys([*result["simulation"], *result.get("ablation", {})])
        for name in names:
            simulation = result["simulation"].get(name)
            ablation = result.get("ablation", {}).get(name)
            cells = f"{simulation['pearson']:>13.4f}{simulation['share_above_0.1']:>7.0%}" if simulation else " " * 20
            cells += _versus_cell(simulation)
            cells += f"{ablation['score']:>10.4f}" if ablation else f"{'':>10}"
            cells += _versus_cell(ablation)
            lines.append(f"{network:<34}{name:<24}{cells}".rstrip())
    return lines


def _versus_cell(numbers: dict[str, Any] | None) -> str:
    if not numbers or "ours_minus_this" not in numbers:
        return " " * 28
    low, high = numbers["ours_minus_this_95"]
    return f"{numbers['ours_minus_this']:>+9.4f} [{low:+.4f}, {high:+.4f}]"


if __name__ == "__main__":
    outcome = run()
    print(json.dumps(outcome, indent=1))
    print("\n".join(table(outcome)))
