"""The evidence a report shows for one layer: the artifacts of every finished stage under the config's current keys.

Only stages that are fresh for the config are read (a stale output made under other settings or prompts is not this
run's evidence); a run that stopped early (``stop_after``) has fewer of them and its neurons show what they reached.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dnd.artifacts import (
    Captions,
    Concepts,
    Exemplars,
    Generations,
    Labels,
    NeuronResult,
    PerNeuronArtifact,
    TopImages,
)
from dnd.errors import DnDError
from dnd.pipeline import Pipeline

#: The per-neuron stages, in method order, with their artifact types.
PER_NEURON_STAGES: dict[str, type[PerNeuronArtifact]] = {
    "crop": Exemplars,
    "caption": Captions,
    "summarize": Concepts,
    "synthesize": Generations,
    "score": Labels,
}


@dataclass
class LayerEvidence:
    """One layer's finished stage outputs; ``entries[stage][neuron]`` is a neuron's entry in a per-neuron stage."""

    run: str
    layer: str
    top: TopImages
    folders: dict[str, Path]
    artifacts: dict[str, PerNeuronArtifact] = field(default_factory=dict)
    entries: dict[str, dict[int, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, pipeline: Pipeline, layer: str) -> LayerEvidence:
        """Read every fresh stage of ``layer``; raise :class:`DnDError` when not even stage 1 has run."""
        store = pipeline.store
        folders = {}
        for stage in ("record", *PER_NEURON_STAGES):
            if stage in pipeline.stages:
                key = pipeline.key(stage, layer)
                if store.is_complete(layer, stage, key):
                    folders[stage] = store.stage_dir(layer, stage, key)
        if "record" not in folders:
            raise DnDError(
                f"nothing to report for {pipeline.config.name} / {layer}: stage 1 (record) has not run with this "
                f"config; run `dnd describe --config <config> --layer {layer}` first"
            )
        evidence = cls(
            run=pipeline.config.name,
            layer=layer,
            top=store.load(layer, "record", pipeline.key("record", layer), TopImages),
            folders=folders,
        )
        for stage, artifact_type in PER_NEURON_STAGES.items():
            if stage in folders:
                artifact = store.load(layer, stage, pipeline.key(stage, layer), artifact_type)
                evidence.artifacts[stage] = artifact
                evidence.entries[stage] = {entry.neuron: entry for entry in artifact.neurons}
        return evidence

    def neurons(self, requested: list[int] | None = None) -> list[int]:
        """The neurons to show: ``requested``, else every neuron some per-neuron stage has an entry for (every neuron
        of the layer when only stage 1 has run). Raises :class:`DnDError` for neurons the layer does not have."""
        if requested is not None:
            outside = [n for n in requested if n >= self.top.n_neurons]
            if outside:
                raise DnDError(
                    f"--neurons: {outside[:5]} out of range, layer {self.layer} has {self.top.n_neurons} neurons "
                    f"(0-{self.top.n_neurons - 1})"
                )
            return sorted(requested)
        described = {neuron for entries in self.entries.values() for neuron in entries}
        return sorted(described) if described else list(range(self.top.n_neurons))

    def entry(self, stage: str, neuron: int) -> Any | None:
        """``neuron``'s entry in ``stage`` (None when the stage has not run for it)."""
        return self.entries.get(stage, {}).get(neuron)

    def outcome(self, neuron: int) -> tuple[str, str | None]:
        """``(status, reason)``: ``ok`` (labelled), ``failed`` (with the reason of the last stage that has it) or
        ``incomplete`` (with the stages it still lacks)."""
        reached: NeuronResult | None = None
        last = "record"
        for stage in PER_NEURON_STAGES:
            entry = self.entry(stage, neuron)
            if entry is None:
                break
            reached, last = entry, stage
        if reached is not None and reached.failed is not None:
            return "failed", f"{last} stage: {reached.failed}"
        if last == "score":
            return ("ok", None) if reached.labels else ("failed", "score stage kept no label")
        order = list(PER_NEURON_STAGES)
        remaining = order[order.index(last) + 1 :] if last in order else order
        return "incomplete", f"described up to stage {last}; not run yet: {', '.join(remaining)}"
