"""Activations stored and computed outside the probing pass: stage 1's matrix on disk, and a layer's summaries on
images of the image store (stage 6 and CoSy run the target network over generated images with the same summary).

Stage 1 writes the matrix in shards (:func:`save_shard`), each a contiguous range of the probing set with its rows in
float16 and its own top-K per neuron, so recording never holds more than one shard and the layer's top-K is a merge of
the shards' (:class:`RunningTopK`). The matrix as one file is assembled only when a later step asks for it
(:func:`load_activations`: CLIP-Dissect, CoSy, the evaluations) and is then read memory-mapped, so a probe of a
million images costs disk, not memory.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from dnd.batching import resumable_batches
from dnd.data import ProbeSet, batch_loader, open_rgb
from dnd.distributed import Ranks
from dnd.errors import DnDError
from dnd.layer_reductions import summary_reducer
from dnd.layout import ACTIVATION_SHARDS_FOLDER, ACTIVATIONS_FILE
from dnd.progress import track
from dnd.store import atomic_concat_safetensors, atomic_save_tensors, content_key, memmap_tensors

if TYPE_CHECKING:
    from dnd.backends.target_network import TargetNetwork
    from dnd.config import RecordConfig
    from dnd.image_store import ImageStore

#: Values beyond this magnitude are kept in float32 (float16's largest finite value).
FLOAT16_MAX = torch.finfo(torch.float16).max
_SHARD_PREFIX = "part-"
_SORT_COLUMNS = 256


# --- stage 1's matrix -----------------------------------------------------------------------------------------------


def top_k_stable(values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each column's ``k`` highest entries of ``values [n, C]``, highest first: ``(values [k, C], rows [k, C])``.

    Equal values keep their row order (the lower row first), so the result never depends on how the rows were
    split into shards or processes. (``torch.topk`` leaves the order of ties unspecified; it even changes with ``n``.)
    Columns are sorted a block at a time, so the sort's scratch memory stays small beside ``values``.
    """
    tops, rows = [], []
    for start in range(0, max(values.shape[1], 1), _SORT_COLUMNS):
        ordered = torch.sort(values[:, start : start + _SORT_COLUMNS], dim=0, descending=True, stable=True)
        tops.append(ordered.values[:k])
        rows.append(ordered.indices[:k])
    return torch.cat(tops, dim=1), torch.cat(rows, dim=1)


class RunningTopK:
    """The top ``k`` per neuron over blocks of rows added in row order: ``values [k', C]`` and their probe indices."""

    def __init__(self, k: int):
        self.k = k
        self.values: torch.Tensor | None = None
        self.indices: torch.Tensor | None = None

    def add(self, values: torch.Tensor, indices: torch.Tensor) -> None:
        """Merge a later block's candidates: ``values [m, C]`` at probe indices ``indices [m, C]``."""
        if self.values is not None and self.indices is not None:
            values, indices = torch.cat([self.values, values]), torch.cat([self.indices, indices])
        self.values, rows = top_k_stable(values, self.k)
        self.indices = torch.gather(indices, 0, rows)


def shard_path(folder: Path, start: int, end: int) -> Path:
    """The shard covering probe indices ``start`` to ``end`` (exclusive; unreadable images included)."""
    return folder / f"{_SHARD_PREFIX}{start:09d}-{end:09d}.safetensors"


def shard_range(path: Path) -> tuple[int, int]:
    start, end = path.stem.removeprefix(_SHARD_PREFIX).split("-")
    return int(start), int(end)


def shards_in(folder: Path) -> list[Path]:
    """The shards in ``folder``, in probe order."""
    return sorted(folder.glob(f"{_SHARD_PREFIX}*.safetensors")) if folder.is_dir() else []


