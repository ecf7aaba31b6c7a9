"""The tests' one colour world: model doubles that see an image as its colour, so what each should answer is known.

An image's colour is its dominant channel (red, green or blue, :func:`dominant_colour`); a text's is the first colour
word it names (:func:`concept_colour`). The captioner names an image's colour, the LLM answers with the colour its
question names most, the generator paints, and the CLIP double embeds an image as its mean colour and a text as its
colour's RGB. ``ChannelMeans`` is a target network whose neurons are an image's mean red, green and blue.

:func:`dummy_components` makes fresh doubles for every model role of :class:`Backends` (after diffusers'
``get_dummy_components()``); :func:`dummy_backends` hands them to a ``Backends`` with a test's overrides.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from dnd.backends.container import Backends
from dnd.backends.generators import GenerationRequest
from dnd.backends.llms import ChatReply, ChatRequest
from dnd.backends.target_network import TargetNetwork
from dnd.config import RunConfig
from dnd.exemplars import pixel_hash

#: The colour words in channel order, each with the RGB that paints it (and that embeds it, for the CLIP double).
COLOURS = {"red": (230, 40, 40), "green": (40, 220, 60), "blue": (50, 60, 230)}
_COLOUR_WORD = re.compile(r"\b(red|green|blue)\b")


def solid(colour: tuple[int, int, int], size: int = 8) -> Image.Image:
    """A ``size`` × ``size`` image of one colour."""
    return Image.new("RGB", (size, size), colour)


def dominant_colour(image: Image.Image) -> str:
    """The colour word of ``image``'s channel with the highest mean."""
    means = np.asarray(image.convert("RGB"), dtype=np.float32).mean(axis=(0, 1))
    return list(COLOURS)[int(means.argmax())]


def concept_colour(text: str) -> str:
    """The first colour word in ``text``; red when it names none (so every text has a colour)."""
    found = _COLOUR_WORD.findall(text)
    return found[0] if found else "red"


class ColourCaptioner:
    """Captions an image by its dominant colour: ``captions`` is a template (``"a photo of {colour} noise"``) or each
    colour's caption. Counts the images it captions and keeps, per call, each image's top-left pixel (the colour of
    a solid image)."""

    def __init__(self, captions: str | Mapping[str, str] = "{colour}", name: str = "fake:colour") -> None:
        self.captions, self.name = captions, name
        self.captioned = 0
        self.calls: list[list[tuple[int, int, int]]] = []

    def caption(self, images: list[Image.Image]) -> list[str]:
        self.captioned += len(images)
        self.calls.append([image.getpixel((0, 0)) for image in images])
        return [self._caption(dominant_colour(image)) for image in images]

    def _caption(self, colour: str) -> str:
        return self.captions.format(colour=colour) if isinstance(self.captions, str) else self.captions[colour]


class ColourLLM:
    """Answers a caption-shortening request (``Caption: …``) with ``<colour> shapes`` and a summary request with the
    colour its descriptions name most: ``<colour> things`` for even samples, ``<colour> blobs`` for odd ones (grey
    where none is named). Every reply counts 50 prompt and 3 completion tokens."""

    name = "colour-llm"

    def chat(self, requests: list[ChatRequest]) -> list[ChatReply]:
        return [ChatReply(self._answer(request), prompt_tokens=50, completion_tokens=3) for request in requests]

    def _answer(self, request: ChatRequest) -> str:
        question = self.question(request)
        colour = self.colour(question)
        if question.startswith("Caption:"):
            return f"{colour} shapes"
        return f"{colour} {'things' if request.sample % 2 == 0 else 'blobs'}"

    @staticmethod
    def question(request: ChatRequest) -> str:
        """The request's question: the last user turn opening as the prompt files' questions do (re-asks come after
        it), else the last user turn."""
        asked = [text for role, text in request.messages if role == "user"]
        return next((text for text in reversed(asked) if text.startswith(("Caption:", "Descriptions:"))), asked[-1])

    @staticmethod
    def colour(question: str) -> str:
        """The colour word ``question`` names most; grey where it names none."""
        words = Counter(_COLOUR_WORD.findall(question))
        return words.most_common(1)[0][0] if words else "grey"


