"""Stage 1 — record: one batched pass over the probing set, per-neuron summaries, each neuron's top-K images.

Work is split into shards of ``record.shard_size`` images; each finished shard is written (atomically) to the
stage's partial folder, so a killed run resumes at the first missing shard. Several layers are recorded in the
same pass. Output: ``activations.safetensors`` (``activations [n_images, n_neurons]``, ``probe_indices
[n_images]``, see :mod:`dnd.activations`) and a :class:`~dnd.artifacts.TopImages` artifact.

A layer stage: one pass gives every neuron of a layer, so ``--neurons`` does not narrow it, and ``--force`` records
the whole layer again. Its key stays the same, so every later stage keeps its finished neurons.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

import torch
from safetensors import safe_open

from dnd.activations import save_activations
from dnd.artifacts import NeuronTopImages, SkippedImage, TopImages
from dnd.backends.targets import summarize
from dnd.data import batch_loader
from dnd.errors import DnDError
from dnd.layout import ARTIFACT_FILE
from dnd.progress import track
from dnd.stages.base import StageContext, StageJob, StageSpec
from dnd.store import atomic_save_tensors, write_model


def _extra_inputs(ctx: StageContext) -> dict[str, object]:
    return {"probe": ctx.probe.fingerprint, "target": ctx.backends.target_identity()}


def run(ctx: StageContext, jobs: list[StageJob]) -> None:
    """Record every layer of ``jobs`` in one pass over the probing set and write each layer's stage output."""
    started = time.perf_counter()
    config, probe = ctx.config, ctx.probe
    # 1. Plan shards and find, per shard, the layers that still need it (finished shards survive a killed run).
    bounds = [
        (s, min(s + config.record.shard_size, len(probe))) for s in range(0, len(probe), config.record.shard_size)
    ]
    partial = {job.layer: ctx.store.partial_dir(job.layer, "record", job.key) for job in jobs}
    missing = {
        shard: [job.layer for job in jobs if not _shard_path(partial[job.layer], shard).is_file()] for shard in bounds
    }
    todo = [shard for shard in bounds if missing[shard]]
    forward_batches = 0
    # 2. One batched pass over the missing shards, hooks on all their layers, summaries computed in the hooks.
    if todo:
        target = ctx.backends.target
        batches = [
            list(range(i, min(i + config.probe.batch_size, end)))
            for start, end in todo
            for i in range(start, end, config.probe.batch_size)
        ]
        loader = batch_loader(
            probe, target.preprocess, batches, config.probe.num_workers, pin_memory=target.device.type == "cuda"
        )
        shard_of_batch = [shard for shard in todo for _ in range(shard[0], shard[1], config.probe.batch_size)]
        buffers = {shard: _ShardBuffer(config.record.summary, config.record.tokens) for shard in todo}
        description = f"record {', '.join(job.layer for job in jobs)}"
        for shard, batch in track(zip(shard_of_batch, loader, strict=True), description, total=len(batches)):
            buffer = buffers[shard]
            buffer.skipped.extend(batch.skipped)
            if batch.pixels is not None:
                outputs = target.capture(batch.pixels, missing[shard], buffer.summarize, config.record.autocast)
                forward_batches += 1
                buffer.indices.append(batch.indices)
                for layer, summaries in outputs.items():
                    buffer.summaries[layer].append(summaries.cpu())
            buffer.seen += len(batch.indices) + len(batch.skipped)
            if buffer.seen == shard[1] - shard[0]:
                for layer in missing[shard]:
                    buffer.save(_shard_path(partial[layer], shard), layer)
                del buffers[shard]
    # 3. Per layer: assemble the shards, pick the top-K images, write the stage folder.
    for job in jobs:
        activations, probe_indices, skipped, output_shape = _assemble(partial[job.layer], bounds)
        artifact = _top_images(job.layer, activations, probe_indices, skipped, output_shape, ctx)
        with ctx.store.writing(job.layer, "record", job.key) as out:
            save_activations(out, activations, probe_indices)
            write_model(out / ARTIFACT_FILE, artifact)
            ctx.write_manifest(
                out,
                job,
                time.perf_counter() - started,
                {"forward_batches": forward_batches, "images": len(probe), "skipped_images": len(skipped)},
            )