def save_shard(
    path: Path,
    summaries: torch.Tensor,
    probe_indices: torch.Tensor,
    skipped: list[tuple[int, str]],
    output_shape: list[int],
    top_k: int,
) -> None:
    """Write one shard atomically: ``summaries [m, C]`` (float32) of the readable images ``probe_indices [m]`` in
    float16 (float32 if a value is beyond float16's range), their top ``top_k`` per neuron in float32, the
    unreadable images and the layer's per-image output shape."""
    top_values, top_rows = top_k_stable(summaries, min(top_k, summaries.shape[0]))
    fits = bool(summaries.numel() == 0 or summaries.abs().max() <= FLOAT16_MAX)
    tensors = {
        "activations": (summaries.half() if fits else summaries).contiguous(),
        "probe_indices": probe_indices,
        "top_values": top_values.contiguous(),
        "top_indices": probe_indices[top_rows].contiguous(),
    }
    metadata = {"skipped": json.dumps(skipped), "output_shape": json.dumps(output_shape)}
    atomic_save_tensors(path, tensors, metadata)


@dataclass(frozen=True)
class ShardSummary:
    """What a shard says without its activations: its readable images, top-K, unreadable images, output shape."""

    probe_indices: torch.Tensor  # [m]
    top_values: torch.Tensor  # [k, C], float32
    top_indices: torch.Tensor  # [k, C], probe indices
    skipped: list[tuple[int, str]]
    output_shape: list[int]


def read_shard_summary(path: Path) -> ShardSummary:
    with safe_open(str(path), "pt") as shard:
        tensors = {name: shard.get_tensor(name) for name in ("probe_indices", "top_values", "top_indices")}
        metadata = shard.metadata()
    return ShardSummary(
        skipped=[(int(index), reason) for index, reason in json.loads(metadata["skipped"])],
        output_shape=json.loads(metadata["output_shape"]),
        **tensors,
    )


