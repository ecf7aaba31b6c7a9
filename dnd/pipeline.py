"""The ordered stages of Describe-and-Dissect: which are stale, and running them. It never touches a model itself.

A stage module exposes ``SPEC`` (a :class:`StageSpec`). The pipeline computes each stage's cache key from the spec
(name, version, the config sections it reads, the text of its prompt files, extra inputs such as the probing set's
fingerprint, and the keys of the stages it needs), skips stages whose output is already in the store, and runs the
rest in order.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from dnd import __version__
from dnd.artifacts import NeuronResult, PerNeuronArtifact, TopImages
from dnd.backends import Backends
from dnd.config import RunConfig, key_fields
from dnd.data import ProbeSet, open_probe
from dnd.errors import DnDError
from dnd.store import (
    ARTIFACT_FILE,
    MANIFEST_FILE,
    ItemCache,
    StageStore,
    Status,
    atomic_write_text,
    canonical_json,
    content_key,
    read_model,
    write_model,
)

#: Every stage of the method, in order; those without a module yet are reported as not available.
METHOD_STAGES = ("record", "crop", "caption", "summarize", "synthesize", "score")


@dataclass(frozen=True)
class StageSpec:
    """What a stage is and what its output depends on."""

    name: str
    version: int
    needs: tuple[str, ...]
    config_sections: tuple[str, ...]
    run: Callable[[StageContext, list[StageJob]], None]
    artifact: type[BaseModel]
    prompts: tuple[str, ...] = ()
    extra_inputs: Callable[[StageContext], dict[str, Any]] | None = None
    per_neuron: bool = False  # its artifact is a PerNeuronArtifact, extended neuron by neuron
    #: Refreshes files beside the run (e.g. CSV exports) from this stage's output, fresh or cached, whenever a run
    #: ends at this stage, so they always match the config that ran last.
    publish: Callable[[StageContext, str, BaseModel], None] | None = None


@dataclass
class StageJob:
    """One stage to compute for one layer: where its inputs are and under which key its output goes."""

    layer: str
    key: str
    key_inputs: dict[str, Any]
    upstream: dict[str, Path] = field(default_factory=dict)
    neurons: list[int] | None = None  # per-neuron stages: the neurons still to compute
    existing: PerNeuronArtifact | None = None  # per-neuron stages: what an earlier run already stored


class StageContext:
    """What a running stage may use: the config, the backends, the store and the probing set."""

    def __init__(self, config: RunConfig, backends: Backends, store: StageStore, prompts_dir: Path):
        self.config = config
        self.backends = backends
        self.store = store
        self.prompts_dir = prompts_dir

    @cached_property
    def probe(self) -> ProbeSet:
        return open_probe(self.config.probe)

    def prompt_text(self, name: str) -> str:
        path = self.prompts_dir / name
        if not path.is_file():
            raise DnDError(f"prompt file {path} is missing (prompts are read from {self.prompts_dir})")
        return path.read_text()

    def cache(self, namespace: str) -> ItemCache:
        """Per-item results (captions per image, LLM answers per request, ...) shared by all runs."""
        return ItemCache(self.config.output_dir / "cache", namespace)

    def write_per_neuron(
        self, job: StageJob, artifact: PerNeuronArtifact, seconds: float, counts: dict[str, int]
    ) -> None:
        """Store ``artifact`` merged with the job's existing entries (the new entries win), then its manifest."""
        if job.existing is not None:
            fresh = artifact.done()
            kept = [entry for entry in job.existing.neurons if entry.neuron not in fresh]
            artifact.neurons = sorted([*kept, *artifact.neurons], key=lambda entry: entry.neuron)
        stage = job.key_inputs["stage"]
        with self.store.writing(job.layer, stage, job.key) as out:
            write_model(out / ARTIFACT_FILE, artifact)
            self.write_manifest(out, job, seconds, counts)

    def write_manifest(self, out_dir: Path, job: StageJob, seconds: float, counts: dict[str, int]) -> None:
        """Record how a stage output was made: its key inputs, versions, time and backend-call counts."""
        manifest = {
            "key": job.key,
            "key_inputs": job.key_inputs,
            "dnd_version": __version__,
            "python": platform.python_version(),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seconds": round(seconds, 3),
            "counts": counts,
        }
        atomic_write_text(out_dir / MANIFEST_FILE, canonical_json(manifest))


EntryT = TypeVar("EntryT", bound=NeuronResult)


def split_upstream(
    job: StageJob,
    stage: str,
    artifact_type: type[PerNeuronArtifact],
    content: Callable[[Any], object],
    missing: str,
) -> tuple[dict[int, Any], dict[int, str]]:
    """The job's neurons in the output of upstream ``stage``: ``(usable entry, reason the neuron stops)`` by neuron.

    A neuron that failed there is carried on with that reason behind the stage's name ("caption stage failed: ..."),
    so a failure travels to the last stage with its cause; one whose ``content(entry)`` is empty stops with ``missing``.
    """
    entries = {entry.neuron: entry for entry in read_model(job.upstream[stage] / ARTIFACT_FILE, artifact_type).neurons}
    usable: dict[int, Any] = {}
    failed: dict[int, str] = {}
    for neuron in sorted(job.neurons or []):
        entry = entries.get(neuron)
        if entry is None:
            failed[neuron] = f"{stage} stage has no entry for this neuron"
        elif entry.failed is not None:
            failed[neuron] = f"{stage} stage failed: {entry.failed}"
        elif not content(entry):
            failed[neuron] = missing
        else:
            usable[neuron] = entry
    return usable, failed


