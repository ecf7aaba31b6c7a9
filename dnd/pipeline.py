"""The ordered stages of Describe-and-Dissect: which are stale, and running them. It never touches a model itself.

The pipeline runs a list of stages (by default :data:`dnd.stages.registry.STAGES`; tests pass stand-ins). It computes
each stage's cache key from the stage's spec (name, version, the config fields it reads, the text of its prompt
files, extra inputs such as the probing set's fingerprint, and the keys of the stages it needs), once per stage and
layer in a run; skips stages whose output is already in the store; and hands the rest to the stage kernel
(:mod:`dnd.stages.base`) in order. Of a per-neuron stage it computes the requested neurons that the store lacks, or,
forced, all the requested ones; either way the neurons an earlier run finished and this one does not recompute are
kept.

While it runs stages it holds the run folder's lock (:mod:`dnd.locking`), so a second run on the same folder stops
with a message naming the first, and first cleans up what a killed run left half-done (:meth:`StageStore.recover`).
Under a launcher of several processes (:mod:`dnd.distributed`), rank 0 takes the lock and decides which jobs are due,
and every process runs them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from dnd import layout
from dnd.artifacts import TopImages
from dnd.backends.container import Backends
from dnd.config import RunConfig, key_fields
from dnd.distributed import process_ranks
from dnd.errors import DnDError
from dnd.locking import RunLock
from dnd.progress import note
from dnd.stages.base import StageContext, StageJob, StageOutput, StageSpec, run_stage
from dnd.stages.registry import STAGES
from dnd.store import StageStore, Status, content_key


class Pipeline:
    """Runs ``stages`` (default: the method's six, in order) of one config for one or more layers, reusing everything
    already in the store."""

    def __init__(
        self,
        config: RunConfig,
        backends: Backends | None = None,
        prompts_dir: Path | None = None,
        stages: Sequence[StageSpec] | None = None,
    ):
        self.config = config
        self.backends = backends or Backends(config)
        self.store = StageStore(layout.run_dir(config.output_dir, config.name))
        self.ranks = process_ranks()
        self.context = StageContext(config, self.backends, self.store, prompts_dir or config.prompts_dir, self.ranks)
        self.stages = {spec.name: spec for spec in (STAGES if stages is None else stages)}
        for position, spec in enumerate(self.stages.values()):
            earlier = list(self.stages)[:position]
            if any(need not in earlier for need in spec.needs):
                raise ValueError(f"stage {spec.name!r} needs {spec.needs}, but only {earlier} run before it")
        self._keys: dict[tuple[str, str], tuple[dict[str, Any], str]] | None = None
        self._sizes: dict[tuple[str, str], int] = {}  # (layer, record key) -> the layer's number of neurons
        #: Wall time each stage ran for in this process (model loading included); cached stages are absent.
        self.wall_seconds: dict[str, float] = {}
        self._lock = RunLock(layout.lock_path(self.store.root))
        self._lock_depth = 0

    # --- keys -------------------------------------------------------------------------------------------------

    def key_inputs(self, stage: str, layer: str) -> dict[str, Any]:
        """Exactly what the output of ``stage`` for ``layer`` depends on (the payload its key hashes)."""
        return self._key_entry(stage, layer)[0]

    def key(self, stage: str, layer: str) -> str:
        return self._key_entry(stage, layer)[1]

    @contextlib.contextmanager
    def _one_run(self) -> Iterator[None]:
        """Inside this block (a run, a status, a listing), each (stage, layer) key is computed once and reused.

        Outside it, every call reads the config and prompt files afresh, so an edit between runs is seen.
        """
        if self._keys is not None:  # nested: the outermost block owns the memo
            yield
            return
        self._keys = {}
        try:
            yield
        finally:
            self._keys = None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Inside this block the run folder is this run's (rank 0 holds the lock for the whole job)."""
        if self._lock_depth == 0:
            self.ranks.agree(self._take_lock)
        self._lock_depth += 1
        try:
            yield
        finally:
            self._lock_depth -= 1
            if self._lock_depth == 0:
                self._lock.release()

    def _take_lock(self) -> None:
        self._lock.acquire()
        for folder in self.store.recover():
            note(f"put back {folder}, which a killed run had moved aside to replace it")

    def _key_entry(self, stage: str, layer: str) -> tuple[dict[str, Any], str]:
        with self._one_run():
            assert self._keys is not None
            if (stage, layer) not in self._keys:
                spec = self._spec(stage)
                inputs: dict[str, Any] = {
                    "stage": spec.name,
                    "version": spec.version,
                    "layer": layer,
                    "config": {part: self._config_part(part) for part in spec.config_sections},
                    "prompts": {name: self.context.prompt_text(name) for name in spec.prompts},
                    "upstream": {name: self.key(name, layer) for name in spec.needs},
                }
                if spec.extra_inputs is not None:
                    inputs["extra"] = spec.extra_inputs(self.context)
                self._keys[stage, layer] = (inputs, content_key(inputs))
            return self._keys[stage, layer]

    def _config_part(self, part: str) -> Any:
        """The key fields of config section ``part`` (``"crop"``), or one field's value (``"embed.clip_model"``)."""
        section, _, name = part.partition(".")
        value = getattr(self.config, section)
        if name:
            return key_fields(value)[name]
        return key_fields(value)

    # --- status and running --------------------------------------------------------------------------------

    def status(self, layer: str) -> list[tuple[str, Status, str]]:
        """``(stage, fresh | stale | missing, key)`` for every stage."""
        with self._one_run():
            return [
                (name, self.store.status(layer, name, self.key(name, layer)), self.key(name, layer))
                for name in self.stages
            ]

    def finished(self, layer: str, last_stage: str) -> list[tuple[str, Path, BaseModel]]:
        """``(stage, folder, artifact)`` of every stage up to ``last_stage``, each of which must be fresh."""
        with self._one_run():
            order = list(self.stages)
            return [
                (name, self.store.stage_dir(layer, name, self.key(name, layer)), self._load(layer, name))
                for name in order[: order.index(self._spec(last_stage).name) + 1]
            ]

    def describe(self, layers: list[str], neurons: list[int] | None = None, force: bool = False) -> dict[str, Path]:
        """Run every stage (or up to ``config.stop_after``); return the last one's folder per layer.

        ``force`` recomputes every stage up to there: a layer stage all over, a per-neuron stage for ``neurons``.
        """
        last = self.config.stop_after or list(self.stages)[-1]
        order = list(self.stages)
        forced = set(order[: order.index(self._spec(last).name) + 1]) if force else set()
        return self.run_until(last, layers, neurons, force_stages=forced)

    def run_until(
        self,
        stage: str,
        layers: list[str],
        neurons: list[int] | None = None,
        force_stages: set[str] | None = None,
    ) -> dict[str, Path]:
        """Run ``stage`` and every stage before it that is not fresh; return ``stage``'s folder per layer.

        Stages in ``force_stages`` are recomputed even when fresh: a layer stage (record) all over, since one pass
        serves all of a layer's neurons; a per-neuron stage only for ``neurons`` (default: all), keeping the finished
        entries of every other neuron.
        """
        with self._one_run(), self._locked():
            order = list(self.stages)
            for name in order[: order.index(self._spec(stage).name) + 1]:
                spec = self.stages[name]
                forced = name in (force_stages or set())
                jobs = self.ranks.agree(
                    lambda spec=spec, forced=forced: [
                        job for layer in layers if (job := self._job(spec, layer, neurons, forced)) is not None
                    ]
                )
                if jobs:
                    started = time.perf_counter()
                    run_stage(spec, self.context, jobs)
                    self.wall_seconds[name] = self.wall_seconds.get(name, 0.0) + time.perf_counter() - started
            folders = {layer: self.store.stage_dir(layer, stage, self.key(stage, layer)) for layer in layers}
            publish = self.stages[stage].publish
            if publish is not None and self.ranks.is_main:
                for layer in layers:
                    publish(self.context, layer, self._load(layer, stage))
            return folders

    def _job(self, spec: StageSpec, layer: str, neurons: list[int] | None, forced: bool) -> StageJob | None:
        """The work ``spec`` has to do for ``layer``, or None when its output is complete."""
        key = self.key(spec.name, layer)
        if forced:
            self.store.discard_partial(layer, spec.name, key)
        complete = self.store.is_complete(layer, spec.name, key)
        upstream = {
            name: StageOutput(self.store.stage_dir(layer, name, self.key(name, layer)), self.stages[name].artifact)
            for name in spec.needs
        }
        job = StageJob(layer, key, self.key_inputs(spec.name, layer), upstream)
        if not spec.per_neuron:
            return job if forced or not complete else None
        job.neurons = self._requested_neurons(layer, neurons)
        if complete and not forced:
            done = self._load(layer, spec.name).done()
            job.neurons = [neuron for neuron in job.neurons if neuron not in done]
        return job if job.neurons else None

    def _load(self, layer: str, stage: str) -> Any:
        return self.store.load(layer, stage, self.key(stage, layer), self.stages[stage].artifact)

    def _requested_neurons(self, layer: str, neurons: list[int] | None) -> list[int]:
        """``neurons`` checked against the layer's size (known once it is recorded); None means all of them."""
        first = next(iter(self.stages))
        recorded = (layer, self.key(first, layer))
        if recorded not in self._sizes:
            self._sizes[recorded] = self.store.load(layer, first, recorded[1], TopImages).n_neurons
        count = self._sizes[recorded]
        if neurons is None:
            return list(range(count))
        out_of_range = [n for n in neurons if n >= count]
        if out_of_range:
            raise DnDError(
                f"--neurons: {out_of_range[:5]} out of range, layer {layer} has {count} neurons (0-{count - 1})"
            )
        return neurons

    def _spec(self, stage: str) -> StageSpec:
        if stage not in self.stages:
            raise DnDError(f"unknown stage {stage!r}; the stages are: {', '.join(self.stages)}")
        return self.stages[stage]
