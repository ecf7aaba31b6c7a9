"""The stage kernel: what a stage declares (:class:`StageSpec`), what it may use while it runs (:class:`StageContext`)
and how it runs (:func:`run_stage`).

A stage is one of two kinds:

- a **layer stage** (stage 1, record) gives ``run(ctx, jobs)`` and writes each job's output itself;
- a **per-neuron stage** (stages 2–6) gives ``compute(ctx, work)``: the entries of the neurons in ``work`` and its
  backend-call counts. The kernel does the rest, the same way for every such stage (:func:`run_neurons`): time it,
  read the upstream artifacts, carry neurons that failed upstream forward with their reason, add them to what
  ``compute`` returned, merge the result with the neurons an earlier run stored under the same key (the new entries
  win, the others are kept as they are) and write the stage folder with its manifest.

The pipeline (:mod:`dnd.pipeline`) decides which stages and neurons are due and hands them over as
:class:`StageJob` s; this module never decides what is stale.

In a job of several processes (:mod:`dnd.distributed`) every process runs the same stage: ``compute`` spreads its
unique work items over them with ``ctx.ranks`` (each process then returns the whole artifact, which is the same in
all), the backend-call counts of all processes are added up, rank 0 alone writes the stage folder, and every stage
ends at a barrier. A stage with ``neuron_batch`` is computed in batches of neurons, each kept in the stage's progress
folder as it finishes, so a killed run redoes at most one batch per process, and the batches are what is spread.
"""

from __future__ import annotations

import functools
import json
import platform
import time
import typing
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from dnd import __version__, layout
from dnd.artifacts import NeuronResult, PerNeuronArtifact
from dnd.backends.container import Backends
from dnd.batching import resumable_batches
from dnd.config import RunConfig
from dnd.data import ProbeSet, open_probe
from dnd.distributed import Ranks
from dnd.layout import ARTIFACT_FILE, MANIFEST_FILE
from dnd.prompts import read_prompt
from dnd.store import (
    ItemCache,
    StageStore,
    atomic_write_text,
    canonical_json,
    content_key,
    read_model,
    write_model,
)

ArtifactT = TypeVar("ArtifactT", bound=BaseModel)


@dataclass(frozen=True)
class Requirement:
    """What a per-neuron stage needs of a neuron's entry in an upstream stage's artifact.

    An entry that failed there always stops the neuron; one whose ``content(entry)`` is empty stops it with
    ``missing`` (no ``content``: any entry that did not fail will do).
    """

    content: Callable[[Any], object] | None = None
    missing: str = ""


@dataclass(frozen=True)
class StageSpec:
    """What a stage is and what its output depends on: name, version, the stages it needs, the config it reads.

    Exactly one of ``run`` (a layer stage) and ``compute`` (a per-neuron stage, whose ``artifact`` is a
    :class:`~dnd.artifacts.PerNeuronArtifact`) is given. ``config_sections`` name config sections (``"crop"``) or
    single fields (``"embed.clip_model"``); their values, the text of the ``prompts`` files, ``extra_inputs`` and the
    keys of the ``needs`` make the stage's cache key. ``requires`` says, per needed stage and in order of precedence,
    what a neuron's entry there must hold (default: not failed).
    """

    name: str
    version: int
    needs: tuple[str, ...]
    config_sections: tuple[str, ...]
    artifact: type[BaseModel]
    run: Callable[[StageContext, list[StageJob]], None] | None = None
    compute: Callable[[StageContext, NeuronWork], tuple[PerNeuronArtifact, dict[str, int]]] | None = None
    requires: Mapping[str, Requirement] = field(default_factory=dict)
    prompts: tuple[str, ...] = ()
    extra_inputs: Callable[[StageContext], dict[str, Any]] | None = None
    #: Refreshes files beside the run (e.g. CSV exports) from this stage's output, fresh or cached, whenever a run
    #: ends at this stage, so they always match the config that ran last.
    publish: Callable[[StageContext, str, BaseModel], None] | None = None
    #: Per-neuron stages whose unit of work is a batch of neurons: the batch size (an execution detail) from the
    #: config. Each batch's entries are kept as soon as it finishes, and batches are spread over processes.
    neuron_batch: Callable[[RunConfig], int] | None = None

    def __post_init__(self) -> None:
        if (self.run is None) == (self.compute is None):
            raise TypeError(f"stage {self.name!r}: give exactly one of run (a layer stage) and compute (per neuron)")
        if self.compute is not None and not issubclass(self.artifact, PerNeuronArtifact):
            raise TypeError(f"stage {self.name!r}: a per-neuron stage's artifact must be a PerNeuronArtifact")
        unknown = set(self.requires) - set(self.needs)
        if unknown:
            raise TypeError(f"stage {self.name!r}: requires {sorted(unknown)}, which it does not need")

    @property
    def per_neuron(self) -> bool:
        """Whether the stage's artifact is extended (or partly replaced) neuron by neuron."""
        return self.compute is not None


