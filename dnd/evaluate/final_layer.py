"""Final-layer evaluation: a classifier's output unit *k* is class *k*, so its label should mean the class name.

Score: the mean cosine similarity between each unit's first label and its class name in a text-embedding space
(the papers use CLIP ViT-B/16 text and all-mpnet-base-v2; see method.md, section 3). The class name comes from line
*k* of a classes file in one of two readings (:data:`GROUND_TRUTHS`):

- ``first-synonym``: the line's first comma-separated name (``tench`` of ``tench, Tinca tinca``);
- ``full-line``: the whole line (``tench, Tinca tinca``), as the DnD authors' notebook compares against.

A line of the Places365 category list (``/a/apartment_building/outdoor 8``) is its category in either reading,
reduced as CLIP-Dissect's notebook does for its published Places365 numbers (``apartment_building/outdoor``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel

from dnd.backends.embedders import TextEmbedder
from dnd.compare.agreement import SimilarityStats
from dnd.compare.readers import LabelSet
from dnd.errors import DnDError

GroundTruth = Literal["first-synonym", "full-line"]
#: Every reading of a classes-file line, in the order results are reported.
GROUND_TRUTHS: tuple[GroundTruth, ...] = get_args(GroundTruth)
#: ``/<letter>/<category> <index>``, a line of Places365's categories_places365.txt.
_PLACES365_LINE = re.compile(r"/[a-z]/(\S+) \d+")


class UnitMatch(BaseModel):
    unit: int
    label: str
    class_name: str
    similarity: float


class FinalLayerResult(BaseModel):
    """One label set's output layer scored against the class names (in one reading) in one embedding space."""

    source: str
    layer: str
    ground_truth: GroundTruth
    embedder: str
    stats: SimilarityStats
    units: list[UnitMatch]


def read_class_names(path: Path, ground_truth: GroundTruth = "first-synonym") -> list[str]:
    """Class names by index: line *k* is class *k*, read as ``ground_truth`` says (see the module docstring).

    Trailing blank lines are ignored; a blank line elsewhere raises :class:`DnDError` (line *k* must name class *k*).
    """
    if not path.is_file():
        raise DnDError(f"classes file {path} not found (one class per line, e.g. imagenet_labels.txt)")
    if ground_truth not in GROUND_TRUTHS:
        raise DnDError(f"ground truth {ground_truth!r} is not one of: {', '.join(GROUND_TRUTHS)}")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    blank = [i + 1 for i, line in enumerate(lines) if not line or not line.split(",")[0].strip()]
    if blank:
        raise DnDError(f"{path}: line(s) {blank[:5]} have no class name (line k must name class k)")
    return [_class_name(line, ground_truth) for line in lines]


def _class_name(line: str, ground_truth: GroundTruth) -> str:
    places = _PLACES365_LINE.fullmatch(line)
    if places is not None:
        return places.group(1)
    return line if ground_truth == "full-line" else line.split(",")[0].strip()


def evaluate_final_layer(
    labels: LabelSet,
    class_names: dict[GroundTruth, list[str]],
    embedders: Iterable[TextEmbedder],
    bins: int,
    layer: str | None = None,
) -> list[FinalLayerResult]:
    """Score the first label of every unit of ``layer`` (default: the set's only layer) against its class name, in
    each reading of ``class_names`` (ground truth → names by class index) and each embedding space.

    Each embedder embeds the labels and every reading's names in one call. ``embedders`` is iterated only after the
    checks. Raises :class:`DnDError` when the layer is ambiguous or absent, or a unit has no class.
    """
    layer = _output_layer(labels, layer)
    rows = labels.units(layer)
    count = min(len(names) for names in class_names.values())
    beyond = sorted(unit for unit in rows if unit >= count)
    if beyond:
        raise DnDError(
            f"{labels.name}: units {beyond[:5]} of {layer} have no class (the classes file names {count}); "
            f"is {layer} the output layer of a network trained on these classes?"
        )
    units = sorted(rows)
    label_texts = [rows[unit].labels[0] for unit in units]
    class_texts = {truth: [names[unit] for unit in units] for truth, names in class_names.items()}
    results = []
    for embedder in embedders:
        vectors = embedder.embed(label_texts + [text for texts in class_texts.values() for text in texts])
        label_vectors = vectors[: len(units)]  # [n, d], rows L2-normalised
        for index, (truth, texts) in enumerate(class_texts.items(), start=1):
            similarity = (label_vectors * vectors[index * len(units) : (index + 1) * len(units)]).sum(dim=1)  # [n]
            results.append(
                FinalLayerResult(
                    source=labels.source,
                    layer=layer,
                    ground_truth=truth,
                    embedder=embedder.name,
                    stats=SimilarityStats.of(similarity, bins),
                    units=[
                        UnitMatch(unit=unit, label=label, class_name=name, similarity=value)
                        for unit, label, name, value in zip(units, label_texts, texts, similarity.tolist(), strict=True)
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
