"""Baseline label sets for the hidden-layer evaluations (simulation, ablation): what any real signal must beat.

Built from the label set under test and the same run, so a report always carries them beside the labels:

- **shuffled**: the labels permuted across the layer's neurons, several seeded draws (the null: the same words, no
  link to the neuron; a score near zero, or whatever a layer-wide theme is worth);
- **constant**: every neuron labelled "images" (says nothing about any neuron);
- **most frequent caption**: each neuron's most frequent exemplar caption from stage 3 (what captioning alone says,
  no LLM, no scoring).
"""

from __future__ import annotations

from collections import Counter

import torch

from dnd.artifacts import Captions
from dnd.compare.readers import LabelRow, LabelSet
from dnd.layout import ARTIFACT_FILE
from dnd.pipeline import Pipeline
from dnd.store import read_model

#: The constant label.
CONSTANT_LABEL = "images"
SHUFFLED = "shuffled"
CONSTANT = f"constant '{CONSTANT_LABEL}'"
MOST_FREQUENT_CAPTION = "most frequent caption"


def quality_sources(
    labels: LabelSet, layer: str, captions: Captions | None, seed: int, shuffles: int
) -> dict[str, list[LabelSet]]:
    """``labels`` (under its name) and the baselines of the module docstring, each a list of label sets of ``layer``
    (``shuffles`` seeded draws for the shuffled one, one set for the others). Only the neurons ``labels`` labels are
    labelled; the caption baseline is left out when ``captions`` is None or has no caption for any of them."""
    rows = labels.units(layer)
    units = sorted(rows)
    first = [rows[unit].labels[0] for unit in units]
    sources = {labels.name: [_label_set(labels.name, layer, dict(zip(units, first, strict=True)))]}
    sources[SHUFFLED] = [
        _label_set(f"{SHUFFLED} {draw}", layer, dict(zip(units, _permuted(first, seed + draw), strict=True)))
        for draw in range(shuffles)
    ]
    sources[CONSTANT] = [_label_set(CONSTANT, layer, dict.fromkeys(units, CONSTANT_LABEL))]
    frequent = most_frequent_captions(captions, units) if captions is not None else {}
    if frequent:
        sources[MOST_FREQUENT_CAPTION] = [_label_set(MOST_FREQUENT_CAPTION, layer, frequent)]
    return sources


def run_captions(pipeline: Pipeline, layer: str, units: list[int]) -> Captions:
    """Stage 3's captions of ``units`` of ``layer`` in ``pipeline``'s run: read from the store, or made there first
    (with the stages before it) where they are missing."""
    folder = pipeline.run_until("caption", [layer], neurons=units)[layer]
    return read_model(folder / ARTIFACT_FILE, Captions)


def most_frequent_captions(captions: Captions, units: list[int]) -> dict[int, str]:
    """``unit → its most frequent exemplar caption`` for those of ``units`` with captions; ties go to the caption
    that comes first (the better exemplar)."""
    wanted = set(units)
    return {
        entry.neuron: Counter(caption.text for caption in entry.captions).most_common(1)[0][0]
        for entry in captions.neurons
        if entry.neuron in wanted and entry.captions
    }


def _permuted(texts: list[str], seed: int) -> list[str]:
    generator = torch.Generator().manual_seed(seed)
    return [texts[i] for i in torch.randperm(len(texts), generator=generator).tolist()]


def _label_set(name: str, layer: str, labels: dict[int, str]) -> LabelSet:
    rows = [LabelRow(layer=layer, unit=unit, labels=[text]) for unit, text in sorted(labels.items())]
    return LabelSet(source=name, method="baseline", rows=rows)
