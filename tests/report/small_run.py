"""A small real run for report tests: the six stage modules through the pipeline, with fast stand-in backends.

The probing set is 16 images of 32 × 32 pixels, each a dark background with one coloured square somewhere, so a
neuron's map has a place to fire and stage 2 finds crops. The target network's layer ``pool`` has four neurons: red,
green, blue and red + green (4 × 4 average pooling, then a 1 × 1 convolution: 8 × 8 maps). The captioner names an
image's strongest colour; the LLM turns captions into concepts by their colour word, calls the red neuron's concept
``<script>alert(1)</script>`` and never gives the blue neuron a valid answer (so it fails, with the reason); the
generator paints a concept's colour; the CLIP double embeds an image as its mean colour.
"""

from __future__ import annotations

import re
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from dnd.backends.container import Backends
from dnd.backends.generators import GenerationRequest
from dnd.backends.llms import ChatReply, ChatRequest
from dnd.backends.target_network import TargetNetwork
from dnd.pipeline import Pipeline
from tests.helpers import make_config, to_tensor

ROOT = Path(__file__).resolve().parents[2]
LAYER = "conv"
SIZE = 32
IMAGES = 16
EVIL = "<script>alert(1)</script>"
#: A caption's markup that must stay text: were it parsed, the page would hold an <img> pointing at no file.
CAPTION_MARKUP = "<img src=x onerror=alert(2)>"
COLOURS = {"red": (230, 40, 40), "green": (40, 220, 60), "blue": (50, 60, 230)}
OVERRIDES = (
    "record.top_k=4",
    "crop.exemplars=4",
    "summarize.n_summaries=2",
    "synthesize.images_per_concept=2",
    "score.top_pool=3",
    "stop_after=null",
)


