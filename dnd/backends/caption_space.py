"""An offline stand-in for an image-text model (CLIP, SigLIP): an image is embedded as its caption's sentence embedding.

Where no image-text model can be loaded, ``text · image`` is the MiniLM cosine similarity between the text and the
image's caption by the run's captioner (offline: an ImageNet classifier's class names, "goldfish or tench"). Captions
come from, and go to, the item cache stage 3 and the retrieval pool share (:data:`CAPTION_CACHE`, keyed by captioner
and pixels), so the probing images a run's retrieval pool captioned are not captioned again. Used by the simulation
evaluation as its simulator and by ``dnd clip-dissect`` where CLIP cannot be had.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from dnd.backends.captioners import Captioner, caption_into_cache, caption_key
from dnd.exemplars import pixel_hash

if TYPE_CHECKING:
    from PIL import Image

    from dnd.backends.embedders import TextEmbedder
    from dnd.store import ItemCache


class CaptionSpace:
    """Texts embedded by ``texts``; images by ``texts`` applied to their captions (see the module docstring).

    ``model`` names the captioner and the text model, so cached image embeddings follow both. ``captioner()`` gives
    the loaded captioner and is called only when an image's caption is not in ``captions``; ``captioned`` counts the
    images this object had to caption.
    """

    name = "captions"

    def __init__(
        self, captioner: Callable[[], Captioner], captioner_name: str, captions: ItemCache, texts: TextEmbedder
    ):
        self.model = self.model_for(captioner_name, texts.model)
        self._captioner, self._captioner_name = captioner, captioner_name
        self._captions, self._texts = captions, texts
        self.captioned = 0

    @staticmethod
    def model_for(captioner_name: str, text_model: str) -> str:
        return f"captions:{captioner_name}+text={text_model}"

    def embed(self, texts: list[str]) -> torch.Tensor:
        """``[len(texts), d]``, rows L2-normalised (the text model's own embeddings)."""
        return self._texts.embed(texts)

    def captions(self, images: list[Image.Image]) -> list[str]:
        """Each image's caption, from the cache or captioned now (in one batch) and cached."""
        keys = [caption_key(self._captioner_name, pixel_hash(image)) for image in images]
        image_of = dict(zip(keys, images, strict=True))
        # One batch: the caller chose how many images to embed at a time.
        found = caption_into_cache(self._captioner, keys, image_of.__getitem__, self._captions, max(len(images), 1))
        self.captioned += found.computed
        return [str(found.values[key]) for key in keys]

    def embed_images(self, images: list[Image.Image]) -> torch.Tensor:
        """``[len(images), d]``: the text embedding of each image's caption, rows L2-normalised."""
        return self._texts.embed(self.captions(images))
