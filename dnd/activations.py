"""Activations stored and computed outside the probing pass: stage 1's matrix on disk, and a layer's summaries on
images of the image store (stage 6 and CoSy run the target network over generated images with the same summary).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from dnd.backends.targets import summary_reducer
from dnd.data import ProbeSet, batch_loader, open_rgb
from dnd.layout import ACTIVATIONS_FILE
from dnd.progress import track
from dnd.store import content_key

if TYPE_CHECKING:
    from dnd.backends.targets import TargetNetwork
    from dnd.config import RecordConfig
    from dnd.image_store import ImageStore


def save_activations(stage_dir: Path, activations: torch.Tensor, probe_indices: torch.Tensor) -> None:
    """Write stage 1's ``activations [n_images, n_neurons]`` and ``probe_indices [n_images]`` into ``stage_dir``."""
    save_file(
        {"activations": activations.contiguous(), "probe_indices": probe_indices}, str(stage_dir / ACTIVATIONS_FILE)
    )


def load_activations(stage_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Read a finished record stage: ``(activations [n_images, n_neurons], probe_indices [n_images])``."""
    tensors = load_file(str(stage_dir / ACTIVATIONS_FILE))
    return tensors["activations"], tensors["probe_indices"]


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
    image's row, ``errors[id]`` why an image could not be read; ``batches`` counts the forward passes.

    Computed as stage 1 computed the probing set's (the network's own preprocessing, ``record.summary`` /
    ``record.tokens``, autocast on CUDA), so the two can be compared; used by stage 6 and by CoSy."""

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
    ) -> StoredActivations:
        """Run ``image_ids`` through ``target`` in batches of ``batch_size`` images loaded by ``num_workers``."""
        if not image_ids:
            return cls.none()
        batches = [list(range(i, min(i + batch_size, len(image_ids)))) for i in range(0, len(image_ids), batch_size)]
        images = ProbeSet(ids=image_ids, load=_StoredImages(store, image_ids), fingerprint=content_key(image_ids))
        loader = batch_loader(images, target.preprocess, batches, num_workers, pin_memory=target.device.type == "cuda")
        reduce = summary_reducer(record.summary, record.tokens)
        rows: dict[str, int] = {}
        errors: dict[str, str] = {}
        parts: list[torch.Tensor] = []
        for batch in track(loader, description, total=len(batches)):
            errors.update({image_ids[index]: error for index, error in batch.skipped})
            if batch.pixels is None:
                continue
            summaries = target.capture(batch.pixels, [layer], reduce, record.autocast)[layer]
            parts.append(summaries.float().cpu())
            for index in batch.indices.tolist():
                rows[image_ids[index]] = len(rows)
        values = torch.cat(parts) if parts else torch.empty(0, 0)
        return cls(values, rows, errors, len(parts))

    def of(self, neuron: int, concept_images: list[list[str]]) -> dict[str, float]:
        """``neuron``'s activation on each of ``concept_images`` (every id must be readable)."""
        ids = list(dict.fromkeys(i for images in concept_images for i in images))
        if not ids:  # every concept came back without images (nothing retrieved): each is scored N+1
            return {}
        values = self.values[[self.rows[i] for i in ids], neuron].tolist()
        return dict(zip(ids, values, strict=True))
