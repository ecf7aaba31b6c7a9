"""Image captioners (stage 3): BLIP / BLIP-2 through ``transformers``, or a vision LLM through ``openai``."""

from __future__ import annotations

from typing import Protocol

from PIL import Image


class Captioner(Protocol):
    """Captions images in batches.

    ``name`` identifies the model and every generation setting that changes the text, so cached captions are
    reused exactly when the same captioner would produce them again.
    """

    name: str

    def caption(self, images: list[Image.Image]) -> list[str]:
        """One caption per image, in order."""
        ...
