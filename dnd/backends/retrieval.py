"""Retrieval instead of generation (stage 5's offline stand-in): images of a concept are real images of a pool.

Where no text-to-image model can be had, "generating" image ``i`` of concept ``c`` means taking the pool image whose
caption is the ``i``-th nearest to ``c`` in a sentence-embedding space (MiniLM cosine; ties keep pool order). The
captions come from the run's captioner and are kept in the same item cache as stage 3's (:data:`CAPTION_CACHE`,
keyed by captioner and pixels), so each pool image is captioned once, ever, and an image stage 3 already captioned
is not captioned again. The match is made on the concept itself, not on the filled-in prompt ("One realistic image
of {concept}"), whose fixed words would only blur it.

In a job of several processes, each captions its own share of the pool first and then goes over the rest, where
it finds the other processes' captions in the cache (no process waits for another: one that finishes early captions
what is still missing itself). A killed run keeps every captioned batch.

The image returned is the pool image itself, decoded in full: stage 6 then runs it through the target network's own
preprocessing, so the network sees it exactly as it would in the probing set (with the default pool, the probing set
itself, its activations equal those of stage 1). A request beyond the images that can be retrieved (a pool smaller
than Q, or fewer than Q captions at least ``synthesize.min_similarity`` similar to the concept) gets ``None``: the
concept is scored on the images it has, and one with none gets the method's N+1 (see :mod:`dnd.scoring`).

This is a stand-in, not the method: best-concept selection then ranks concepts by real images of them, which keep
their context (a "snorkel" image also shows water and people), so it filters spurious correlations less than
generated images do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from dnd.backends.captioners import Captioner, caption_into_cache, caption_key
from dnd.batching import chunks
from dnd.data import ProbeSet, UnreadableImage, image_loader, unchanged
from dnd.distributed import Ranks
from dnd.errors import DnDError
from dnd.exemplars import pixel_hash
from dnd.progress import track

if TYPE_CHECKING:
    from PIL import Image

    from dnd.backends.embedders import TextEmbedder
    from dnd.backends.generators import GenerationRequest
    from dnd.config import SynthesizeConfig
    from dnd.store import ItemCache


@dataclass
class PoolIndex:
    """The readable pool images with their captions and caption embeddings.

    ``positions[r]`` is the pool index of row ``r``; ``captions[r]`` its caption; ``vectors [rows, d]`` the
    L2-normalised embedding of each caption. ``unreadable`` maps pool index to the reason it was left out.
    """

    positions: list[int]
    captions: list[str]
    vectors: torch.Tensor
    unreadable: dict[int, str]
    captioned: int  # pool images this index had to caption (the rest came from the cache)

    def ranking(self, concept: torch.Tensor, min_similarity: float | None) -> list[int]:
        """Pool indices of the images for ``concept [d]`` (L2-normalised), most similar caption first (ties in pool
        order), without those below ``min_similarity``."""
        similarity = self.vectors @ concept  # [rows]
        values, order = torch.sort(similarity, descending=True, stable=True)
        if min_similarity is not None:
            order = order[values >= min_similarity]
        return [self.positions[row] for row in order.tolist()]


class RetrievalGenerator:
    """The :class:`~dnd.backends.generators.ImageGenerator` door to a pool of real images (see the module docstring).

    ``name`` holds the pool's content fingerprint, the captioner's name, the text model and the similarity floor, so
    stored images are reused exactly when the same pool, captions and ranking would give them again, and are never
    mistaken for generated ones. The pool is captioned and embedded on the first :meth:`generate` call.
    """

    def __init__(
        self,
        config: SynthesizeConfig,
        pool: ProbeSet,
        pool_setting: str,
        captioner: Callable[[], Captioner],
        captioner_name: str,
        captions: ItemCache,
        texts: TextEmbedder,
        batch_size: int,
        num_workers: int,
        ranks: Ranks | None = None,
    ):
        """``captioner()`` gives the loaded captioner (called only if a pool image is missing from ``captions``);
        ``pool_setting`` names the config key that chose the pool, for errors; ``ranks`` are the job's processes
        (which part of the pool this one captions first)."""
        self.name = self.name_for(config, pool.fingerprint, captioner_name, texts.model)
        self.pool, self.pool_setting = pool, pool_setting
        self.min_similarity = config.min_similarity
        self._captioner, self._captioner_name = captioner, captioner_name
        self._captions, self._texts = captions, texts
        self._batch_size, self._num_workers = batch_size, num_workers
        self._ranks = ranks or Ranks()
        self._index: PoolIndex | None = None

    @staticmethod
    def name_for(config: SynthesizeConfig, pool_fingerprint: str, captioner: str, text_model: str) -> str:
        """``retrieval:pool=<fingerprint>:captioner=<name>:text=<model>:min_similarity=<floor>``, known without
        captioning or embedding anything."""
        floor = "none" if config.min_similarity is None else config.min_similarity
        return f"retrieval:pool={pool_fingerprint}:captioner={captioner}:text={text_model}:min_similarity={floor}"

    def generate(self, requests: list[GenerationRequest]) -> list[Image.Image | None]:
        """For each request, pool image number ``request.index`` of ``request.concept``'s ranking, or None when the
        ranking is shorter. Each answer depends only on its own concept and index, never on the batch."""
        index = self.index()
        concepts = list(dict.fromkeys(_concept_of(request) for request in requests))
        vectors = self._texts.embed(concepts)  # [concepts, d]
        rankings = {c: index.ranking(vector, self.min_similarity) for c, vector in zip(concepts, vectors, strict=True)}
        images: list[Image.Image | None] = []
        for request in requests:
            ranking = rankings[_concept_of(request)]
            images.append(self._load(ranking[request.index]) if request.index < len(ranking) else None)
        return images

    def index(self) -> PoolIndex:
        """The pool's captions and their embeddings, made on first use (captions from the cache where it has them)."""
        if self._index is None:
            self._index = self._build_index()
        return self._index

    def _build_index(self) -> PoolIndex:
        key_of: dict[int, str] = {}  # pool index -> caption key, for the readable images
        unreadable: dict[int, str] = {}
        captions: dict[str, str] = {}
        captioned = 0
        order = chunks(range(len(self.pool)), self._batch_size)
        # This process's share of the batches first (the other processes start on theirs), then the rest: each batch
        # is looked up in the cache when it is read, so a batch another process captioned meanwhile is not redone.
        first = self._ranks.rank * len(order) // self._ranks.world_size
        batches = image_loader(self.pool, unchanged, order[first:] + order[:first], self._num_workers)
        for batch in track(batches, "synthesize: caption the retrieval pool"):
            images: dict[str, Image.Image] = {}
            for position, image, error in batch:
                if image is None:
                    unreadable[position] = error or "unreadable"
                    continue
                key = key_of[position] = caption_key(self._captioner_name, pixel_hash(image))
                if key not in captions:
                    images.setdefault(key, image)
            found = caption_into_cache(self._captioner, images, images.__getitem__, self._captions, self._batch_size)
            captions.update(found.values)
            captioned += found.computed
        positions = sorted(key_of)  # rows in pool order, however the batches were visited
        keys = [key_of[position] for position in positions]
        if not positions:
            shown = "; ".join(f"{self.pool.ids[i]}: {reason}" for i, reason in list(unreadable.items())[:3])
            raise DnDError(f"{self.pool_setting}: none of the {len(self.pool)} pool images can be read ({shown})")
        texts = [captions[key] for key in keys]
        distinct = list(dict.fromkeys(texts))
        embedded = dict(zip(distinct, self._texts.embed(distinct), strict=True))
        vectors = torch.stack([embedded[text] for text in texts])  # [rows, d]
        return PoolIndex(positions, texts, vectors, dict(sorted(unreadable.items())), captioned)

    def _load(self, position: int) -> Image.Image:
        try:
            return self.pool.load(position)
        except UnreadableImage as exc:
            raise DnDError(
                f"{self.pool_setting}: pool image {self.pool.ids[position]} became unreadable during the run ({exc})"
            ) from None


def _concept_of(request: GenerationRequest) -> str:
    if request.concept is None or request.index is None:
        raise ValueError("a retrieval request needs its concept and image index (see plan_images)")
    return request.concept
