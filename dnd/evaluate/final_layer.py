"""Final-layer evaluation: a classifier's output unit *k* is class *k*, so its label should mean the class name.

Score: the mean cosine similarity between each unit's first label and its class name in a text-embedding space
(the papers use CLIP ViT-B/16 text and all-mpnet-base-v2; see method.md, section 3).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel

from dnd.backends.embedders import TextEmbedder
from dnd.compare.agreement import SimilarityStats
from dnd.compare.readers import LabelSet
from dnd.errors import DnDError


class UnitMatch(BaseModel):
    unit: int
    label: str
    class_name: str
    similarity: float


class FinalLayerResult(BaseModel):
    """One label set's output layer scored against the class names in one embedding space."""

    source: str
    layer: str
    embedder: str
    stats: SimilarityStats
    units: list[UnitMatch]


def read_class_names(path: Path) -> list[str]:
    """Class names by index: line *k* is class *k*; its first comma-separated synonym is the name
    (``great white shark, white shark, ...`` → ``great white shark``)."""
    if not path.is_file():
        raise DnDError(f"classes file {path} not found (one class per line, e.g. imagenet_labels.txt)")
    names = [line.split(",")[0].strip() for line in path.read_text(encoding="utf-8").splitlines()]
    while names and not names[-1]:
        names.pop()
    blank = [i + 1 for i, name in enumerate(names) if not name]
    if blank:
        raise DnDError(f"{path}: line(s) {blank[:5]} have no class name (line k must name class k)")
    return names


def evaluate_final_layer(
    labels: LabelSet, class_names: list[str], embedders: Iterable[TextEmbedder], bins: int, layer: str | None = None
) -> list[FinalLayerResult]:
    """Score the first label of every unit of ``layer`` (default: the set's only layer) against its class name.

    ``embedders`` is iterated only after the checks. Raises :class:`DnDError` when the layer is ambiguous or
    absent, or a unit has no class.
    """
    layer = _output_layer(labels, layer)
    rows = labels.units(layer)
    beyond = sorted(unit for unit in rows if unit >= len(class_names))
    if beyond:
        raise DnDError(
            f"{labels.name}: units {beyond[:5]} of {layer} have no class (the classes file names {len(class_names)}); "
            f"is {layer} the output layer of a network trained on these classes?"
        )
    units = sorted(rows)
    label_texts = [rows[unit].labels[0] for unit in units]
    class_texts = [class_names[unit] for unit in units]
    results = []
    for embedder in embedders:
        vectors = embedder.embed(label_texts + class_texts)  # [2 n, d], rows L2-normalised
        similarity = (vectors[: len(units)] * vectors[len(units) :]).sum(dim=1)  # [n]
        results.append(
            FinalLayerResult(
                source=labels.source,
                layer=layer,
                embedder=embedder.name,
                stats=SimilarityStats.of(similarity, bins),
                units=[
                    UnitMatch(unit=unit, label=rows[unit].labels[0], class_name=class_names[unit], similarity=value)
                    for unit, value in zip(units, similarity.tolist(), strict=True)
                ],
            )
        )
    return results


def _output_layer(labels: LabelSet, layer: str | None) -> str:
    if layer is not None:
        labels.check_layers([layer])
        return layer
    layers = labels.layers()
    if len(layers) != 1:
        raise DnDError(f"{labels.source} has layers {', '.join(layers) or '(none)'}: choose the output layer (--layer)")
    return layers[0]
