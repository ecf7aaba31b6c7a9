"""Image captioners (stage 3): BLIP / BLIP-2 through ``transformers``, or a vision LLM through ``openai``."""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import json
import re
from typing import TYPE_CHECKING, Any, Protocol

from PIL import Image

from dnd.backends.loading import load_model
from dnd.backends.openai_client import OpenAIClient, server_label
from dnd.errors import DnDError

if TYPE_CHECKING:
    import torch

    from dnd.config import CaptionConfig


#: How to get a captioning model where it cannot be loaded.
CAPTION_FIX = (
    "Set caption.model to a local folder holding the model (saved with save_pretrained), or run on a machine with "
    "Hugging Face hub access."
)


class Captioner(Protocol):
    """Captions images in batches.

    ``name`` identifies the model and every generation setting that changes the text, so cached captions are
    reused exactly when the same captioner would produce them again.
    """

    name: str

    def caption(self, images: list[Image.Image]) -> list[str]:
        """One caption per image, in order."""
        ...


class BlipCaptioner:
    """BLIP or BLIP-2 (chosen by the model's ``model_type``), loaded once in eval mode: fp16 on CUDA, fp32 on CPU.

    Captions are unconditional (no text prompt) and decoded deterministically (greedy or beam search).
    """

    #: ``model_type`` in the model's config → (model class, processor class) in ``transformers``.
    ARCHITECTURES = {
        "blip": ("BlipForConditionalGeneration", "BlipProcessor"),
        "blip-2": ("Blip2ForConditionalGeneration", "Blip2Processor"),
    }

    def __init__(self, config: CaptionConfig, device: torch.device | str = "cpu"):
        import torch
        import transformers

        self.name = self.name_for(config)
        self.device = torch.device(device)
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.generation = _generation_settings(config)
        load = functools.partial(load_model, "captioning model", config.model, CAPTION_FIX)
        model_type = load(lambda: transformers.AutoConfig.from_pretrained(config.model).model_type)
        if model_type not in self.ARCHITECTURES:
            raise DnDError(
                f"caption.model {config.model!r} is a {model_type!r} model; caption.backend=blip needs a BLIP or "
                f"BLIP-2 captioning model (e.g. Salesforce/blip-image-captioning-base)"
            )
        model_class, processor_class = (getattr(transformers, name) for name in self.ARCHITECTURES[model_type])
        self.processor = load(lambda: processor_class.from_pretrained(config.model))
        model = load(lambda: model_class.from_pretrained(config.model, dtype=self.dtype))
        self.model = model.to(self.device).eval()

    @staticmethod
    def name_for(config: CaptionConfig) -> str:
        """``blip:<model>:<generation settings>``, known before (and without) loading the model."""
        settings = ",".join(f"{key}={value}" for key, value in _generation_settings(config).items())
        return f"blip:{config.model}:{settings}"

    def caption(self, images: list[Image.Image]) -> list[str]:
        """Caption ``images`` (RGB, any size) in one batch: one stripped caption per image, in order."""
        import torch

        if not images:
            return []
        inputs = self.processor(images=images, return_tensors="pt").to(device=self.device, dtype=self.dtype)
        with torch.inference_mode():
            tokens = self.model.generate(**inputs, **self.generation)  # [B, prompt + generated tokens]
        return [text.strip() for text in self.processor.batch_decode(tokens, skip_special_tokens=True)]


def _generation_settings(config: CaptionConfig) -> dict[str, int]:
    return {
        "max_new_tokens": config.max_new_tokens,
        "min_new_tokens": config.min_new_tokens,
        "num_beams": config.num_beams,
    }


