"""The pipeline: which stages and neurons are due, keys once per run, stand-in stages, and ``--force`` on a subset of
neurons, which recomputes those neurons and keeps every other finished one.

The acceptance test runs all six real stages on a 16-channel network with fast doubles for the captioner, the LLM,
the generator and CLIP, each of which logs what it is asked; "only neurons 0-3 were recomputed" is checked by
comparing that log with the one of a run that computes neurons 0-3 alone from scratch.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from dnd import layout
from dnd.activations import load_activations
from dnd.artifacts import Concepts, NeuronConcepts, TopImages
from dnd.backends.chat import ChatReply, ChatRequest
from dnd.backends.container import Backends
from dnd.backends.target_network import TargetNetwork
from dnd.errors import DnDError
from dnd.exemplars import pixel_hash
from dnd.pipeline import Pipeline
from dnd.stages import record
from dnd.stages.base import StageSpec
from dnd.stages.registry import STAGE_NAMES
from tests.helpers import make_config, to_tensor, write_images

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ROOT / "prompts"
LAYER = "conv"
NEURONS = 16
FORCED = [0, 1, 2, 3]
OVERRIDES = (
    "record.top_k=3",
    "crop.exemplars=3",
    "crop.batch_size=8",
    "summarize.n_summaries=2",
    "summarize.simplify_captions=false",  # summaries only: the LLM double's answers can never copy a caption
    "synthesize.images_per_concept=2",
    "synthesize.batch_size=4",
    "score.batch_size=8",
)


class SixteenFilters(nn.Module):
    """A seeded 1×1 conv with 16 output channels (layer ``conv``, maps ``[16, H, W]``) and a linear head.

    ``images`` counts the images of every forward pass, so tests can tell recomputed work from reused work.
    """

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, NEURONS, kernel_size=1)
        self.head = nn.Linear(NEURONS, 2)
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
        self.images = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images += len(x)
        return self.head(self.conv(x).relu().mean(dim=(2, 3)))


class Log:
    """What the backend doubles were asked, in order: one ``(backend, input)`` line per image, request or text."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def add(self, backend: str, item: str) -> None:
        self.lines.append((backend, item))

    def since(self, start: int) -> Counter[tuple[str, str]]:
        return Counter(self.lines[start:])


class LoggedCaptioner:
    """Captions an image by its brightest channel; logs the pixel hash of every image it captions."""

    name = "double:brightest-channel"

    def __init__(self, log: Log) -> None:
        self.log = log

    def caption(self, images: list[Image.Image]) -> list[str]:
        captions = []
        for image in images:
            self.log.add("captioner", pixel_hash(image))
            means = np.asarray(image, dtype=np.float32).mean(axis=(0, 1))
            captions.append(
                f"a photo of {('red', 'green', 'blue')[int(means.argmax())]} light {int(means.max()) // 64}"
            )
        return captions


class LoggedLLM:
    """Answers "motif <n>" (``n`` from a hash of the request: valid, stable, never a copy of a caption); logs a hash
    of every request."""

    name = "double:motifs"

    def __init__(self, log: Log) -> None:
        self.log = log

    def chat(self, requests: list[ChatRequest]) -> list[ChatReply]:
        replies = []
        for request in requests:
            digest = hashlib.sha256((json.dumps(request.messages) + str(request.sample)).encode())
            self.log.add("llm", digest.hexdigest())
            replies.append(ChatReply(f"motif {digest.digest()[0] % 3}", prompt_tokens=10, completion_tokens=2))
        return replies


class LoggedGenerator:
    """Paints each request as a solid colour from its prompt and seed; logs every request."""

    name = "double:solid"

    def __init__(self, log: Log) -> None:
        self.log = log

    def generate(self, requests):
        images = []
        for request in requests:
            self.log.add("generator", f"{request.prompt}|{request.seed}")
            digest = hashlib.sha256(f"{request.prompt}|{request.seed}".encode()).digest()
            images.append(Image.new("RGB", (8, 8), (digest[0], digest[1], digest[2])))
        return images


