"""A small real run for report tests: the six stage modules through the pipeline, with fast stand-in backends.

The probing set is 16 images of 32 × 32 pixels, each a dark background with one coloured square somewhere, so a
neuron's map has a place to fire and stage 2 finds crops. The target network's layer ``pool`` has four neurons: red,
green, blue and red + green (4 × 4 average pooling, then a 1 × 1 convolution: 8 × 8 maps). The captioner names an
image's strongest colour; the LLM turns captions into concepts by their colour word, calls the red neuron's concept
``<script>alert(1)</script>`` and never gives the blue neuron a valid answer (so it fails, with the reason); the
generator paints a concept's colour; the CLIP double embeds an image as its mean colour. The doubles are the colour
world's (``tests/fakes.py``), with the report's twists here: the LLM's script label and failures, the painter's
noise.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from dnd.backends.generators import GenerationRequest
from dnd.backends.llms import ChatRequest
from dnd.backends.target_network import TargetNetwork
from dnd.pipeline import Pipeline
from tests.fakes import COLOURS, ColourCaptioner, ColourLLM, PaintingGenerator, concept_colour, dummy_backends
from tests.helpers import make_config, to_tensor

ROOT = Path(__file__).resolve().parents[2]
LAYER = "conv"
SIZE = 32
IMAGES = 16
EVIL = "<script>alert(1)</script>"
#: A caption's markup that must stay text: were it parsed, the page would hold an <img> pointing at no file.
CAPTION_MARKUP = "<img src=x onerror=alert(2)>"
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


class ReportLLM(ColourLLM):
    """The colour LLM, but red's first sample is :data:`EVIL` (it must stay text on the page) and blue's summaries
    always hold a comma (always rejected, so blue's neuron fails, with the reason)."""

    def _answer(self, request: ChatRequest) -> str:
        question = self.question(request)
        if not question.startswith("Caption:"):
            colour = self.colour(question)
            if colour == "blue":
                return "blue, and more"
            if colour == "red" and request.sample % 2 == 0:
                return EVIL
        return super()._answer(request)


def paint_concept(request: GenerationRequest, size: int) -> Image.Image:
    """The concept's colour (:data:`EVIL` stands for red) at a random strength, with noise."""
    rng = np.random.default_rng(request.seed)
    base = np.array(COLOURS[concept_colour(request.prompt)], dtype=np.float32)
    # The script label's images are the brightest, so they rank first and it becomes Label 1.
    strength = 1.0 if EVIL in request.prompt else rng.uniform(0.5, 0.8)
    pixels = np.clip(base * strength + rng.normal(0, 12, (size, size, 3)), 0, 255)
    return Image.fromarray(pixels.astype(np.uint8))


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
    backends = dummy_backends(
        config,
        TargetNetwork("colour-net", network, to_tensor),
        captioner=ColourCaptioner(f"a photo of {{colour}} shapes {CAPTION_MARKUP}", name="colour-words"),
        concept_llm=llm or ReportLLM(),
        generator=PaintingGenerator(paint_concept, size, name="painter"),
    )
    run = SmallRun(Pipeline(config, backends), prompts, network)
    if describe:
        run.describe()
    return run
