"""Simulation: how well does a neuron's label alone predict its activations on images it was not chosen by?

The protocol of the automated-interpretability literature (as Linear Explanations, Oikarinen & Weng 2024, apply it
to vision neurons):

1. the probing images are split by a fixed seeded rule (:func:`split_rows`: each image's hash of seed and id) into a
   *fit* half and a *held-out* half; every number here is computed on the held-out half only, so a label set made
   from the fit half (the rule is public) is scored on images its maker never saw;
2. a *simulator* predicts each held-out image's activation from the label alone: the image-text similarity of the
   label with the image, by CLIP or SigLIP (any ``transformers`` image-text model; the paper used SigLIP
   ViT-SO400M-14-384), or offline by :class:`~dnd.backends.caption_space.CaptionSpace` (the MiniLM similarity of the
   label with the image's caption by the run's captioner, an ImageNet classifier's class names);
3. a neuron's score is the Pearson correlation between predicted and real activations (stage 1's summaries) over the
   held-out images; Spearman's rank correlation is reported beside it. A neuron whose activations, or whose label's
   predictions, are constant on the held-out half has no defined correlation and scores 0.

Per label set the layer gets the mean, the spread (population std) and the share of neurons above
:data:`GOOD_CORRELATION`; every set after the first also gets the first set's Pearson minus its own, paired by
neuron, with a seeded 95 % bootstrap interval (:func:`~dnd.evaluate.metrics.paired_difference`): whether a label set
beats a baseline by more than the neurons' spread explains. Image embeddings are cached per model and probing set
(:func:`~dnd.image_embeddings.probe_image_embeddings`), so a second label set costs only its text embeddings.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from pydantic import BaseModel, Field

from dnd.activations import load_activations
from dnd.backends.embedders import ImageTextEmbedder
from dnd.compare.readers import LabelSet
from dnd.errors import DnDError
from dnd.evaluate.metrics import PairedDifference, paired_difference, scores_by_item
from dnd.evaluate.output import write_csv_or_json
from dnd.image_embeddings import probe_image_embeddings
from dnd.pipeline import Pipeline

#: A neuron whose held-out correlation exceeds this counts as simulated (the share is reported per layer).
GOOD_CORRELATION = 0.1
CSV_COLUMNS = ("source", "draw", "layer", "simulator", "unit", "label", "pearson", "spearman")
#: What one row of the CSV results holds.
CSV_ROW = "label set, draw and neuron"


def split_rows(image_ids: list[str], seed: int) -> tuple[list[int], list[int]]:
    """``(fit rows, held-out rows)`` of ``image_ids``, each ascending: the images are ordered by the sha256 of
    ``"<seed>:<id>"`` and the first ``len // 2`` of that order are the fit half. The rule depends only on the ids and
    the seed, never on the order of the set or the machine."""
    order = sorted(range(len(image_ids)), key=lambda row: hashlib.sha256(f"{seed}:{image_ids[row]}".encode()).digest())
    half = len(order) // 2
    return sorted(order[:half]), sorted(order[half:])


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Each column's ranks of ``values [n, m]`` (0-based, ties given their mean rank), float64 ``[n, m]``."""
    ranks = torch.empty(values.shape, dtype=torch.float64)
    order = values.argsort(dim=0, stable=True)
    for column in range(values.shape[1]):
        ordered = values[order[:, column], column]
        _, inverse, counts = torch.unique_consecutive(ordered, return_inverse=True, return_counts=True)
        ends = counts.cumsum(0)
        mean_rank = (ends - counts + ends - 1).double() / 2  # [groups]: first and last position of each tie group
        ranks[order[:, column], column] = mean_rank[inverse]
    return ranks


