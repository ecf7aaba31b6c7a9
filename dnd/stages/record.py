"""Stage 1 — record: one batched pass over the probing set, per-neuron summaries, each neuron's top-K images.

The pass is cut into shards: a shard is written (atomically, to the stage's partial folder) every
``record.shard_seconds`` or ``record.shard_size`` images, whichever comes first, so a killed run loses at most that
much and a later run records only the probe ranges no shard covers. A shard holds its rows in float16 and its own
top-K per neuron (:mod:`dnd.activations`); the layer's top-K is the merge of the shards', so memory never grows with
the probing set. Several layers are recorded in the same pass. In a job of several processes the batches are spread
over them and rank 0 merges the shards.

Output: a :class:`~dnd.artifacts.TopImages` artifact and the shards (``activation-shards/``), which become
``activations.safetensors`` (``activations [n_images, n_neurons]``, ``probe_indices [n_images]``) when a later step
first asks for the matrix (:func:`~dnd.activations.load_activations`). Ties in the top-K go to the lower probe index.

A layer stage: one pass gives every neuron of a layer, so ``--neurons`` does not narrow it, and ``--force`` records
the whole layer again. Its key stays the same, so every later stage keeps its finished neurons.

With ``units`` set, a "neuron" here is a unit (an SAE's latent, a direction; :mod:`dnd.units`): its maps are computed
from the layer's output in the hook, before the summary, and the units' file hash joins the key.
"""

from __future__ import annotations

import itertools
import os
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dnd.activations import RunningTopK, read_shard_summary, save_shard, shard_path, shard_range, shards_in
from dnd.artifacts import NeuronTopImages, SkippedImage, TopImages
from dnd.data import batch_loader
from dnd.errors import DnDError
from dnd.layer_reductions import summary_reducer, unit_output_shape
from dnd.layout import ACTIVATION_SHARDS_FOLDER, ARTIFACT_FILE
from dnd.progress import track
from dnd.stages.base import StageContext, StageJob, StageSpec
from dnd.store import write_model
from dnd.units import UnitMap

#: A planned batch: probe indices ``start`` to ``end`` (exclusive) and the layers that still need them.
Batch = tuple[int, int, tuple[str, ...]]


#: A shard of units (an SAE's latents) holds at most this many bytes of float32 summaries, so a 64k-latent SAE
#: writes shards of 1,024 images rather than ``record.shard_size``.
UNIT_SHARD_BYTES = 256 << 20


def _extra_inputs(ctx: StageContext) -> dict[str, object]:
    inputs: dict[str, object] = {"probe": ctx.probe.fingerprint, "target": ctx.backends.target_identity()}
    if ctx.backends.units is not None:  # neurons keep the keys they had before units existed
        inputs["units"] = ctx.backends.units.identity
    return inputs


def run(ctx: StageContext, jobs: list[StageJob]) -> None:
    """Record every layer of ``jobs`` in one pass over the probing set and write each layer's stage output."""
    started = time.perf_counter()
    config, ranks = ctx.config, ctx.ranks
    partial = {job.layer: ctx.store.partial_dir(job.layer, "record", job.key) for job in jobs}
    # 1. Rank 0 plans: the probe ranges some layer has no shard for (a killed run's shards stay), cut into batches.
    plan = ranks.agree(lambda: _missing_batches(partial, len(ctx.probe), config.probe.batch_size))
    # 2. Each process records its share of the batches, writing a shard every shard_seconds / shard_size images.
    counts = _record(ctx, ranks.share(plan.batches), partial)
    counts = ranks.sum_counts({**counts, "shards_resumed": plan.resumed if ranks.is_main else 0})
    # 3. Rank 0, per layer: merge the shards' top-K, write the stage folder with the shards in it.
    if ranks.is_main:
        for job in jobs:
            _write_layer(ctx, job, partial[job.layer], counts, time.perf_counter() - started)


@dataclass
class _Plan:
    batches: list[Batch]
    resumed: int  # shards found from an earlier, killed run