def available_stages() -> list[StageSpec]:
    """The stages implemented so far, in method order."""
    from dnd.stages import caption, crop, record, score, summarize, synthesize

    return [record.SPEC, crop.SPEC, caption.SPEC, summarize.SPEC, synthesize.SPEC, score.SPEC]


class Pipeline:
    """Runs the stages of one config for one or more layers, reusing everything already in the store."""

    def __init__(self, config: RunConfig, backends: Backends | None = None, prompts_dir: Path | None = None):
        self.config = config
        self.backends = backends or Backends(config)
        self.store = StageStore(config.output_dir / config.name)
        self.context = StageContext(config, self.backends, self.store, prompts_dir or config.prompts_dir)
        self.stages = {spec.name: spec for spec in available_stages()}

    # --- keys -------------------------------------------------------------------------------------------------

    def key_inputs(self, stage: str, layer: str) -> dict[str, Any]:
        """Exactly what the output of ``stage`` for ``layer`` depends on (the payload its key hashes)."""
        spec = self._spec(stage)
        inputs: dict[str, Any] = {
            "stage": spec.name,
            "version": spec.version,
            "layer": layer,
            "config": {section: key_fields(getattr(self.config, section)) for section in spec.config_sections},
            "prompts": {name: self.context.prompt_text(name) for name in spec.prompts},
            "upstream": {name: self.key(name, layer) for name in spec.needs},
        }
        if spec.extra_inputs is not None:
            inputs["extra"] = spec.extra_inputs(self.context)
        return inputs

    def key(self, stage: str, layer: str) -> str:
        return content_key(self.key_inputs(stage, layer))

    # --- status and running --------------------------------------------------------------------------------

    def status(self, layer: str) -> list[tuple[str, Status | str, str]]:
        """``(stage, fresh | stale | missing | not available, key)`` for every stage of the method."""
        rows: list[tuple[str, Status | str, str]] = []
        for name in METHOD_STAGES:
            if name not in self.stages:
                rows.append((name, "not available", ""))
                continue
            key = self.key(name, layer)
            rows.append((name, self.store.status(layer, name, key), key))
        return rows

    def describe(self, layers: list[str], neurons: list[int] | None = None, force: bool = False) -> dict[str, Path]:
        """Run every available stage (or up to ``config.stop_after``); return the last one's folder per layer."""
        last = self.config.stop_after or list(self.stages)[-1]
        self._spec(last)
        order = list(self.stages)
        forced = set(order[: order.index(last) + 1]) if force else set()
        return self.run_until(last, layers, neurons, force_stages=forced)

    def run_until(
        self,
        stage: str,
        layers: list[str],
        neurons: list[int] | None = None,
        force_stages: set[str] | None = None,
    ) -> dict[str, Path]:
        """Run ``stage`` and every stage before it that is not fresh; return ``stage``'s folder per layer."""
        self._spec(stage)
        force_stages = force_stages or set()
        order = list(self.stages)
        for name in order[: order.index(stage) + 1]:
            spec = self.stages[name]
            jobs = []
            for layer in layers:
                key = self.key(name, layer)
                forced = name in force_stages
                if forced:
                    self.store.discard_partial(layer, name, key)
                complete = self.store.is_complete(layer, name, key) and not forced
                upstream = {n: self.store.stage_dir(layer, n, self.key(n, layer)) for n in spec.needs}
                job = StageJob(layer, key, self.key_inputs(name, layer), upstream)
                if spec.per_neuron:
                    job.neurons = self._requested_neurons(layer, neurons)
                    if complete:
                        job.existing = self.store.load(layer, name, key, spec.artifact)
                        job.neurons = [n for n in job.neurons if n not in job.existing.done()]
                    if job.neurons:
                        jobs.append(job)
                elif not complete:
                    jobs.append(job)
            if jobs:
                spec.run(self.context, jobs)
        folders = {layer: self.store.stage_dir(layer, stage, self.key(stage, layer)) for layer in layers}
        publish = self.stages[stage].publish
        if publish is not None:
            for layer, folder in folders.items():
                publish(self.context, layer, read_model(folder / ARTIFACT_FILE, self.stages[stage].artifact))
        return folders

    def _requested_neurons(self, layer: str, neurons: list[int] | None) -> list[int]:
        """``neurons`` checked against the layer's size (known once it is recorded); None means all of them."""
        count = self.store.load(layer, "record", self.key("record", layer), TopImages).n_neurons
        if neurons is None:
            return list(range(count))
        out_of_range = [n for n in neurons if n >= count]
        if out_of_range:
            raise DnDError(
                f"--neurons: {out_of_range[:5]} out of range, layer {layer} has {count} neurons (0-{count - 1})"
            )
        return neurons

    def _spec(self, stage: str) -> StageSpec:
        if stage in self.stages:
            return self.stages[stage]
        if stage in METHOD_STAGES:
            raise DnDError(f"stage {stage!r} is not available yet; available: {', '.join(self.stages)}")
        raise DnDError(f"unknown stage {stage!r}; the method's stages are: {', '.join(METHOD_STAGES)}")
