"""Image captioners (stage 3): BLIP / BLIP-2 through ``transformers``, a vision LLM through ``openai``, or the class
names of an ImageNet classifier (an offline stand-in).

Captions are cached per image in the item cache :data:`CAPTION_CACHE` under :func:`caption_key`, by stage 3 and by
the retrieval generator alike, so an image is captioned once per captioner.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import io
import json
import re
from typing import TYPE_CHECKING, Any, Protocol

from PIL import Image

from dnd.asking import Checked, Conversation, ask_until_usable
from dnd.backends.loading import load_model
from dnd.backends.openai_client import OpenAIClient, server_label
from dnd.batching import BatchFunction, CachedValues, cached_map
from dnd.errors import DnDError
from dnd.halving import fitting, joined_lists
from dnd.prompts import ChatTemplate, read_prompt
from dnd.store import content_key

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from pathlib import Path

    import torch

    from dnd.backends.chat import ChatReply
    from dnd.backends.classifier import ImageClassifier
    from dnd.config import CaptionConfig, ClassifierConfig
    from dnd.distributed import Ranks
    from dnd.store import ItemCache

#: The item-cache namespace of captions (see :class:`dnd.store.ItemCache`).
CAPTION_CACHE = "captions"


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


def caption_key(captioner: str, pixels: str) -> str:
    """The caption cache key of an image for the captioner named ``captioner``: ``pixels`` is the image's
    :func:`dnd.exemplars.pixel_hash`, so the key follows the pixels, not the file they came from."""
    return content_key({"captioner": captioner, "image": pixels})


def caption_into_cache(
    captioner: Callable[[], Captioner],
    keys: Iterable[str],
    image: Callable[[str], Image.Image],
    cache: ItemCache,
    batch_size: int,
    description: str | None = None,
    ranks: Ranks | None = None,
) -> CachedValues[str]:
    """The caption of every caption key in ``keys`` (:func:`caption_key`): from ``cache``, or captioned now.

    The missing ones are captioned ``batch_size`` images at a time (halved where they do not fit the device) by the
    captioner ``captioner()`` gives, loaded only if an image is missing; ``image(key)`` gives a missing image's
    pixels, and each caption is stored under its key the moment it exists. ``description`` and ``ranks`` are
    :func:`dnd.batching.cached_map`'s. Stage 3, the retrieval pool and the offline caption space all caption through
    here. Raises ``RuntimeError`` when the captioner returns another number of captions than it was given images.
    """

    def load() -> BatchFunction[Image.Image, str]:
        loaded = captioner()
        run = functools.partial(fitting("captioner").run, loaded.caption, join=joined_lists)
        return BatchFunction(run, f"captioner {loaded.name}", "captions", "images")

    return cached_map(cache, keys, image, load, batch_size, description, ranks)


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

    The prompt is :data:`PROMPT_FILE`'s chat template (:func:`vision_prompt`), the images following the text of its
    last user turn. The model answers with a JSON list of captions, one per image in order. An answer that is not
    such a list is asked again once, with the reason; a batch that still has no usable answer (or whose request
    failed after its retries) raises :class:`DnDError`, and the captions of earlier batches stay cached.
    """

    #: The prompt file, in ``prompts_dir``.
    PROMPT_FILE = "caption_vision.md"
    #: The first ask and one re-ask with the reason.
    ASKS = 2
    #: Tokens of JSON around each caption (quotes, comma, space), on top of ``max_new_tokens`` for its words.
    JSON_TOKENS_PER_CAPTION = 4

    def __init__(self, config: CaptionConfig, prompt: ChatTemplate):
        self.name = self.name_for(config, prompt)
        self.max_new_tokens = config.max_new_tokens
        self.prompt = prompt
        self._client = OpenAIClient(config.openai)  # the server does the work: no device is used

    @staticmethod
    def name_for(config: CaptionConfig, prompt: ChatTemplate) -> str:
        """``openai-vision:<model>[@host]:max_new_tokens=N,prompt=<hash of the prompt's templates>``."""
        digest = hashlib.sha256(prompt.text.encode()).hexdigest()[:8]
        return f"openai-vision:{server_label(config.openai)}:max_new_tokens={config.max_new_tokens},prompt={digest}"

    def caption(self, images: list[Image.Image]) -> list[str]:
        """Caption ``images`` (any size; sent as PNG) with one request: one stripped caption per image, in order."""
        if not images:
            return []
        count = len(images)
        *earlier, (role, question) = self.prompt.messages(count=count)
        content: list[dict[str, Any]] = [{"type": "text", "text": question}]
        for number, image in enumerate(images, start=1):
            content += [
                {"type": "text", "text": f"Image {number}:"},
                {"type": "image_url", "image_url": {"url": _png_data_url(image)}},
            ]
        [answer] = ask_until_usable(
            [(*earlier, (role, content))],
            lambda _, conversations: [("", self._complete(conversations[0], count))],
            lambda _, text: _checked_caption_list(text, count),
            lambda reason: self.prompt.reask(reason=reason, count=count),
            self.ASKS,
        )
        if answer.error is not None:
            raise DnDError(f"{self.name} could not caption a batch of {count} images: {answer.error}")
        if answer.value is None:
            raise DnDError(
                f"{self.name} gave no usable captions for a batch of {count} images, even when asked again "
                f"({answer.reason}). Captions made so far are cached: run again, or lower caption.batch_size."
            )
        return answer.value

    def _complete(self, conversation: Conversation, count: int) -> ChatReply:
        """One request of ``conversation``; an answer without text counts as an empty (unusable) one."""
        reply = self._client.complete(
            {
                "messages": [{"role": role, "content": content} for role, content in conversation],
                "temperature": 0.0,  # as deterministic as the server allows, like BLIP's greedy decoding
                "max_tokens": (self.max_new_tokens + self.JSON_TOKENS_PER_CAPTION) * count,
            }
        )
        return reply if reply.error is not None else dataclasses.replace(reply, text=reply.text or "")


