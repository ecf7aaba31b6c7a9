"""A report's comparison with another method's labels (``dnd report --compare FILE``).

The other labels are read with :mod:`dnd.compare.readers` (a CLIP-Dissect, DnD, MILAN or NetDissect file, or another
run's ``score-<key>`` folder) and compared with this run's Label 1 by :func:`dnd.compare.agreement.compare_label_sets`:
the per-neuron cosine similarity of the two labels in a text-embedding space and the layer's summary of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dnd.compare.agreement import SimilarityStats, compare_label_sets
from dnd.compare.readers import LabelSet, read_run_labels
from dnd.errors import DnDError

if TYPE_CHECKING:
    from dnd.backends.embedders import TextEmbedder
    from dnd.report.evidence import LayerEvidence

#: Histogram bins of the similarity summary over −1…1 (as `dnd compare`'s default).
BINS = 10


@dataclass
class Comparison:
    """The other method's Label 1 per unit, its similarity with ours, and the layer's summary."""

    source: str
    method: str
    embedder: str
    labels: dict[int, str]
    similarity: dict[int, float]
    stats: SimilarityStats
    warnings: list[str]


def compare_layer(evidence: LayerEvidence, other: LabelSet, embedder: Callable[[], TextEmbedder]) -> Comparison:
    """Compare ``evidence``'s labels with ``other`` on its layer; raise :class:`DnDError` when this run has no labels
    yet, or when ``other`` lacks the layer or shares no neuron with it (the message says what each side has).

    ``embedder()`` gives the text embedder; it is called only once the labels are aligned, so bad input fails before
    any model loads.
    """
    if "score" not in evidence.folders:
        raise DnDError(
            f"--compare needs this run's labels, but stage 6 (score) has not run for {evidence.layer} with this "
            f"config; run `dnd describe` through every stage first"
        )
    ours = read_run_labels(evidence.folders["score"])
    other.check_layers([evidence.layer])
    (result,) = compare_label_sets([ours, other], (embedder() for _ in range(1)), BINS, [evidence.layer])
    return Comparison(
        source=other.name,
        method=other.method,
        embedder=result.embedder,
        labels={unit: row.labels[0] for unit, row in other.units(evidence.layer).items()},
        similarity={neuron.unit: neuron.similarity for neuron in result.neurons},
        stats=result.stats,
        warnings=other.warnings,
    )