@dataclass(frozen=True)
class StageOutput:
    """A finished stage's folder and the type of the artifact in it."""

    folder: Path
    artifact_type: type[BaseModel]

    def read(self) -> BaseModel:
        return read_model(self.folder / ARTIFACT_FILE, self.artifact_type)


@dataclass
class StageJob:
    """One stage to compute for one layer: where its inputs are and under which key its output goes."""

    layer: str
    key: str
    key_inputs: dict[str, Any]
    upstream: dict[str, StageOutput] = field(default_factory=dict)
    neurons: list[int] | None = None  # per-neuron stages: the neurons to compute


@dataclass
class NeuronWork:
    """What a per-neuron stage computes for one layer: ``neurons`` (sorted), each usable in every upstream stage.

    ``upstream[stage]`` is a needed stage's whole artifact and ``entries[stage][neuron]`` a neuron's usable entry in it.
    ``progress`` is where the stage may keep resumable work in progress (a folder of this stage and key, created by
    whoever writes to it, removed once the stage's folder is written).
    """

    layer: str
    neurons: list[int]
    upstream: dict[str, BaseModel]
    entries: dict[str, dict[int, Any]]
    progress: Path | None = None

    def subset(self, neurons: list[int]) -> NeuronWork:
        """The same work for ``neurons`` only (each one of ``self.neurons``)."""
        entries = {stage: {n: by_neuron[n] for n in neurons} for stage, by_neuron in self.entries.items()}
        return NeuronWork(self.layer, neurons, self.upstream, entries, self.progress)

    def artifact(self, stage: str, artifact_type: type[ArtifactT]) -> ArtifactT:
        """The artifact of needed stage ``stage``, checked to be an ``artifact_type``."""
        artifact = self.upstream[stage]
        if not isinstance(artifact, artifact_type):
            raise TypeError(f"stage {stage!r} gave a {type(artifact).__name__}, not a {artifact_type.__name__}")
        return artifact


class StageContext:
    """What a running stage may use: the config, the backends, the store, the probing set and the job's processes
    (``ranks``: one process unless the pipeline runs under a launcher)."""

    def __init__(
        self, config: RunConfig, backends: Backends, store: StageStore, prompts_dir: Path, ranks: Ranks | None = None
    ):
        self.config = config
        self.backends = backends
        self.store = store
        self.prompts_dir = prompts_dir
        self.ranks = ranks or Ranks()

    @cached_property
    def probe(self) -> ProbeSet:
        return open_probe(self.config.probe)

    def prompt_text(self, name: str) -> str:
        return read_prompt(self.prompts_dir, name)

    def cache(self, namespace: str) -> ItemCache:
        """Per-item results (captions per image, LLM answers per request, ...) shared by all runs."""
        return ItemCache(layout.cache_dir(self.config.output_dir), namespace)

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


def run_stage(spec: StageSpec, ctx: StageContext, jobs: list[StageJob]) -> None:
    """Compute ``jobs`` (one per layer) of ``spec``: a layer stage runs them all at once (stage 1 records every layer
    in one pass), a per-neuron stage runs each layer's neurons through :func:`run_neurons`. Every process of a job
    calls this with the same jobs; it returns once the stage's folders are written."""
    if spec.run is not None:
        spec.run(ctx, jobs)
    else:
        for job in jobs:
            run_neurons(spec, ctx, job)
    ctx.ranks.barrier()


def run_neurons(spec: StageSpec, ctx: StageContext, job: StageJob) -> None:
    """Compute ``job.neurons`` of a per-neuron stage for ``job.layer`` and store them beside the neurons the stage's
    folder already holds (their entries are kept as they are; those of ``job.neurons`` are replaced).

    Any subset of a layer's neurons can be computed this way, in any order: the unit of work that can be split.
    """
    assert spec.compute is not None
    started = time.perf_counter()
    # 1. The neurons' entries upstream; those that failed or lack what this stage needs stop here with the reason.
    work, failed = read_upstream(spec, job)
    work.progress = layout.partial_dir(ctx.store.root, job.layer, spec.name, job.key)
    # 2. The stage computes the usable ones (in batches of neurons kept as they finish, if it works that way).
    if spec.neuron_batch is not None and work.neurons:
        artifact, counts = _compute_in_neuron_batches(spec, ctx, work, spec.neuron_batch(ctx.config))
    else:
        artifact, counts = spec.compute(ctx, work)
    computed = artifact.done()
    if computed != set(work.neurons):
        raise RuntimeError(
            f"stage {spec.name!r} returned entries for neurons {sorted(computed)}, expected {work.neurons}"
        )
    # 3. The failed ones join them with their reason; then the neurons of earlier runs that were not recomputed.
    entry_type = neuron_entry_type(spec.artifact)
    artifact.neurons = sorted(
        [*artifact.neurons, *(entry_type(neuron=n, failed=reason) for n, reason in failed.items())],
        key=lambda entry: entry.neuron,
    )
    # Every process has finished (and read its progress files) once the counts are added up.
    counts = {**ctx.ranks.sum_counts(counts), "failed_neurons": sum(e.failed is not None for e in artifact.neurons)}
    if not ctx.ranks.is_main:
        return
    if ctx.store.is_complete(job.layer, spec.name, job.key):  # read now, so that each piece of split work adds up
        artifact = artifact.merged_over(ctx.store.load(job.layer, spec.name, job.key, spec.artifact))
    # 4. One stage folder, written atomically.
    with ctx.store.writing(job.layer, spec.name, job.key) as out:
        write_model(out / ARTIFACT_FILE, artifact)
        ctx.write_manifest(out, job, time.perf_counter() - started, counts)