def vision_prompt(prompts_dir: Path) -> ChatTemplate:
    """The vision captioner's chat template, read from ``prompts_dir``: turns with ``{count}``, a retry turn with
    ``{reason}`` and ``{count}``."""
    name = OpenAIVisionCaptioner.PROMPT_FILE
    return ChatTemplate.parse(name, read_prompt(prompts_dir, name), "count", ("count",))


def _png_data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _checked_caption_list(answer: str, count: int) -> Checked:
    """:func:`_caption_list` as a check of :func:`~dnd.asking.ask_until_usable`."""
    try:
        return _caption_list(answer, count), None
    except ValueError as exc:
        return None, ("caption_list", str(exc))


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


class ClassifierCaptioner:
    """An ImageNet classifier names what each image shows with its top classes: "goldfish or tench".

    Classes are taken in order of probability until their probabilities add up to ``caption.classifier_mass``, at
    most ``caption.max_classes`` of them (always at least one), and joined with " or ". Names are torchvision's
    ImageNet category names as they are (lower or upper case, e.g. "goldfish", "German shepherd"). This is the
    method's ablation with a fixed concept set instead of a generative captioner (method.md, section 5), with the
    classifier's 1,000 classes as the concept set.
    """

    SEPARATOR = " or "

    def __init__(self, config: CaptionConfig, classifier: ImageClassifier):
        self.name = self.name_for(config)
        self.mass, self.max_classes = config.classifier_mass, config.max_classes
        self.classifier = classifier

    @staticmethod
    def name_for(config: CaptionConfig) -> str:
        """``classifier:<network>:mass=M,max_classes=K``, known before (and without) loading the network."""
        from dnd.backends.classifier import classifier_name

        settings = f"mass={config.classifier_mass},max_classes={config.max_classes}"
        return f"classifier:{classifier_name(config.classifier)}:{settings}"

    def caption(self, images: list[Image.Image]) -> list[str]:
        """Caption ``images`` (RGB, any size) in one batch: one caption per image, in order."""
        probabilities, _features = self.classifier.run(images)  # [B, n_classes]
        return [self.SEPARATOR.join(self._top_classes(row)) for row in probabilities]

    def _top_classes(self, probabilities: torch.Tensor) -> list[str]:
        """Names of the most probable classes of one image, until their mass reaches the configured share."""
        import torch

        values, order = torch.sort(probabilities, descending=True, stable=True)
        names, mass = [], 0.0
        for value, index in zip(values.tolist()[: self.max_classes], order.tolist(), strict=False):
            names.append(self.classifier.categories[index])
            mass += value
            if mass >= self.mass:
                break
        return names


def captioner_name(config: CaptionConfig, *, prompts_dir: Path) -> str:
    """The ``name`` of the captioner ``config`` selects, computed without loading it (for cache look-ups); the
    vision captioner's depends on its prompt in ``prompts_dir``."""
    if config.backend == "openai":
        return OpenAIVisionCaptioner.name_for(config, vision_prompt(prompts_dir))
    return {"blip": BlipCaptioner, "classifier": ClassifierCaptioner}[config.backend].name_for(config)


def build_captioner(
    config: CaptionConfig,
    device: torch.device | str,
    classifier: Callable[[ClassifierConfig], ImageClassifier] | None = None,
    *,
    prompts_dir: Path,
) -> Captioner:
    """Load the captioner ``config.backend`` selects on ``device``; ``classifier(config)`` gives the loaded
    classifier of backend classifier (so one classifier can serve several roles), else it is loaded here; the
    vision captioner reads its prompt from ``prompts_dir``."""
    if config.backend == "classifier":
        from dnd.backends.classifier import ImageClassifier

        network = classifier(config.classifier) if classifier else ImageClassifier(config.classifier, device)
        return ClassifierCaptioner(config, network)
    if config.backend == "openai":
        return OpenAIVisionCaptioner(config, vision_prompt(prompts_dir))
    return BlipCaptioner(config, device)