def correlations(actual: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each column of ``actual [n, m]`` with the same column of ``predicted [n, m]``, float64
    ``[m]``; 0 where either column is constant (no defined correlation)."""
    a = actual.double() - actual.double().mean(dim=0)
    p = predicted.double() - predicted.double().mean(dim=0)
    scale = a.norm(dim=0) * p.norm(dim=0)
    return torch.where(scale > 0, (a * p).sum(dim=0) / scale.clamp(min=1e-300), 0.0)


class Summary(BaseModel):
    """One correlation over a layer's neurons (pooled over draws for a baseline of several)."""

    n: int
    mean: float
    std: float = Field(description="Population standard deviation over the neurons.")
    share_above: float = Field(description=f"Share of neurons with a correlation above {GOOD_CORRELATION}.")

    @classmethod
    def of(cls, values: torch.Tensor) -> Summary:
        values = values.double()
        return cls(
            n=values.numel(),
            mean=values.mean().item(),
            std=values.std(correction=0).item(),
            share_above=(values > GOOD_CORRELATION).double().mean().item(),
        )


class NeuronSimulation(BaseModel):
    unit: int
    draw: int = Field(0, description="Which seeded draw of a label set (the shuffled baseline has several).")
    label: str
    pearson: float
    spearman: float


class SimulationResult(BaseModel):
    """One label set (or baseline, all its draws) simulated on one layer."""

    source: str
    draws: int
    pearson: Summary
    spearman: Summary
    first_minus_this: PairedDifference | None = Field(
        None,
        description="The first label set's Pearson minus this one's, neuron by neuron, with a 95 % bootstrap "
        "interval (None for the first set itself).",
    )
    neurons: list[NeuronSimulation]


class SimulationEvaluation(BaseModel):
    layer: str
    simulator: str = Field(description="The image-text model that predicted the activations (its cache identity).")
    seed: int = Field(description="The seed of the fit / held-out split.")
    n_fit: int
    n_held_out: int
    results: list[SimulationResult] = Field(description="The label set first, then its baselines.")


def evaluate_simulation(
    pipeline: Pipeline, sources: dict[str, list[LabelSet]], layer: str, simulator: ImageTextEmbedder
) -> SimulationEvaluation:
    """Simulate every label set of ``sources`` (name → its draws) on ``layer`` of ``pipeline``'s network and probing
    set, with ``simulator`` (see the module docstring); the activations are stage 1's, recorded or reused.

    Raises :class:`DnDError` when a set lacks the layer, labels units beyond its size, or the probing set has fewer
    than 4 readable images.
    """
    for draws in sources.values():
        for labels in draws:
            labels.check_layers([layer])
    activations, probe_indices = load_activations(pipeline.run_until("record", [layer])[layer])
    n_images, n_neurons = activations.shape
    for draws in sources.values():
        draws[0].check_units(layer, n_neurons)
    if n_images < 4:
        raise DnDError(f"the probing set has {n_images} readable images; simulation needs at least 4 (2 held out)")
    probe, config = pipeline.context.probe, pipeline.config
    rows = probe_indices.tolist()
    fit, held_out = split_rows([probe.ids[index] for index in rows], config.seed)
    # The simulator's view of the held-out images [n_held, d] and of every distinct label [n_labels, d].
    images = probe_image_embeddings(config.output_dir, probe, simulator, rows, config.embed.batch_size)[held_out]
    texts = list(dict.fromkeys(row.labels[0] for draws in sources.values() for s in draws for row in s.rows))
    predicted = images @ simulator.embed(texts).T  # [n_held, n_labels]
    column = {text: i for i, text in enumerate(texts)}
    actual = activations[held_out].float()  # [n_held, n_neurons]
    actual_ranks, predicted_ranks = average_ranks(actual), average_ranks(predicted)
    results = []
    for name, draws in sources.items():
        neurons = []
        for draw, labels in enumerate(draws):
            units = sorted(labels.units(layer))
            label_of = labels.units(layer)
            columns = [column[label_of[unit].labels[0]] for unit in units]
            pearson = correlations(actual[:, units], predicted[:, columns])
            spearman = correlations(actual_ranks[:, units], predicted_ranks[:, columns])
            neurons += [
                NeuronSimulation(unit=unit, draw=draw, label=label_of[unit].labels[0], pearson=p, spearman=s)
                for unit, p, s in zip(units, pearson.tolist(), spearman.tolist(), strict=True)
            ]
        results.append(
            SimulationResult(
                source=name,
                draws=len(draws),
                pearson=Summary.of(torch.tensor([neuron.pearson for neuron in neurons])),
                spearman=Summary.of(torch.tensor([neuron.spearman for neuron in neurons])),
                neurons=neurons,
            )
        )
    by_unit = [scores_by_item([(neuron.unit, neuron.pearson) for neuron in result.neurons]) for result in results]
    for result, scores in zip(results[1:], by_unit[1:], strict=True):
        result.first_minus_this = paired_difference(by_unit[0], scores, config.seed)
    return SimulationEvaluation(
        layer=layer,
        simulator=simulator.model,
        seed=config.seed,
        n_fit=len(fit),
        n_held_out=len(held_out),
        results=results,
    )


def write_results(evaluation: SimulationEvaluation, path: Path) -> None:
    """``.csv``: one row per label set, draw and neuron; ``.json``: everything."""
    rows = (
        [
            result.source,
            neuron.draw,
            evaluation.layer,
            evaluation.simulator,
            neuron.unit,
            neuron.label,
            neuron.pearson,
            neuron.spearman,
        ]
        for result in evaluation.results
        for neuron in result.neurons
    )
    write_csv_or_json(path, evaluation, CSV_ROW, CSV_COLUMNS, rows)