def _missing_batches(partial: dict[str, Path], n_images: int, batch_size: int) -> _Plan:
    """Batches over the probe indices some layer lacks: ranges cut wherever the set of layers needing them changes,
    then into ``batch_size`` images."""
    covered = {layer: [shard_range(path) for path in shards_in(folder)] for layer, folder in partial.items()}
    bounds = sorted({0, n_images, *(i for ranges in covered.values() for r in ranges for i in r)})
    pieces: list[list] = []
    for start, end in itertools.pairwise(bounds):
        layers = tuple(layer for layer, ranges in covered.items() if not any(a <= start < b for a, b in ranges))
        if not layers:
            continue
        if pieces and pieces[-1][1] == start and pieces[-1][2] == layers:
            pieces[-1][1] = end
        else:
            pieces.append([start, end, layers])
    batches = [
        (first, min(first + batch_size, end), layers)
        for start, end, layers in pieces
        for first in range(start, end, batch_size)
    ]
    return _Plan(batches, sum(len(ranges) for ranges in covered.values()))


def _record(ctx: StageContext, batches: list[Batch], partial: dict[str, Path]) -> dict[str, int]:
    """Run ``batches`` through the target network, summarise every layer that needs them and write the shards."""
    counts = {"forward_batches": 0, "images_recorded": 0, "shards_written": 0}
    if not batches:
        return counts
    config, target = ctx.config, ctx.backends.target
    loader = batch_loader(
        ctx.probe,
        target.preprocess,
        [list(range(start, end)) for start, end, _ in batches],
        config.probe.num_workers,
        pin_memory=target.device.type == "cuda",
    )
    shard: _Shard | None = None
    shard_size = config.record.shard_size
    if target.units is not None:
        shard_size = min(shard_size, max(UNIT_SHARD_BYTES // (4 * target.units.n_units), 1))
    description = f"record {', '.join(partial)}"
    for (start, end, layers), batch in track(zip(batches, loader, strict=True), description, total=len(batches)):
        too_big = shard is not None and end - shard.start > shard_size
        if shard is not None and (shard.end != start or shard.layers != layers or too_big):
            counts["shards_written"] += shard.save(partial, config.record.top_k)
            shard = None
        shard = shard or _Shard(start, start, layers, config.record.summary, config.record.tokens, target.units)
        shard.skipped.extend(batch.skipped)
        if batch.pixels is not None:
            outputs = target.capture(batch.pixels, list(layers), shard.reduce_output, config.record.autocast)
            counts["forward_batches"] += 1
            shard.indices.append(batch.indices)
            for layer, summaries in outputs.items():
                shard.summaries[layer].append(summaries.cpu())
        shard.end = end
        counts["images_recorded"] += end - start
        if shard.age() >= config.record.shard_seconds:
            counts["shards_written"] += shard.save(partial, config.record.top_k)
            shard = None
    if shard is not None:
        counts["shards_written"] += shard.save(partial, config.record.top_k)
    return counts


@dataclass
class _Shard:
    """Summaries of consecutive batches over probe indices ``start`` to ``end`` while they arrive."""

    start: int
    end: int
    layers: tuple[str, ...]
    summary: str = "mean"
    tokens: str = "cls"
    units: UnitMap | None = None
    indices: list[torch.Tensor] = field(default_factory=list)
    summaries: dict[str, list[torch.Tensor]] = field(default_factory=lambda: defaultdict(list))
    skipped: list[tuple[int, str]] = field(default_factory=list)
    output_shapes: dict[str, list[int]] = field(default_factory=dict)
    began: float = field(default_factory=time.perf_counter)

    def reduce_output(self, layer: str, output: torch.Tensor) -> torch.Tensor:
        """Hook-side reducer: remembers the per-image shape of the layer's unit maps, returns ``[B, n_units]``
        (neurons unless ``units`` are given)."""
        self.output_shapes.setdefault(layer, unit_output_shape(self.units, list(output.shape[1:])))
        return summary_reducer(self.summary, self.tokens, self.units)(layer, output)

    def age(self) -> float:
        return time.perf_counter() - self.began

    def save(self, partial: dict[str, Path], top_k: int) -> int:
        """Write this shard of every layer it holds; returns the number of files written."""
        indices = torch.cat(self.indices) if self.indices else torch.empty(0, dtype=torch.long)
        for layer in self.layers:
            summaries = torch.cat(self.summaries[layer]) if self.summaries[layer] else torch.empty(0, 0)
            path = shard_path(partial[layer], self.start, self.end)
            save_shard(path, summaries, indices, self.skipped, self.output_shapes.get(layer, []), top_k)
        return len(self.layers)


def _write_layer(ctx: StageContext, job: StageJob, partial: Path, counts: dict[str, int], seconds: float) -> None:
    """Merge ``job.layer``'s shards into its top images and write its stage folder, the shards inside it."""
    shards = shards_in(partial)
    _check_tiling(shards, len(ctx.probe), partial)
    top = RunningTopK(ctx.config.record.top_k)
    indices, skipped, output_shape = [], [], []
    for shard in shards:
        summary = read_shard_summary(shard)
        skipped.extend(summary.skipped)
        output_shape = summary.output_shape or output_shape
        if summary.probe_indices.numel():
            indices.append(summary.probe_indices)
            top.add(summary.top_values, summary.top_indices)
    if top.values is None or top.indices is None:
        raise DnDError(f"no readable image in the probing set ({len(skipped)} unreadable): nothing to record")
    probe_indices = torch.cat(indices)
    rows = torch.searchsorted(probe_indices, top.indices)  # probe indices ascend with rows
    artifact = _top_images(job.layer, top.values, rows, probe_indices, skipped, output_shape, ctx)
    with ctx.store.writing(job.layer, "record", job.key) as out:
        (out / ACTIVATION_SHARDS_FOLDER).mkdir()
        for shard in shards:
            _link_or_copy(shard, out / ACTIVATION_SHARDS_FOLDER / shard.name)
        write_model(out / ARTIFACT_FILE, artifact)
        layer_counts = {**counts, "images": len(ctx.probe), "skipped_images": len(skipped)}
        ctx.write_manifest(out, job, seconds, layer_counts)


def _check_tiling(shards: list[Path], n_images: int, partial: Path) -> None:
    """The shards must cover the probing set exactly once, in order."""
    expected = 0
    for shard in shards:
        start, end = shard_range(shard)
        if start != expected:
            raise RuntimeError(f"shards in {partial} do not tile the probing set: {shard.name} after index {expected}")
        expected = end
    if expected != n_images:
        raise RuntimeError(f"shards in {partial} end at probe index {expected}, not {n_images}")


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link (instant; the shard stays in the partial folder until the stage folder is in place), or a copy
    where the filesystem has none."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _top_images(
    layer: str,
    values: torch.Tensor,
    rows: torch.Tensor,
    probe_indices: torch.Tensor,
    skipped: list[tuple[int, str]],
    output_shape: list[int],
    ctx: StageContext,
) -> TopImages:
    """The artifact from each neuron's top-K ``values [k, n_neurons]`` at matrix ``rows [k, n_neurons]``."""
    ids = ctx.probe.ids
    row_ids = [ids[i] for i in probe_indices.tolist()]
    neurons = [
        NeuronTopImages(
            neuron=n,
            rows=rows[:, n].tolist(),
            image_ids=[row_ids[r] for r in rows[:, n].tolist()],
            activations=values[:, n].tolist(),
        )
        for n in range(values.shape[1])
    ]
    return TopImages(
        layer=layer,
        n_neurons=values.shape[1],
        n_images=len(row_ids),
        output_shape=output_shape,
        summary=ctx.config.record.summary,
        tokens=ctx.config.record.tokens,
        image_ids=row_ids,
        probe_indices=probe_indices.tolist(),
        skipped=[SkippedImage(image_id=ids[i], reason=reason) for i, reason in skipped],
        neurons=neurons,
    )


SPEC = StageSpec(
    name="record",
    version=1,
    needs=(),
    config_sections=("probe", "record"),
    artifact=TopImages,
    run=run,
    extra_inputs=_extra_inputs,
)