class LoggedClip:
    """Embeds an image as its mean colour and a text by the bytes of its hash; logs every image and text."""

    name = "clip"
    model = "double:mean-colour"

    def __init__(self, log: Log) -> None:
        self.log = log

    def embed_images(self, images: list[Image.Image]) -> torch.Tensor:
        for image in images:
            self.log.add("clip-image", pixel_hash(image))
        means = np.stack([np.asarray(image, dtype=np.float32).mean(axis=(0, 1)) + 1 for image in images])
        return torch.nn.functional.normalize(torch.tensor(means), dim=-1)

    def embed(self, texts: list[str]) -> torch.Tensor:
        for text in texts:
            self.log.add("clip-text", text)
        rows = [list(hashlib.sha256(text.encode()).digest()[:3]) for text in texts]
        return torch.nn.functional.normalize(torch.tensor(rows, dtype=torch.float32) + 1, dim=-1)


class Run:
    """A pipeline over 24 random 16×16 images, the 16-filter network and logged doubles, writing under ``root``."""

    def __init__(self, root: Path, probe: Path, **doubles: type) -> None:
        """``doubles`` replaces the class of a role's double (``captioner=OtherCaptioner``)."""
        self.log = Log()
        self.network = SixteenFilters()
        self.config = make_config(root, probe, *OVERRIDES)
        kinds = {
            "captioner": LoggedCaptioner,
            "concept_llm": LoggedLLM,
            "generator": LoggedGenerator,
            "clip": LoggedClip,
        } | doubles
        backends = Backends(
            self.config,
            target=TargetNetwork("sixteen-filters", self.network, to_tensor),
            **{role: kind(self.log) for role, kind in kinds.items()},
        )
        self.pipeline = Pipeline(self.config, backends, prompts_dir=PROMPTS)

    def stage(self, stage: str, neurons: list[int] | None = None, force: bool = False) -> Counter:
        """Run up to ``stage`` (forcing it if asked); return what the doubles and the network were asked meanwhile."""
        start, images = len(self.log.lines), self.network.images
        self.pipeline.run_until(stage, [LAYER], neurons, {stage} if force else None)
        asked = self.log.since(start)
        asked["network", "images"] = self.network.images - images
        return +asked

    def entries(self, stages: tuple[str, ...] = STAGE_NAMES) -> dict[str, dict[int, str]]:
        """Each stage's entries by neuron, each as canonical JSON of its ``artifact.json`` text."""
        entries = {}
        for stage in stages:
            folder = self.pipeline.store.stage_dir(LAYER, stage, self.pipeline.key(stage, LAYER))
            artifact = json.loads((folder / layout.ARTIFACT_FILE).read_text())
            entries[stage] = {entry["neuron"]: json.dumps(entry, sort_keys=True) for entry in artifact["neurons"]}
        return entries

    def forget_item_caches(self, images: bool = False) -> None:
        """Delete the per-item caches (and, if asked, the image store), so every backend call of a recomputed neuron
        shows. Stage 6 reads the images stage 5 stored, so they are deleted only when stage 5 runs again."""
        shutil.rmtree(layout.cache_dir(self.config.output_dir), ignore_errors=True)
        if images:
            shutil.rmtree(layout.images_dir(self.config.output_dir), ignore_errors=True)


class OtherCaptioner(LoggedCaptioner):
    name = "double:other-captioner"


class OtherLLM(LoggedLLM):
    name = "double:other-llm"


class OtherClip(LoggedClip):
    model = "double:other-clip"


@pytest.fixture
def probe(tmp_path) -> Path:
    folder = tmp_path / "probe"
    write_images(folder, 24, size=16)
    return folder


