"""Image-text embeddings of a probing set, computed once per model and set and kept as safetensors.

CLIP-Dissect and the simulation evaluation both need every recorded probing image embedded by an image-text model
(CLIP, SigLIP, or offline the caption space); the result is keyed by the model, the probing set's fingerprint and the
rows, so any later command with the same model and images embeds nothing again.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file

from dnd import layout
from dnd.backends.caption_space import CaptionSpace
from dnd.backends.captioners import CAPTION_CACHE
from dnd.backends.embedders import CachedTextEmbedder, load_image_text_model
from dnd.batching import chunks
from dnd.progress import track
from dnd.store import ItemCache, atomic_save_tensors, content_key

if TYPE_CHECKING:
    from dnd.backends.container import Backends
    from dnd.backends.embedders import ImageEmbedder, ImageTextEmbedder
    from dnd.data import ProbeSet

#: Under the output folder's cache: image embeddings of probing sets, one safetensors file per (model, set, rows).
CACHE_FOLDER = "image-embeddings"


def probe_image_embeddings(
    output_dir: Path, probe: ProbeSet, embedder: ImageEmbedder, probe_indices: list[int], batch_size: int
) -> torch.Tensor:
    """``[len(probe_indices), d]``: ``embedder``'s embeddings of these probing images (rows L2-normalised), embedded
    ``batch_size`` at a time on first use and read from ``<output_dir>/cache/image-embeddings`` afterwards."""
    key = content_key({"model": embedder.model, "probe": probe.fingerprint, "rows": probe_indices})
    path = layout.cache_dir(output_dir) / CACHE_FOLDER / f"images-{key}.safetensors"

    def embed() -> torch.Tensor:
        batches = chunks(probe_indices, batch_size)
        parts = [
            embedder.embed_images([probe.load(index) for index in batch])
            for batch in track(batches, f"image embeddings ({embedder.name})")
        ]
        return torch.cat(parts)

    return cached_tensor(path, embed)


def cached_tensor(path: Path, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The tensor stored at ``path``, or ``compute()`` stored there first (atomically: a temp file, then rename)."""
    if path.is_file():
        return load_file(str(path))["tensor"]
    tensor = compute().contiguous()
    atomic_save_tensors(path, {"tensor": tensor})
    return tensor


#: ``--simulator`` / ``--model`` value of the offline stand-in (captions by the run's captioner, MiniLM).
CAPTION_SPACE = "captions"
#: The image-text model of the simulation protocol's paper (Linear Explanations): SigLIP ViT-SO400M-14-384.
PAPER_IMAGE_TEXT_MODEL = "google/siglip-so400m-patch14-384"
#: The item-cache namespace of the caption space's text embeddings.
TEXT_CACHE = "texts"


def image_text_space(spec: str, backends: Backends) -> tuple[ImageTextEmbedder, str | None]:
    """The image-text model ``spec`` names, and why it stands in for the paper's model (None when it does not).

    ``auto``: :data:`PAPER_IMAGE_TEXT_MODEL` where it can be loaded, else the caption space; ``captions``: the caption
    space over the run's captioner (:class:`~dnd.backends.caption_space.CaptionSpace`); ``clip``: ``embed.clip_model``;
    anything else: a ``transformers`` image-text model id or folder (CLIP, SigLIP).
    """
    from dnd.backends.loading import hub_unavailable

    reason = None
    if spec == "auto":
        reason = hub_unavailable(PAPER_IMAGE_TEXT_MODEL)
        spec = CAPTION_SPACE if reason is not None else PAPER_IMAGE_TEXT_MODEL
    if spec != CAPTION_SPACE:
        return load_image_text_model(spec, backends.config.embed, backends.device), None
    cache = layout.cache_dir(backends.config.output_dir)
    texts = CachedTextEmbedder(backends.minilm, ItemCache(cache, TEXT_CACHE))
    captions = ItemCache(cache, CAPTION_CACHE)
    space = CaptionSpace(lambda: backends.captioner, backends.captioner_identity(), captions, texts)
    return space, reason or "chosen with --simulator captions"