def hashed_colour(request: GenerationRequest, size: int) -> Image.Image:
    """A solid image whose colour is a hash of the request's prompt and seed: equal requests, equal images."""
    digest = hashlib.sha256(f"{request.prompt}|{request.seed}".encode()).digest()
    return solid((digest[0], digest[1], digest[2]), size)


class PaintingGenerator:
    """Paints each request with ``paint(request, size)`` (by default :func:`hashed_colour`); keeps every call.

    ``fail_at_call`` simulates a kill during that call.
    """

    def __init__(
        self,
        paint: Callable[[GenerationRequest, int], Image.Image] = hashed_colour,
        size: int = 4,
        name: str = "fake:solid-colour",
        fail_at_call: int | None = None,
    ) -> None:
        self.paint, self.size, self.name, self.fail_at_call = paint, size, name, fail_at_call
        self.calls: list[list[GenerationRequest]] = []

    def generate(self, requests: list[GenerationRequest]) -> list[Image.Image]:
        self.calls.append(list(requests))
        if len(self.calls) == self.fail_at_call:
            raise KeyboardInterrupt("simulated kill")
        return [self.paint(request, self.size) for request in requests]

    @property
    def requests(self) -> list[GenerationRequest]:
        return [request for call in self.calls for request in call]


class ColourClip:
    """A CLIP double: an image's embedding is its mean colour plus ``offset`` (1 keeps black from being a zero
    vector), a text's is its vector in ``texts`` or else its :func:`concept_colour`'s RGB; both unit length.
    Keeps the pixel hash of every image and every text it embeds, and counts calls."""

    name = "clip"
    model = "colour-clip"

    def __init__(self, texts: Mapping[str, Sequence[float]] | None = None, offset: float = 0.0) -> None:
        self.table, self.offset = texts, offset
        self.images: list[str] = []
        self.texts: list[str] = []
        self.calls = 0

    def embed_images(self, images: list[Image.Image]) -> torch.Tensor:
        self.calls += 1
        self.images.extend(pixel_hash(image) for image in images)
        means = np.stack([np.asarray(image, dtype=np.float32).mean(axis=(0, 1)) + self.offset for image in images])
        return torch.nn.functional.normalize(torch.tensor(means), dim=-1)

    def embed(self, texts: list[str]) -> torch.Tensor:
        self.calls += 1
        self.texts.extend(texts)
        vectors = [self.table[text] if self.table is not None else COLOURS[concept_colour(text)] for text in texts]
        return torch.nn.functional.normalize(torch.tensor(vectors, dtype=torch.float32), dim=-1)


class ChannelMeans(nn.Module):
    """``features`` = per-image mean of each colour channel, ``[B, 3]``: neuron 0 red, 1 green, 2 blue.
    ``forward_calls`` counts forward passes."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Identity()
        self.forward_calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.forward_calls += 1
        return self.features(x.mean(dim=(2, 3)))


def dummy_components() -> dict[str, object]:
    """Fresh colour-world doubles for the model roles of :class:`Backends` a description run uses."""
    return {
        "captioner": ColourCaptioner(),
        "concept_llm": ColourLLM(),
        "generator": PaintingGenerator(),
        "clip": ColourClip(),
    }


def dummy_backends(
    config: RunConfig, target: TargetNetwork, backends: type[Backends] = Backends, **overrides: object
) -> Backends:
    """``backends(config, target=target, ...)`` with :func:`dummy_components` in every role: an override replaces a
    double (``clip=ColourClip(texts=...)``), and None leaves its role to the config (built on first use)."""
    return backends(config, target=target, **(dummy_components() | overrides))


def forbidding(role: str, reason: str) -> type[Backends]:
    """A :class:`Backends` whose ``role`` model (a property name: ``concept_llm``, ``generator``) fails the test when
    it is built, "although ``reason``"; its identity, and so the cache keys, stay what the config says."""

    def refuse(_backends: Backends) -> object:
        raise AssertionError(f"the {role.replace('_', ' ')} was built although {reason}")

    return type(f"Forbidding_{role}", (Backends,), {role: property(refuse)})