def test_force_on_neurons_0_3_recomputes_them_and_keeps_every_other_neuron(tmp_path, probe):
    # A full run for all 16 neurons, and a run that computes neurons 0-3 alone, stage by stage, from scratch.
    full = Run(tmp_path / "full", probe)
    for stage in STAGE_NAMES:
        full.stage(stage)
    alone = Run(tmp_path / "alone", probe)
    work_of_0_3 = {stage: alone.stage(stage, FORCED) for stage in STAGE_NAMES}
    before = full.entries()
    activations = load_activations(full.pipeline.store.stage_dir(LAYER, "record", full.pipeline.key("record", LAYER)))
    assert all(sorted(entries) == list(range(NEURONS)) for entries in before.values())
    assert all(json.loads(entry)["labels"] for entry in before["score"].values())  # no neuron failed anywhere

    for stage in STAGE_NAMES:
        # `dnd run <stage> --neurons 0-3 --force`, with the item caches gone so that all its work is visible.
        full.forget_item_caches(images=stage == "synthesize")
        asked = full.stage(stage, FORCED, force=True)
        after = full.entries()
        # Every stage still holds all 16 neurons; those not forced are exactly as they were.
        for name, entries in after.items():
            assert sorted(entries) == list(range(NEURONS)), (stage, name)
            assert {n: entries[n] for n in range(4, NEURONS)} == {n: before[name][n] for n in range(4, NEURONS)}
        # The forced neurons come out as before (the doubles are deterministic), ...
        assert {n: after[stage][n] for n in FORCED} == {n: before[stage][n] for n in FORCED}
        if stage == "record":
            # ... record, a layer stage, recomputes the whole pass (one pass serves every neuron) to the same values;
            recorded = load_activations(full.pipeline.store.stage_dir(LAYER, stage, full.pipeline.key(stage, LAYER)))
            assert torch.equal(recorded[0], activations[0]) and torch.equal(recorded[1], activations[1])
            assert asked == Counter({("network", "images"): 24})
        else:
            # ... and a per-neuron stage asks its backends exactly what computing neurons 0-3 alone asks.
            assert asked == work_of_0_3[stage], stage
            assert asked, stage

    # `dnd describe --neurons 0-3 --force`: every stage forced at once, and still nothing else is lost.
    full.forget_item_caches(images=True)
    start = len(full.log.lines)
    full.pipeline.describe([LAYER], FORCED, force=True)
    assert full.entries() == before
    assert full.log.since(start) == sum(
        (Counter({key: n for key, n in work.items() if key[0] != "network"}) for work in work_of_0_3.values()),
        Counter(),
    )


def test_a_forced_subset_may_hold_new_neurons_too(tmp_path, probe):
    run = Run(tmp_path, probe)
    run.stage("summarize", [0, 1])
    before = run.entries(("summarize",))["summarize"]
    asked = run.stage("summarize", [1, 2], force=True)
    after = run.entries(("caption", "summarize"))
    assert sorted(after["summarize"]) == [0, 1, 2]
    assert after["summarize"][0] == before[0] and after["summarize"][1] == before[1]
    # Stages 2-3 computed the missing neuron 2; stage 4 neurons 1 and 2, neuron 1 from the reply cache.
    assert sorted(after["caption"]) == [0, 1, 2]
    assert asked["network", "images"] > 0 and sum(n for (backend, _), n in asked.items() if backend == "llm") == 2


def stand_in(name: str, needs: tuple[str, ...], calls: Counter) -> StageSpec:
    """A per-neuron stage whose concepts are its name and the neuron; counts its key computations and neurons."""

    def compute(ctx, work):
        calls[f"{name} neurons"] += len(work.neurons)
        return Concepts(
            layer=work.layer, llm=name, neurons=[NeuronConcepts(neuron=n, concepts=[name]) for n in work.neurons]
        ), {}

    def extra_inputs(ctx):
        calls[f"{name} key"] += 1
        return {}

    return StageSpec(name, 1, needs, ("summarize",), Concepts, compute=compute, extra_inputs=extra_inputs)


