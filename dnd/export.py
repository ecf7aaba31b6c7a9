"""CSV exports of a layer's labels in the two published formats, so other tools (and ``dnd compare``) read them.

- ``descriptions.csv``, CLIP-Dissect's format ``layer,unit,description,similarity``: the description is Label 1 and
  the similarity its ``ConceptScore.score`` under the run's scoring function (higher is better).
- ``final_results.csv``, the DnD authors' format ``Neuron ID,Label 1,Label 2,Label 3``: one column per label, at least
  three, blank cells where a neuron has fewer labels.

Every neuron of the artifact gets a row, in neuron order; a failed neuron's label and similarity cells are empty (its
reason is in ``artifact.json``). Cells are written with the ``csv`` module (quoted where needed), lines end in ``\\n``.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from dnd.artifacts import Labels
from dnd.layout import export_paths
from dnd.store import atomic_write_text

#: Label columns of the authors' format; more appear when a run keeps more labels per neuron.
AUTHORS_LABEL_COLUMNS = 3


def descriptions_csv(labels: Labels) -> str:
    """``layer,unit,description,similarity``: Label 1 and its score per neuron (empty cells for a failed neuron)."""
    rows: list[list[object]] = [["layer", "unit", "description", "similarity"]]
    for entry in labels.neurons:
        if entry.labels:
            rows.append([labels.layer, entry.neuron, entry.labels[0], entry.scores[0].score])
        else:
            rows.append([labels.layer, entry.neuron, "", ""])
    return _csv(rows)


def final_results_csv(labels: Labels) -> str:
    """``Neuron ID,Label 1,Label 2,Label 3`` (more label columns if a neuron has more labels); blanks pad."""
    width = max([AUTHORS_LABEL_COLUMNS, *(len(entry.labels) for entry in labels.neurons)])
    rows: list[list[object]] = [["Neuron ID", *(f"Label {i}" for i in range(1, width + 1))]]
    for entry in labels.neurons:
        rows.append([entry.neuron, *entry.labels, *[""] * (width - len(entry.labels))])
    return _csv(rows)


def write_exports(labels: Labels, folder: Path) -> list[Path]:
    """Write both exports of ``labels`` into ``folder`` atomically; return their paths."""
    paths = list(export_paths(folder))
    for path, text in zip(paths, (descriptions_csv(labels), final_results_csv(labels)), strict=True):
        atomic_write_text(path, text)
    return paths


def _csv(rows: list[list[object]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()