def load_activations(stage_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """A finished record stage's ``(activations [n_images, n_neurons], probe_indices [n_images])``, memory-mapped.

    The activations are float16 (float32 where the layer's values exceed float16's range; float32 in folders
    recorded before shards were). The first call assembles the shards into ``activations.safetensors`` (streamed,
    one shard in memory at a time) and removes them; index or ``.float()`` a slice of columns rather than the whole
    matrix to keep memory small.
    """
    path = stage_dir / ACTIVATIONS_FILE
    if not path.is_file():
        _assemble(stage_dir)
    tensors = memmap_tensors(path)
    return tensors["activations"], tensors["probe_indices"]


def _assemble(stage_dir: Path) -> None:
    folder = stage_dir / ACTIVATION_SHARDS_FOLDER
    sources, dtypes = [], set()
    for shard in shards_in(folder):
        with safe_open(str(shard), "pt") as file:
            if file.get_slice("probe_indices").get_shape()[0]:  # a shard of unreadable images only has no rows
                sources.append(shard)
                dtypes.add(file.get_slice("activations").get_dtype())
    if not sources:
        if (stage_dir / ACTIVATIONS_FILE).is_file():  # another process assembled it meanwhile
            return
        raise DnDError(f"{stage_dir} holds no activations; record them again with `dnd run record --force`")
    dtype = "F16" if dtypes == {"F16"} else "F32"
    try:
        atomic_concat_safetensors(stage_dir / ACTIVATIONS_FILE, sources, {"activations": dtype, "probe_indices": "I64"})
    except FileNotFoundError:
        if not (stage_dir / ACTIVATIONS_FILE).is_file():
            raise
        return  # another process assembled it and removed the shards while this one read them
    shutil.rmtree(folder, ignore_errors=True)


# --- activations on stored images -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _StoredImages:
    """``load(index)`` for a list of image-store ids (a picklable callable, for DataLoader workers)."""

    store: ImageStore
    ids: list[str]

    def __call__(self, index: int) -> Image.Image:
        return open_rgb(self.store.path(self.ids[index]))


@dataclass
class StoredActivations:
    """The layer's summaries ``values [n_readable, n_neurons]`` on images of the image store; ``rows[id]`` is an
    image's row, ``errors[id]`` why an image could not be read; ``batches`` counts the forward passes this process ran.

    Computed as stage 1 computed the probing set's (the network's own preprocessing, ``record.summary`` /
    ``record.tokens``, ``record.autocast``), so the two can be compared; used by stage 6 and by CoSy."""

    values: torch.Tensor
    rows: dict[str, int]
    errors: dict[str, str]
    batches: int

    @classmethod
    def none(cls) -> StoredActivations:
        """Activations on no image."""
        return cls(torch.empty(0, 0), {}, {}, 0)

    @classmethod
    def compute(
        cls,
        target: TargetNetwork,
        layer: str,
        record: RecordConfig,
        store: ImageStore,
        image_ids: list[str],
        batch_size: int,
        num_workers: int,
        description: str,
        progress: Path | None = None,
        ranks: Ranks | None = None,
    ) -> StoredActivations:
        """Run ``image_ids`` through ``target`` in batches of ``batch_size`` images loaded by ``num_workers``.

        With a ``progress`` folder, each batch's summaries are stored there as it finishes, and batches found there
        (a killed run's) are read instead of computed. ``ranks`` spread the batches over a job's processes (which
        then need ``progress``, where they meet); each process returns the whole result.
        """
        if not image_ids:
            return cls.none()
        position = {image_id: index for index, image_id in enumerate(image_ids)}
        passes = 0

        def compute_batches(batches: list[list[str]]) -> Iterator[_Batch]:
            nonlocal passes
            if not batches:
                return
            positions = [[position[image_id] for image_id in batch] for batch in batches]
            images = ProbeSet(ids=image_ids, load=_StoredImages(store, image_ids), fingerprint=content_key(image_ids))
            pinned = target.device.type == "cuda"
            loader = batch_loader(images, target.preprocess, positions, num_workers, pin_memory=pinned)
            reduce = summary_reducer(record.summary, record.tokens, target.units)
            for places, batch in zip(positions, track(loader, description, total=len(batches)), strict=True):
                summaries = torch.empty(0, 0)
                if batch.pixels is not None:
                    summaries = target.capture(batch.pixels, [layer], reduce, record.autocast)[layer].float().cpu()
                    passes += 1
                within = {place: row for row, place in enumerate(places)}  # probe position -> place in the batch
                readable = torch.tensor([within[place] for place in batch.indices.tolist()], dtype=torch.long)
                yield _Batch(summaries, readable, {image_ids[index]: error for index, error in batch.skipped})

        done = resumable_batches(image_ids, batch_size, compute_batches, _BatchFiles(), progress, ranks)
        rows: dict[str, int] = {}
        errors: dict[str, str] = {}
        parts: list[torch.Tensor] = []
        for ids, part in done.batches:
            errors.update(part.errors)
            if part.values.numel():
                parts.append(part.values)
                for place in part.readable.tolist():
                    rows[ids[place]] = len(rows)
        values = torch.cat(parts) if parts else torch.empty(0, 0)
        return cls(values, rows, errors, passes)

    def of(self, neuron: int, concept_images: list[list[str]]) -> dict[str, float]:
        """``neuron``'s activation on each of ``concept_images`` (every id must be readable)."""
        ids = list(dict.fromkeys(i for images in concept_images for i in images))
        if not ids:  # every concept came back without images (nothing retrieved): each is scored N+1
            return {}
        values = self.values[[self.rows[i] for i in ids], neuron].tolist()
        return dict(zip(ids, values, strict=True))


@dataclass
class _Batch:
    """One batch of stored images: summaries ``values [n_readable, C]`` of the images at positions ``readable`` of
    the batch, and why the others could not be read."""

    values: torch.Tensor
    readable: torch.Tensor
    errors: dict[str, str]


class _BatchFiles:
    """Batches of summaries in a progress folder: ``activations-<key of the ids>.safetensors``, the batch's image ids
    and errors in its metadata."""

    pattern = "activations-*.safetensors"

    def name(self, ids: list[str]) -> str:
        return f"activations-{content_key(ids)}.safetensors"

    def save(self, path: Path, ids: list[str], batch: _Batch) -> None:
        tensors = {"values": batch.values.contiguous(), "readable": batch.readable.contiguous()}
        atomic_save_tensors(path, tensors, {"ids": json.dumps(ids), "errors": json.dumps(batch.errors)})

    def held(self, path: Path) -> list[str]:
        with safe_open(str(path), "pt") as file:
            return json.loads(file.metadata().get("ids", "[]"))  # a file without its ids is computed again

    def load(self, path: Path) -> _Batch:
        with safe_open(str(path), "pt") as file:
            errors = json.loads(file.metadata()["errors"])
        tensors = load_file(str(path))
        return _Batch(tensors["values"], tensors["readable"], errors)
