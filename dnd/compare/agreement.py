"""Agreement between label sets: per-neuron cosine similarity of two methods' labels for the same neuron.

Label sets are aligned by (layer, unit) and compared on each neuron's first label, in one or more text-embedding
spaces; per layer the result holds the spread and distribution of the similarities and every neuron's value, so the
neurons where the methods disagree most can be listed.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
from collections.abc import Iterable
from pathlib import Path

import torch
from pydantic import BaseModel, Field

from dnd.backends.embedders import TextEmbedder
from dnd.compare.readers import LabelSet
from dnd.errors import DnDError
from dnd.store import atomic_write_text

#: Cosine similarities are binned over [-1, 1] so histograms of different layers and spaces line up.
SIMILARITY_RANGE = (-1.0, 1.0)


class SimilarityStats(BaseModel):
    """Summary of per-neuron similarities: population std; quartiles linearly interpolated (numpy's default)."""

    n: int
    mean: float
    std: float
    min: float
    q1: float
    median: float
    q3: float
    max: float
    histogram: list[int] = Field(description="Counts in equal bins over [-1, 1].")

    @classmethod
    def of(cls, values: torch.Tensor, bins: int) -> SimilarityStats:
        """Statistics of ``values [n]`` (n ≥ 1)."""
        values = values.double()
        q1, median, q3 = torch.quantile(values, torch.tensor([0.25, 0.5, 0.75], dtype=values.dtype)).tolist()
        low, high = SIMILARITY_RANGE
        return cls(
            n=values.numel(),
            mean=values.mean().item(),
            std=values.std(correction=0).item(),
            min=values.min().item(),
            q1=q1,
            median=median,
            q3=q3,
            max=values.max().item(),
            histogram=torch.histc(values.clamp(low, high), bins=bins, min=low, max=high).long().tolist(),
        )


class NeuronAgreement(BaseModel):
    unit: int
    labels: tuple[str, str]
    similarity: float


class LayerAgreement(BaseModel):
    """How two label sets agree on one layer in one embedding space."""

    sources: tuple[str, str]
    embedder: str
    layer: str
    stats: SimilarityStats
    neurons: list[NeuronAgreement] = Field(description="Every neuron in common, by unit.")

    def most_disagreeing(self, count: int) -> list[NeuronAgreement]:
        """The ``count`` neurons with the lowest similarity, lowest first."""
        return sorted(self.neurons, key=lambda neuron: neuron.similarity)[:count]


def compare_label_sets(
    sets: list[LabelSet], embedders: Iterable[TextEmbedder], bins: int, layers: list[str] | None = None
) -> list[LayerAgreement]:
    """Compare every pair of ``sets`` on every layer they share (or on ``layers``) in every embedding space.

    ``embedders`` is iterated only once the sets are aligned, so a generator that loads models loads none when the
    input is wrong. Raises :class:`DnDError` when a requested layer is missing from a set (naming the layers it
    has) or when a pair has no neuron in common.
    """
    if len(sets) < 2:
        raise DnDError("compare needs at least two label sets")
    # 1. Check the requested layers against every set.
    for label_set in sets:
        label_set.check_layers(layers or [])
    # 2. Align every pair by (layer, unit): (unit, first label of one set, first label of the other).
    aligned: list[tuple[tuple[str, str], str, list[tuple[int, str, str]]]] = []
    for first, second in itertools.combinations(sets, 2):
        found = False
        for layer in layers or [layer for layer in first.layers() if layer in second.layers()]:
            ours, theirs = first.units(layer), second.units(layer)
            common = [(u, ours[u].labels[0], theirs[u].labels[0]) for u in sorted(ours.keys() & theirs.keys())]
            if common:
                aligned.append(((first.name, second.name), layer, common))
                found = True
        if not found:
            raise DnDError(_nothing_in_common(first, second, layers))
    # 3. Embed each distinct label once per space, then score every aligned neuron.
    texts = sorted({label for _, _, common in aligned for _, *labels in common for label in labels})
    index = {text: i for i, text in enumerate(texts)}
    results = []
    for embedder in embedders:
        vectors = embedder.embed(texts)  # [n_texts, d], rows L2-normalised
        for sources, layer, common in aligned:
            a = vectors[[index[x] for _, x, _ in common]]
            b = vectors[[index[y] for _, _, y in common]]
            similarity = (a * b).sum(dim=1)  # [n_common]
            neurons = [
                NeuronAgreement(unit=unit, labels=(x, y), similarity=value)
                for (unit, x, y), value in zip(common, similarity.tolist(), strict=True)
            ]
            results.append(
                LayerAgreement(
                    sources=sources,
                    embedder=embedder.name,
                    layer=layer,
                    stats=SimilarityStats.of(similarity, bins),
                    neurons=neurons,
                )
            )
    return results


def _nothing_in_common(first: LabelSet, second: LabelSet, layers: list[str] | None) -> str:
    def extent(label_set: LabelSet) -> str:
        parts = []
        for layer in label_set.layers():
            units = sorted(label_set.units(layer))
            parts.append(f"{layer} (units {units[0]}–{units[-1]}, {len(units)} labelled)")
        return ", ".join(parts) or "no readable row"

    scope = f" in layer {', '.join(layers)}" if layers else ""
    return (
        f"{first.source} and {second.source} have no neuron in common{scope}. {first.name} has {extent(first)}; "
        f"{second.name} has {extent(second)}. Layers are matched by name: give a file without a layer column its "
        f"layer as PATH:LAYER, and read files split by layer together as one set with a quoted glob."
    )


SUMMARY_COLUMNS = ("source_a", "source_b", "embedder", "layer", "n", "mean", "std", "min", "q1", "median", "q3", "max")


def write_results(results: list[LayerAgreement], path: Path) -> None:
    """Write ``results``: ``.csv`` one summary row per layer and space; ``.json`` everything, neurons included."""
    if path.suffix == ".json":
        text = json.dumps([result.model_dump(mode="json") for result in results], indent=1)
    elif path.suffix == ".csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(SUMMARY_COLUMNS)
        for result in results:
            stats = result.stats.model_dump()
            writer.writerow([*result.sources, result.embedder, result.layer, *(stats[c] for c in SUMMARY_COLUMNS[4:])])
        text = buffer.getvalue()
    else:
        raise DnDError(f"--out {path}: write results to a .csv or a .json file")
    atomic_write_text(path, text)