class _ShardBuffer:
    """Summaries of one shard while its batches arrive."""

    def __init__(self, summary: str, tokens: str) -> None:
        self.summary, self.tokens = summary, tokens
        self.indices: list[torch.Tensor] = []
        self.summaries: dict[str, list[torch.Tensor]] = defaultdict(list)
        self.skipped: list[tuple[int, str]] = []
        self.output_shapes: dict[str, list[int]] = {}
        self.seen = 0

    def summarize(self, layer: str, output: torch.Tensor) -> torch.Tensor:
        """Hook-side reducer: remembers the layer's per-image output shape, returns ``[B, n_neurons]``."""
        self.output_shapes.setdefault(layer, list(output.shape[1:]))
        return summarize(output, self.summary, self.tokens)

    def save(self, path: Path, layer: str) -> None:
        """Write this shard's rows for ``layer`` (atomically: temp file, then rename)."""
        empty = torch.empty(0, 0)
        tensors = {
            "activations": torch.cat(self.summaries[layer]) if self.summaries[layer] else empty,
            "probe_indices": torch.cat(self.indices) if self.indices else torch.empty(0, dtype=torch.long),
        }
        metadata = {
            "skipped": json.dumps(self.skipped),
            "output_shape": json.dumps(self.output_shapes.get(layer, [])),
        }
        atomic_save_tensors(path, tensors, metadata)


def _shard_path(partial: Path, shard: tuple[int, int]) -> Path:
    return partial / f"shard-{shard[0]:09d}-{shard[1]:09d}.safetensors"


def _assemble(
    partial: Path, bounds: list[tuple[int, int]]
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, str]], list[int]]:
    """Concatenate a layer's shards: ``(activations [n, C], probe_indices [n], skipped, output_shape)``."""
    activations, indices, skipped, output_shape = [], [], [], []
    for shard in bounds:
        path = _shard_path(partial, shard)
        with safe_open(str(path), "pt") as shard_file:
            tensors = {name: shard_file.get_tensor(name) for name in shard_file.keys()}  # noqa: SIM118
            metadata = shard_file.metadata()
        skipped.extend((int(i), reason) for i, reason in json.loads(metadata["skipped"]))
        output_shape = json.loads(metadata["output_shape"]) or output_shape
        if tensors["probe_indices"].numel():
            activations.append(tensors["activations"])
            indices.append(tensors["probe_indices"])
    if not activations:
        raise DnDError(f"no readable image in the probing set ({len(skipped)} unreadable): nothing to record")
    return torch.cat(activations), torch.cat(indices), skipped, output_shape


def _top_images(
    layer: str,
    activations: torch.Tensor,
    probe_indices: torch.Tensor,
    skipped: list[tuple[int, str]],
    output_shape: list[int],
    ctx: StageContext,
) -> TopImages:
    """Each neuron's top-K rows of ``activations [n_images, n_neurons]``, highest first."""
    ids = ctx.probe.ids
    row_ids = [ids[i] for i in probe_indices.tolist()]
    k = min(ctx.config.record.top_k, activations.shape[0])
    values, rows = torch.topk(activations, k, dim=0)  # [k, n_neurons] each
    neurons = [
        NeuronTopImages(
            neuron=n,
            rows=rows[:, n].tolist(),
            image_ids=[row_ids[r] for r in rows[:, n].tolist()],
            activations=values[:, n].tolist(),
        )
        for n in range(activations.shape[1])
    ]
    return TopImages(
        layer=layer,
        n_neurons=activations.shape[1],
        n_images=activations.shape[0],
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