def _compute_in_neuron_batches(
    spec: StageSpec, ctx: StageContext, work: NeuronWork, size: int
) -> tuple[PerNeuronArtifact, dict[str, int]]:
    """``spec.compute`` on ``work`` a batch of ``size`` neurons at a time, each batch's entries written to
    ``work.progress`` as it finishes; batches found there (a killed run's) are read instead of computed, and the
    batches still to compute are spread over the job's processes (:func:`dnd.batching.resumable_batches`). Returns
    the artifact of all of ``work.neurons`` and the counts of the batches this process computed (``neuron_batches``;
    ``neuron_batches_resumed`` on rank 0)."""
    assert spec.compute is not None and work.progress is not None
    compute, counts = spec.compute, Counter[str]()

    def compute_batches(batches: list[list[int]]) -> Iterator[PerNeuronArtifact]:
        for batch in batches:
            artifact, batch_counts = compute(ctx, work.subset(batch))
            counts.update(batch_counts)
            yield artifact

    files = _NeuronBatches(spec.artifact)
    done = resumable_batches(work.neurons, size, compute_batches, files, work.progress, ctx.ranks)
    merged = functools.reduce(lambda earlier, part: part.merged_over(earlier), [part for _, part in done.batches])
    wanted = set(work.neurons)
    merged = merged.model_copy(update={"neurons": [entry for entry in merged.neurons if entry.neuron in wanted]})
    return merged, {"neuron_batches": done.computed, **counts, "neuron_batches_resumed": done.resumed}


class _NeuronBatches:
    """A per-neuron stage's batches in its progress folder: ``neurons-<first>-<last>-<key>.json`` holding the batch's
    neurons and its artifact."""

    pattern = "neurons-*.json"

    def __init__(self, artifact: type[BaseModel]):
        self.artifact = artifact

    def name(self, neurons: list[int]) -> str:
        return f"neurons-{neurons[0]}-{neurons[-1]}-{content_key(neurons)}.json"

    def save(self, path: Path, neurons: list[int], artifact: PerNeuronArtifact) -> None:
        atomic_write_text(path, canonical_json({"neurons": neurons, "artifact": artifact.model_dump(mode="json")}))

    def held(self, path: Path) -> list[int]:
        return json.loads(path.read_text())["neurons"]

    def load(self, path: Path) -> PerNeuronArtifact:
        part = self.artifact.model_validate(json.loads(path.read_text())["artifact"])
        assert isinstance(part, PerNeuronArtifact)
        return part


def read_upstream(spec: StageSpec, job: StageJob) -> tuple[NeuronWork, dict[int, str]]:
    """``(work on the usable neurons, reason by neuron that stops)`` for ``job.neurons`` of ``spec``.

    A neuron that failed in a needed stage is carried on with that reason behind the stage's name ("caption stage
    failed: ..."), so a failure travels to the last stage with its cause. Needed stages are checked in the order of
    ``spec.requires`` and then ``spec.needs``; the first that stops a neuron gives its reason.
    """
    order = [*spec.requires, *(name for name in spec.needs if name not in spec.requires)]
    upstream = {stage: job.upstream[stage].read() for stage in order}
    by_neuron = {stage: {entry.neuron: entry for entry in getattr(upstream[stage], "neurons", [])} for stage in order}
    neurons = sorted(job.neurons or [])
    failed: dict[int, str] = {}
    for stage in order:
        requirement = spec.requires.get(stage, Requirement())
        for neuron in neurons:
            reason = None if neuron in failed else _stops(stage, by_neuron[stage].get(neuron), requirement)
            if reason is not None:
                failed[neuron] = reason
    usable = [neuron for neuron in neurons if neuron not in failed]
    entries = {stage: {neuron: by_neuron[stage][neuron] for neuron in usable} for stage in order}
    return NeuronWork(job.layer, usable, upstream, entries), dict(sorted(failed.items()))


def _stops(stage: str, entry: Any, requirement: Requirement) -> str | None:
    """Why ``entry`` (a neuron's entry in ``stage``'s artifact) cannot be used, or None."""
    if entry is None:
        return f"{stage} stage has no entry for this neuron"
    if isinstance(entry, NeuronResult) and entry.failed is not None:
        return f"{stage} stage failed: {entry.failed}"
    if requirement.content is not None and not requirement.content(entry):
        return requirement.missing
    return None


def neuron_entry_type(artifact: type[BaseModel]) -> type[NeuronResult]:
    """The entry model of a per-neuron artifact (``Captions`` → ``NeuronCaptions``), from its ``neurons`` field."""
    (entry_type,) = typing.get_args(artifact.model_fields["neurons"].annotation)
    return entry_type