class OpenAIVisionCaptioner:
    """A vision-capable chat model on an OpenAI-compatible server: one request per batch, carrying every image.

    The model answers with a JSON list of captions, one per image in order. An answer that is not such a list is
    asked again once, with the reason; a batch that still has no usable answer (or whose request failed after its
    retries) raises :class:`DnDError`, and the captions of earlier batches stay cached.
    """

    SYSTEM = (
        "You caption images the way an image-captioning model does: for each image, one plain phrase of a few "
        "words naming what it shows (objects, parts of them, materials, textures, patterns, colours or scenes). "
        "Describe only what is visible."
    )
    REQUEST = (
        "Here are {count} images. Reply with only a JSON list of exactly {count} strings: the caption of each image, "
        "in the order the images are given."
    )
    RETRY = "That answer cannot be used: {reason}. Reply with only a JSON list of exactly {count} strings, in order."
    #: The first ask and one re-ask with the reason.
    ASKS = 2
    #: Tokens of JSON around each caption (quotes, comma, space), on top of ``max_new_tokens`` for its words.
    JSON_TOKENS_PER_CAPTION = 4

    def __init__(self, config: CaptionConfig, device: torch.device | str = "cpu"):
        self.name = self.name_for(config)
        self.max_new_tokens = config.max_new_tokens
        self._client = OpenAIClient(config.openai)  # the server does the work: ``device`` is not used

    @classmethod
    def name_for(cls, config: CaptionConfig) -> str:
        """``openai-vision:<model>[@host]:max_new_tokens=N,prompt=<hash of the prompt texts>``."""
        prompts = hashlib.sha256("\n".join([cls.SYSTEM, cls.REQUEST, cls.RETRY]).encode()).hexdigest()[:8]
        return f"openai-vision:{server_label(config.openai)}:max_new_tokens={config.max_new_tokens},prompt={prompts}"

    def caption(self, images: list[Image.Image]) -> list[str]:
        """Caption ``images`` (any size; sent as PNG) with one request: one stripped caption per image, in order."""
        if not images:
            return []
        count = len(images)
        content: list[dict[str, Any]] = [{"type": "text", "text": self.REQUEST.format(count=count)}]
        for number, image in enumerate(images, start=1):
            content += [
                {"type": "text", "text": f"Image {number}:"},
                {"type": "image_url", "image_url": {"url": _png_data_url(image)}},
            ]
        messages = [{"role": "system", "content": self.SYSTEM}, {"role": "user", "content": content}]
        for _ in range(self.ASKS):
            reply = self._client.complete(
                {
                    "messages": messages,
                    "temperature": 0.0,  # as deterministic as the server allows, like BLIP's greedy decoding
                    "max_tokens": (self.max_new_tokens + self.JSON_TOKENS_PER_CAPTION) * count,
                }
            )
            if reply.error is not None:
                raise DnDError(f"{self.name} could not caption a batch of {count} images: {reply.error}")
            try:
                return _caption_list(reply.text or "", count)
            except ValueError as exc:
                reason = str(exc)
            messages += [
                {"role": "assistant", "content": reply.text or ""},
                {"role": "user", "content": self.RETRY.format(reason=reason, count=count)},
            ]
        raise DnDError(
            f"{self.name} gave no usable captions for a batch of {count} images, even when asked again ({reason}). "
            f"Captions made so far are cached: run again, or lower caption.batch_size."
        )


def _png_data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _caption_list(answer: str, count: int) -> list[str]:
    """The ``count`` captions in a JSON-list ``answer`` (a Markdown code fence around it is allowed).

    Raises ValueError with the reason, phrased to be sent back to the model.
    """
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", answer.strip(), flags=re.DOTALL)
    try:
        captions = json.loads(fenced.group(1) if fenced else answer)
    except json.JSONDecodeError:
        raise ValueError("it is not valid JSON") from None
    if not isinstance(captions, list) or not all(isinstance(c, str) and c.strip() for c in captions):
        raise ValueError("it is not a JSON list of non-empty strings")
    if len(captions) != count:
        raise ValueError(f"it has {len(captions)} captions for {count} images")
    return [caption.strip() for caption in captions]


def captioner_name(config: CaptionConfig) -> str:
    """The ``name`` of the captioner ``config`` selects, computed without loading it (for cache look-ups)."""
    return _captioner_type(config).name_for(config)


def build_captioner(config: CaptionConfig, device: torch.device | str) -> Captioner:
    """Load the captioner ``config.backend`` selects on ``device``."""
    return _captioner_type(config)(config, device)


def _captioner_type(config: CaptionConfig) -> type[BlipCaptioner | OpenAIVisionCaptioner]:
    """The class of ``caption.backend`` (the config allows no other value)."""
    return {"blip": BlipCaptioner, "openai": OpenAIVisionCaptioner}[config.backend]
