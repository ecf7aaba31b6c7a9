"""The CLIP-Dissect baseline, built in: soft-WPMI labels from our recorded activations and CLIP embeddings.

Method (method.md, section 2): with CLIP image embeddings ``I`` of the probing set and text embeddings ``T`` of a
concept set, ``P = softmax(a · I Tᵀ)`` over concepts; neuron *k*'s top images ``x_i`` by activation, weighted
``p_i`` linearly from ``p_start`` down towards ``p_end``, give ``log p(c|k) = Σ_i log(1 + p_i (P[x_i, c] − 1) + ε)``;
``log p(c) = logsumexp_k log p(c|k) − log n_neurons``; the label is ``argmax_c log p(c|k) − λ log p(c)``.
The output is CLIP-Dissect's own ``descriptions.csv`` format, so both methods can be compared on one model and probe.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from dnd import layout
from dnd.activations import load_activations
from dnd.compare.readers import LabelRow, LabelSet
from dnd.config import ClipDissectConfig
from dnd.errors import DnDError
from dnd.image_embeddings import cached_tensor, probe_image_embeddings
from dnd.store import atomic_write_text, content_key

if TYPE_CHECKING:
    from dnd.backends.embedders import ImageTextEmbedder
    from dnd.pipeline import Pipeline

DESCRIPTIONS_COLUMNS = ("layer", "unit", "description", "similarity")
#: Under the output folder's cache: embeddings of concept sets (safetensors; probing images: dnd.image_embeddings).
CACHE_FOLDER = "clip-dissect"


def soft_wpmi(
    activations: torch.Tensor,
    image_embeddings: torch.Tensor,
    concept_embeddings: torch.Tensor,
    params: ClipDissectConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each neuron's best concept by soft-WPMI.

    Reads ``activations [n_images, n_neurons]``, ``image_embeddings [n_images, d]`` and ``concept_embeddings
    [n_concepts, d]`` (normalised here, so raw CLIP features will do). Returns ``(best concept index [n_neurons]
    (int64), its score [n_neurons])``. The top-image weights are ``p_i = p_start − (i / top_k)(p_start − p_end)``
    for i = 0, 1, …, so the best image has weight ``p_start``; with fewer images than ``top_k`` all are used.
    """
    n_images, n_neurons = activations.shape
    # 1. P[image, concept]: how strongly CLIP sees each concept in each image.
    images = torch.nn.functional.normalize(image_embeddings.float(), dim=-1)
    concepts = torch.nn.functional.normalize(concept_embeddings.float(), dim=-1)
    probabilities = torch.softmax(params.similarity_scale * images @ concepts.T, dim=1)  # [n_images, n_concepts]
    # 2. Each neuron's top images, best first, and their weights.
    k = min(params.top_k, n_images)
    top = torch.topk(activations, k, dim=0).indices  # [k, n_neurons]
    steps = torch.arange(k, dtype=probabilities.dtype, device=probabilities.device)
    weights = (params.p_start - steps / params.top_k * (params.p_start - params.p_end))[:, None, None]  # [k, 1, 1]
    # 3. log p(c|k) for every neuron, a batch of neurons at a time ([k, batch, n_concepts] in memory).
    log_given = torch.empty(n_neurons, concepts.shape[0], dtype=probabilities.dtype, device=probabilities.device)
    for start in range(0, n_neurons, params.neurons_per_batch):
        top_probabilities = probabilities[top[:, start : start + params.neurons_per_batch]]  # [k, batch, n_concepts]
        log_given[start : start + params.neurons_per_batch] = torch.log(
            1 + weights * (top_probabilities - 1) + params.log_epsilon
        ).sum(dim=0)
    # 4. log p(c) over the layer's neurons, then soft-WPMI and its argmax.
    log_prior = torch.logsumexp(log_given, dim=0) - math.log(n_neurons)  # [n_concepts]
    scores, best = (log_given - params.prior_weight * log_prior).max(dim=1)
    return best, scores


def read_concepts(path: Path) -> list[str]:
    """A concept set: one concept per line; blank lines and repeats are dropped, order kept."""
    if not path.is_file():
        raise DnDError(f"concept file {path} not found (one concept per line, e.g. ../shared/reference/concept-sets)")
    concepts = list(dict.fromkeys(line.strip() for line in path.read_text(encoding="utf-8").splitlines()))
    concepts = [concept for concept in concepts if concept]
    if not concepts:
        raise DnDError(f"concept file {path} holds no concept")
    return concepts


def clip_dissect(
    pipeline: Pipeline, layer: str, concepts: list[str], clip: ImageTextEmbedder | None = None
) -> LabelSet:
    """CLIP-Dissect labels for every neuron of ``layer`` over the config's probing set.

    Records the layer first if it is not fresh in the store. Embeddings of the probing images
    (:func:`~dnd.image_embeddings.probe_image_embeddings`) and of the concepts (under
    ``<output_dir>/cache/clip-dissect``) are cached, keyed by model and inputs, so a rerun with another concept set
    or other parameters embeds nothing again. ``clip`` defaults to the run's CLIP (``embed.clip_model``); any
    image-text model will do, such as the offline :class:`~dnd.backends.caption_space.CaptionSpace`.
    """
    config, context = pipeline.config, pipeline.context
    # 1. CLIP first, so a model that cannot be loaded fails before any long recording.
    clip = clip or pipeline.backends.clip
    # 2. The layer's activations (record stage; reused when fresh).
    stage_dir = pipeline.run_until("record", [layer])[layer]
    activations, probe_indices = load_activations(stage_dir)  # [n_images, n_neurons], [n_images]
    # 3. CLIP embeddings of the recorded images and of the concepts, each computed once.
    rows = probe_indices.tolist()
    image_embeddings = probe_image_embeddings(config.output_dir, context.probe, clip, rows, config.embed.batch_size)
    concepts_key = content_key({"model": clip.model, "concepts": concepts})
    concepts_path = layout.cache_dir(config.output_dir) / CACHE_FOLDER / f"concepts-{concepts_key}.safetensors"
    concept_embeddings = cached_tensor(concepts_path, lambda: clip.embed(concepts))
    # 4. soft-WPMI over all neurons.
    best, scores = soft_wpmi(activations, image_embeddings, concept_embeddings, config.clip_dissect)
    label_rows = [
        LabelRow(layer=layer, unit=unit, labels=[concepts[index]], score=score)
        for unit, (index, score) in enumerate(zip(best.tolist(), scores.tolist(), strict=True))
    ]
    return LabelSet(source=str(stage_dir), method="clip-dissect", rows=label_rows)


def write_descriptions(labels: LabelSet, path: Path) -> None:
    """Write ``labels`` in CLIP-Dissect's ``descriptions.csv`` format (``layer,unit,description,similarity``)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(DESCRIPTIONS_COLUMNS)
    writer.writerows((row.layer, row.unit, row.labels[0], row.score) for row in labels.rows)
    atomic_write_text(path, buffer.getvalue())