@pytest.fixture
def stand_ins(tmp_path, image_folder, mixer):
    calls: Counter[str] = Counter()
    config = make_config(tmp_path, image_folder)
    stages = [record.SPEC, stand_in("first", ("record",), calls), stand_in("second", ("first",), calls)]
    return Pipeline(config, Backends(config, target=mixer), stages=stages), calls


def test_stand_in_stages_run_in_the_order_given(stand_ins):
    pipeline, calls = stand_ins
    folder = pipeline.run_until("second", ["conv"], [0, 1])["conv"]
    assert folder.name == f"second-{pipeline.key('second', 'conv')}"
    assert (calls["first neurons"], calls["second neurons"]) == (2, 2)
    assert [row[:2] for row in pipeline.status("conv")] == [
        ("record", "fresh"),
        ("first", "fresh"),
        ("second", "fresh"),
    ]
    with pytest.raises(DnDError, match="unknown stage 'caption'; the stages are: record, first, second"):
        pipeline.run_until("caption", ["conv"])


def test_keys_are_computed_once_per_stage_and_layer_in_a_run(stand_ins):
    pipeline, calls = stand_ins
    pipeline.run_until("second", ["conv", "head"])
    # Without the memo, "first" would be keyed again for "second"'s key and for every folder the run looks up.
    assert (calls["first key"], calls["second key"]) == (2, 2)
    pipeline.key("second", "conv")  # outside a run, keys are computed afresh (an edited prompt is seen)
    assert (calls["first key"], calls["second key"]) == (3, 3)


def test_a_stage_must_come_after_the_stages_it_needs(tmp_path, image_folder, mixer):
    config = make_config(tmp_path, image_folder)
    calls: Counter[str] = Counter()
    with pytest.raises(ValueError, match="stage 'second' needs"):
        Pipeline(config, Backends(config, target=mixer), stages=[record.SPEC, stand_in("second", ("first",), calls)])


def test_out_of_range_neurons_are_a_clear_error(stand_ins):
    pipeline, _ = stand_ins
    with pytest.raises(DnDError, match=r"--neurons: \[7\] out of range, layer conv has 2 neurons \(0-1\)"):
        pipeline.run_until("first", ["conv"], [0, 7])
    assert pipeline.store.load("conv", "record", pipeline.key("record", "conv"), TopImages).n_neurons == 2


@pytest.mark.parametrize(
    ("role", "other", "first_keyed", "asked_for"),
    [
        ("captioner", OtherCaptioner, "caption", "captioner"),
        ("concept_llm", OtherLLM, "summarize", "llm"),
        ("clip", OtherClip, "score", "clip-image"),
    ],
)
def test_a_run_with_another_injected_model_never_reads_the_first_runs_stage_folders(
    tmp_path, probe, role, other, first_keyed, asked_for
):
    # Two runs on one output folder, with one config; they differ only in the object injected for `role`.
    first = Run(tmp_path, probe)
    first.stage("score")
    written = {
        stage: first.pipeline.store.stage_dir(LAYER, stage, first.pipeline.key(stage, LAYER)) for stage in STAGE_NAMES
    }
    before = first.entries()

    second = Run(tmp_path, probe, **{role: other})
    asked = second.stage("score")

    changed = STAGE_NAMES[STAGE_NAMES.index(first_keyed) :]  # the stage that stores the model's output, and after
    for stage in STAGE_NAMES:
        same = first.pipeline.key(stage, LAYER) == second.pipeline.key(stage, LAYER)
        assert same == (stage not in changed), stage
    # The other model did the work of every neuron itself (nothing came from the first run's folders) ...
    assert sum(n for (b, _), n in asked.items() if b == asked_for) > 0
    for stage in changed:
        folder = second.pipeline.store.stage_dir(LAYER, stage, second.pipeline.key(stage, LAYER))
        assert folder != written[stage] and folder.is_dir(), stage
    # ... and the first run's folders are as it left them.
    assert first.entries() == before