class ColourNet(nn.Module):
    """``pool``: 4 × 4 average of the pixels; ``conv`` (1 × 1): channels red, green, blue, red + green, then
    (``channels`` > 4) random colour contrasts (normal weights), each preferring its own hue; ``head``: a read-out."""

    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(4)
        self.conv = nn.Conv2d(3, channels, kernel_size=1, bias=False)
        self.head = nn.Linear(channels, 2)
        with torch.no_grad():
            weights = torch.randn(channels, 3, generator=torch.Generator().manual_seed(0))
            weights[:4] = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.5, 0.5, 0]])
            self.conv.weight.copy_(weights.view(channels, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(self.pool(x)).mean(dim=(2, 3)))


def write_probe(folder: Path, images: int = IMAGES, size: int = SIZE, varied: bool = False, seed: int = 0) -> None:
    """``images`` PNGs of ``size`` pixels: a dark noisy background and one square at a random place, of pure red,
    green or blue in turn, or (``varied``) of a random colour, so that neurons mixing colours differently have
    different top images."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = list(COLOURS)
    for i in range(images):
        pixels = rng.integers(0, 40, (size, size, 3)).astype(np.uint8)
        side = int(rng.integers(size // 4, size // 2))
        x, y = (int(v) for v in rng.integers(0, size - side, 2))
        pixels[y : y + side, x : x + side] = rng.integers(40, 256, 3) if varied else COLOURS[names[i % 3]]
        Image.fromarray(pixels).save(folder / f"img{i:03d}.png")


def strongest_colour(image: Image.Image) -> str:
    means = np.asarray(image.convert("RGB"), dtype=np.float32).mean(axis=(0, 1))
    return list(COLOURS)[int(means.argmax())]


class ColourCaptioner:
    name = "colour-words"

    def __init__(self) -> None:
        self.images = 0

    def caption(self, images: list[Image.Image]) -> list[str]:
        self.images += len(images)
        return [f"a photo of {strongest_colour(image)} shapes {CAPTION_MARKUP}" for image in images]


class ColourLLM:
    """Answers a caption-shortening request with ``<colour> shapes`` and a summary request by the captions' most
    frequent colour: ``<colour> things`` or ``<colour> blobs`` by sample, :data:`EVIL` for red's first sample and an
    answer with a comma (always rejected) for blue."""

    name = "colour-llm"

    def chat(self, requests: list[ChatRequest]) -> list[ChatReply]:
        return [ChatReply(self._answer(request), prompt_tokens=50, completion_tokens=3) for request in requests]

    def _answer(self, request: ChatRequest) -> str:
        asked = [text for role, text in request.messages if role == "user"]
        # The question is the last turn opening as the prompt files' questions do; re-asks come after it.
        question = next((text for text in reversed(asked) if text.startswith(("Caption:", "Descriptions:"))), asked[-1])
        words = Counter(re.findall(r"\b(red|green|blue)\b", question))
        colour = words.most_common(1)[0][0] if words else "grey"
        if question.startswith("Caption:"):
            return f"{colour} shapes"
        if colour == "blue":
            return "blue, and more"
        if colour == "red" and request.sample % 2 == 0:
            return EVIL
        return f"{colour} {'things' if request.sample % 2 == 0 else 'blobs'}"


def concept_colour(text: str) -> str:
    found = re.findall(r"\b(red|green|blue)\b", text)
    return found[0] if found else "red"  # the script label stands for red


class PaintingGenerator:
    name = "painter"

    def __init__(self, size: int = SIZE) -> None:
        self.size = size
        self.requests: list[GenerationRequest] = []

    def generate(self, requests: list[GenerationRequest]) -> list[Image.Image]:
        self.requests.extend(requests)
        images = []
        for request in requests:
            rng = np.random.default_rng(request.seed)
            base = np.array(COLOURS[concept_colour(request.prompt)], dtype=np.float32)
            # The script label's images are the brightest, so they rank first and it becomes Label 1.
            strength = 1.0 if EVIL in request.prompt else rng.uniform(0.5, 0.8)
            pixels = np.clip(base * strength + rng.normal(0, 12, (self.size, self.size, 3)), 0, 255)
            images.append(Image.fromarray(pixels.astype(np.uint8)))
        return images


class ColourClip:
    name = "clip"
    model = "colour-clip"

    def embed_images(self, images: list[Image.Image]) -> torch.Tensor:
        means = [np.asarray(image, dtype=np.float32).mean(axis=(0, 1)) for image in images]
        return torch.nn.functional.normalize(torch.tensor(np.stack(means)), dim=-1)

    def embed(self, texts: list[str]) -> torch.Tensor:
        vectors = [torch.tensor(COLOURS[concept_colour(text)], dtype=torch.float32) for text in texts]
        return torch.nn.functional.normalize(torch.stack(vectors), dim=-1)


@dataclass
class SmallRun:
    """A finished small run: its pipeline (with the stand-in backends), prompts folder and target network."""

    pipeline: Pipeline
    prompts: Path
    network: ColourNet

    def describe(self) -> None:
        self.pipeline.describe([LAYER])

    @property
    def layer_dir(self) -> Path:
        return self.pipeline.store.root / LAYER


def small_run(
    tmp_path: Path,
    *overrides: str,
    describe: bool = True,
    channels: int = 4,
    images: int = IMAGES,
    size: int = SIZE,
    varied: bool = False,
    llm: ColourLLM | None = None,
) -> SmallRun:
    """Build (and by default run) the small run under ``tmp_path``; prompts are a copy, free to edit.

    ``channels``, ``images``, ``size``, ``varied`` and ``llm`` make larger runs for benchmarks
    (``benchmarks/bench_report.py``).
    """
    write_probe(tmp_path / "probe", images, size, varied)
    prompts = tmp_path / "prompts"
    if not prompts.is_dir():
        shutil.copytree(ROOT / "prompts", prompts)
    config = make_config(tmp_path, tmp_path / "probe", *OVERRIDES, f"prompts_dir={prompts}", *overrides)
    network = ColourNet(channels)
    backends = Backends(
        config,
        target=TargetNetwork("colour-net", network, to_tensor),
        captioner=ColourCaptioner(),
        concept_llm=llm or ColourLLM(),
        generator=PaintingGenerator(size),
        clip=ColourClip(),
    )
    run = SmallRun(Pipeline(config, backends), prompts, network)
    if describe:
        run.describe()
    return run
