"""CoSy: AUC and MAD against hand computation; on a network whose neurons detect known pixel patterns, a label that
draws the pattern scores AUC ≈ 1 and one that does not ≈ ½; images made once per distinct label and reused; the CLI.

The generator is a stub that paints the pattern a prompt names (red patches, a checkerboard) and noise like the
probing images for anything else, so the right and wrong answers are known without a diffusion model."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score
from torch import nn
from typer.testing import CliRunner

import dnd.backends.generators
from dnd.artifacts import Labels, NeuronLabels
from dnd.backends.container import Backends
from dnd.backends.generators import GenerationRequest, generator_name
from dnd.backends.target_network import TargetNetwork
from dnd.cli import app
from dnd.compare.readers import LabelRow, LabelSet
from dnd.config import COSY_GENERATORS, SynthesizeConfig, load_config
from dnd.errors import DnDError
from dnd.evaluate.cosy import (
    CosyResult,
    cosy_run_config,
    evaluate_cosy,
    mean_activation_difference,
    roc_auc,
    write_results,
)
from dnd.store import write_model
from tests.fakes import PaintingGenerator
from tests.helpers import make_config, stored_images, to_tensor, write_cifar_config, write_images

LAYER = "features"
Q = 30  # cosy.images_per_label in these tests
PROBE_IMAGES = 60
BATCH = 16  # probe.batch_size: the target network's batches
GENERATE_BATCH = 7  # cosy.batch_size


class PatternDetector(nn.Module):
    """``features`` channel 0 = redness ``R − (G + B) / 2`` per pixel; channel 1 = ``|2×2 checkerboard filter|`` on
    the grey image, ``|a − b − c + d| / 4`` per 2×2 window (0.5 on a black-and-white checkerboard, about 0.07 on
    noise). Spatial means of both are the neurons' activations; ``forward_calls`` counts forward passes."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Identity()
        self.register_buffer("checker", torch.tensor([[1.0, -1.0], [-1.0, 1.0]]).view(1, 1, 2, 2) / 4)
        self.forward_calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.forward_calls += 1
        redness = x[:, 0] - (x[:, 1] + x[:, 2]) / 2  # [B, H, W]
        checker = nn.functional.conv2d(x.mean(dim=1, keepdim=True), self.checker).abs()[:, 0]  # [B, H-1, W-1]
        return self.features(torch.stack([redness[:, :-1, :-1], checker], dim=1))


def draw_pattern(request: GenerationRequest, size: int) -> Image.Image:
    """``red patches`` (a red square on noise) or a ``checkerboard`` when the prompt names one, uniform noise (like
    the probing images) otherwise; each image depends only on its request."""
    rng = np.random.default_rng(request.seed)
    pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    half = size // 2
    if "red patches" in request.prompt:
        x, y = rng.integers(0, half + 1, 2)
        pixels[y : y + half, x : x + half] = (255, 0, 0)
    elif "checkerboard" in request.prompt:
        phase = rng.integers(0, 2)
        rows, cols = np.indices((size, size))
        pixels[:] = (((rows + cols + phase) % 2) * 255)[..., None].astype(np.uint8)
    return Image.fromarray(pixels)


def pattern_generator(name: str = "stub:patterns", size: int = 8) -> PaintingGenerator:
    """Paints :func:`draw_pattern`'s images; keeps every call."""
    return PaintingGenerator(draw_pattern, size, name)


def label_set(labels: dict[int, str], layer: str = LAYER) -> LabelSet:
    rows = [LabelRow(layer=layer, unit=unit, labels=[label]) for unit, label in labels.items()]
    return LabelSet(source="labels.csv", method="test", rows=rows)


@pytest.fixture
def evaluate(tmp_path):
    """``evaluate(labels, generator, neurons=None) -> (result, network)`` over one probing folder and output folder."""
    write_images(tmp_path / "probe", PROBE_IMAGES)
    config = make_config(
        tmp_path,
        tmp_path / "probe",
        f"probe.batch_size={BATCH}",
        f"cosy.images_per_label={Q}",
        f"cosy.batch_size={GENERATE_BATCH}",
    )
    network = PatternDetector()
    target = TargetNetwork("patterns", network, to_tensor)

    def run(labels: dict[int, str], generator: PaintingGenerator, neurons: list[int] | None = None):
        backends = Backends(config, target=target, generator=generator)
        return evaluate_cosy(config, label_set(labels), LAYER, neurons, backends), network

    return run


# --- the metrics ----------------------------------------------------------------------------------------------------


def test_auc_by_hand_with_ties_and_extremes():
    def auc(synthetic: list[float], control: list[float]) -> float:
        return roc_auc(torch.tensor(synthetic), torch.tensor(control)).item()

    assert auc([3, 4], [1, 2]) == 1.0  # every synthetic image above every control image
    assert auc([1, 2], [3, 4]) == 0.0
    assert auc([2, 2], [2, 2, 2]) == 0.5  # all tied
    assert auc([1, 3], [2, 0, 4, 2.5]) == 0.5  # 1 beats 0; 3 beats 0, 2, 2.5 → U = 4 of 8
    # s=1: beats 0, ties none → 1; s=2: ties 2, 2 and beats 0 → 2; s=3: beats all three → 3; U = 6 of 9.
    assert auc([1, 2, 3], [2, 2, 0]) == pytest.approx(2 / 3)
    # Leading dimensions score several neurons at once, as the rows one by one.
    # Row 2: s=1 beats 0 → 1; s=2 ties 2, 2 and beats 0 → 2; U = 3 of 6.
    both = roc_auc(torch.tensor([[3.0, 4.0], [1.0, 2.0]]), torch.tensor([[1.0, 2.0, 2.0], [2.0, 2.0, 0.0]]))
    assert both.tolist() == [1.0, 0.5]


def test_auc_equals_sklearn_on_random_tied_values():
    generator = torch.Generator().manual_seed(0)
    synthetic = torch.randint(0, 6, (4, 25), generator=generator).float()  # few distinct values: many ties
    control = torch.randint(0, 6, (4, 40), generator=generator).float()
    ours = roc_auc(synthetic, control)
    for row in range(4):
        truth = np.r_[np.ones(25), np.zeros(40)]
        scores = np.r_[synthetic[row].numpy(), control[row].numpy()]
        assert ours[row].item() == pytest.approx(roc_auc_score(truth, scores), abs=1e-12)


def test_mad_by_hand():
    def mad(synthetic: list[float], control: list[float]) -> float:
        return mean_activation_difference(torch.tensor(synthetic), torch.tensor(control)).item()

    assert mad([4, 6], [1, 2, 3]) == pytest.approx(3.0)  # (5 − 2) / 1, sample std of 1, 2, 3 is 1
    assert mad([0], [1, 2, 3]) == pytest.approx(-2.0)
    assert mad([2], [0, 2]) == pytest.approx(1 / math.sqrt(2))  # sample std √2, not the population's 1
    assert math.isnan(mad([5], [3, 3, 3]))  # no spread in the control set: undefined
    rows = mean_activation_difference(torch.tensor([[4.0, 6.0], [0.0, 0.0]]), torch.tensor([[1.0, 2, 3], [1, 2, 3]]))
    assert rows.tolist() == pytest.approx([3.0, -2.0])


# --- the evaluation -------------------------------------------------------------------------------------------------


def test_right_label_near_one_wrong_label_near_half(evaluate):
    right, _ = evaluate({0: "red patches", 1: "checkerboard"}, pattern_generator())
    assert [(n.unit, n.label) for n in right.neurons] == [(0, "red patches"), (1, "checkerboard")]
    assert all(n.auc > 0.95 for n in right.neurons), right.neurons
    assert all(n.mad > 3 for n in right.neurons), right.neurons
    assert (right.n_control, right.images_per_label, right.generator) == (PROBE_IMAGES, Q, "stub:patterns")
    assert right.prompt == "realistic photo of a close up of {description}"

    wrong, _ = evaluate({0: "a cat", 1: "a cat"}, pattern_generator())  # noise: looks like any probing image
    assert all(0.35 < n.auc < 0.65 for n in wrong.neurons), wrong.neurons
    assert all(abs(n.mad) < 1 for n in wrong.neurons), wrong.neurons

    aucs = torch.tensor([n.auc for n in wrong.neurons], dtype=torch.float64)
    assert wrong.auc.n == 2
    assert wrong.auc.mean == pytest.approx(aucs.mean().item())
    assert wrong.auc.median == pytest.approx(aucs.mean().item())  # the median of two values is their mean
    assert wrong.auc.std == pytest.approx(aucs.std(correction=0).item())


def test_images_made_once_per_distinct_label_then_reused(evaluate, tmp_path):
    # Two neurons share one label: its Q images are generated once, in batches of cosy.batch_size.
    stub = pattern_generator()
    first, network = evaluate({0: "checkerboard", 1: "checkerboard"}, stub)
    assert len(stub.requests) == Q and len({r.seed for r in stub.requests}) == Q
    assert [len(call) for call in stub.calls] == [7, 7, 7, 7, 2]
    assert {r.prompt for r in stub.requests} == {"realistic photo of a close up of checkerboard"}
    assert (first.images_generated, first.images_reused) == (Q, 0)
    assert len(stored_images(tmp_path / "outputs" / "images")) == Q
    # The probing set once (stage 1), then every synthetic image once, in probe.batch_size batches.
    assert network.forward_calls == math.ceil(PROBE_IMAGES / BATCH) + math.ceil(Q / BATCH)

    # A second evaluation generates nothing, reuses stage 1, and gives the same scores.
    again = pattern_generator()
    passes = network.forward_calls
    second, _ = evaluate({0: "checkerboard", 1: "checkerboard"}, again)
    assert again.calls == []
    assert (second.images_generated, second.images_reused) == (0, Q)
    assert network.forward_calls - passes == math.ceil(Q / BATCH)  # only the synthetic images: stage 1 is reused
    assert second.neurons == first.neurons

    # A new label adds only its own images; another generator (a different name) makes its own.
    third = pattern_generator()
    result, _ = evaluate({0: "red patches", 1: "checkerboard"}, third)
    assert {r.prompt for r in third.requests} == {"realistic photo of a close up of red patches"}
    assert (result.images_generated, result.images_reused) == (Q, Q)
    other = pattern_generator("stub:other")
    evaluate({1: "checkerboard"}, other)
    assert len(other.requests) == Q


def test_an_unreadable_stored_image_is_a_clear_error(evaluate, tmp_path):
    evaluate({0: "checkerboard"}, pattern_generator())
    broken = stored_images(tmp_path / "outputs" / "images")[0]
    broken.unlink()  # a new file: the stored one is a hard link to pixels other images may share
    broken.write_bytes(b"not a png")
    with pytest.raises(DnDError, match=rf"generated image {re.escape(str(broken))} is unreadable .* delete it"):
        evaluate({0: "checkerboard"}, pattern_generator())


def test_neurons_without_labels_and_user_errors(evaluate, tmp_path):
    result, _ = evaluate({0: "red patches"}, pattern_generator(), neurons=[0, 1])
    assert [n.unit for n in result.neurons] == [0] and result.unlabelled == [1]

    with pytest.raises(DnDError, match=r"none of the requested neurons has a label in labels.csv \(layer features"):
        evaluate({0: "red patches"}, pattern_generator(), neurons=[1])
    with pytest.raises(DnDError, match=r"labels units \[5\] of features, but this network's features has 2 neurons"):
        evaluate({0: "red patches", 5: "sky"}, pattern_generator())

    stub = pattern_generator()
    backends = Backends(make_config(tmp_path, tmp_path / "probe"), generator=stub)
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "mine.md").write_text("## prompt\na photo of {label}\n")
    config = make_config(tmp_path, tmp_path / "probe", f"prompts_dir={prompts}", "cosy.prompt_file=mine.md")
    with pytest.raises(DnDError, match=r"unknown placeholder\(s\) label; allowed there: description; fix prompts/mine"):
        evaluate_cosy(config, label_set({0: "red"}), LAYER, None, backends)
    with pytest.raises(DnDError, match=r"prompt file .*other.md is missing"):
        evaluate_cosy(
            config.model_copy(update={"cosy": config.cosy.model_copy(update={"prompt_file": "other.md"})}),
            label_set({0: "red"}),
            LAYER,
            None,
            backends,
        )
    with pytest.raises(DnDError, match="layer conv is not in labels.csv; it has: features"):
        evaluate_cosy(make_config(tmp_path, tmp_path / "probe"), label_set({0: "red"}), "conv", None, backends)
    assert stub.calls == []


def test_results_files(evaluate, tmp_path):
    result, _ = evaluate({0: "red patches", 1: "checkerboard"}, pattern_generator())
    result.neurons[1].mad = None  # as for a neuron constant on the control set
    write_results(result, tmp_path / "cosy.csv")
    lines = (tmp_path / "cosy.csv").read_text().splitlines()
    assert lines[0] == "source,layer,unit,label,auc,mad"
    assert lines[1].startswith(f"labels.csv,features,0,red patches,{result.neurons[0].auc},")
    assert lines[2].endswith(",")

    write_results(result, tmp_path / "cosy.json")
    data = json.loads((tmp_path / "cosy.json").read_text())
    assert data["neurons"][1]["mad"] is None and data["auc"]["n"] == 2
    assert CosyResult.model_validate_json((tmp_path / "cosy.json").read_text()).neurons[0] == result.neurons[0]
    with pytest.raises(DnDError, match="write results to a .csv"):
        write_results(result, tmp_path / "cosy.txt")


# --- the command ----------------------------------------------------------------------------------------------------


@pytest.fixture
def cifar(tmp_path, monkeypatch) -> tuple[Path, list[SynthesizeConfig]]:
    """(config path, the settings of every generator built): cifar_resnet20 with random weights over 12 images, and the
    built-in generator replaced by a 32×32 stub."""
    path = write_cifar_config(tmp_path, probe={"batch_size": 8}, cosy={"images_per_label": 3})
    built: list[SynthesizeConfig] = []

    def build_generator(settings, _device):
        built.append(settings)
        return pattern_generator(size=32)

    monkeypatch.setattr(dnd.backends.generators, "build_generator", build_generator)
    return path, built


def invoke(*args: object):
    return CliRunner().invoke(app, ["evaluate", "cosy", *map(str, args)])


def test_cosy_command(cifar, tmp_path):
    config, built = cifar
    labels = tmp_path / "descriptions.csv"
    labels.write_text("layer,unit,description,similarity\nlayer1,0,red patches,0.3\nlayer1,1,checkerboard,0.2\n")

    result = invoke(labels, "--config", config, "--layer", "layer1", "--neurons", "0-2", "--out", tmp_path / "c.csv")
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "CoSy on layer1, 3 images per label vs 12 probing images" in output
    assert "no label in descriptions.csv, not evaluated: 2" in output
    assert "images: 6 generated, 0 reused" in output
    rows = (tmp_path / "c.csv").read_text().splitlines()
    assert [row.split(",")[2:4] for row in rows[1:]] == [["0", "red patches"], ["1", "checkerboard"]]
    assert [settings.model for settings in built] == ["stabilityai/stable-diffusion-xl-base-1.0"]  # the published one
    assert "protocol: not the published one (cosy.images_per_label=3): these numbers are not comparable" in output

    # Again, from one of our runs' score folders: every image is stored, so no generator is built.
    run_folder = tmp_path / "score-0123"
    write_model(
        run_folder / "artifact.json",
        Labels(
            layer="layer1",
            function="f",
            neurons=[NeuronLabels(neuron=0, labels=["red patches"]), NeuronLabels(neuron=1, labels=["checkerboard"])],
        ),
    )
    result = invoke(run_folder, "--config", config, "--layer", "layer1", "--out", tmp_path / "c.json")
    assert result.exit_code == 0, result.output
    assert "images: 0 generated, 6 reused" in " ".join(result.output.split()) and len(built) == 1
    assert [n["label"] for n in json.loads((tmp_path / "c.json").read_text())["neurons"]] == [
        "red patches",
        "checkerboard",
    ]


def test_the_published_protocol_is_the_default_and_cheaper_generators_say_so(cifar, tmp_path):
    config, built = cifar
    labels = tmp_path / "net_layer1.csv"
    labels.write_text("Neuron ID,label\n0,red patches\n")
    published = ["--set", "cosy.images_per_label=50"]

    result = invoke(labels, "-c", config, "-l", "layer1", *published)
    assert result.exit_code == 0, result.output
    words = " ".join(result.output.split())
    assert "protocol: published (CoSy's generator, image count and prompt): comparable numbers" in words
    sdxl = "diffusers:stabilityai/stable-diffusion-xl-base-1.0:model_default:steps=50:guidance=5.0:size=1024"
    assert f"by{sdxl}" in "".join(result.output.split())
    result = invoke(labels, "-c", config, "-l", "layer1", *published, "--set", "cosy.generator=sd-turbo")
    assert "protocol: not the published one (cosy.generator='sd-turbo')" in " ".join(result.output.split())
    assert [(s.model, s.steps) for s in built] == [
        ("stabilityai/stable-diffusion-xl-base-1.0", 50),
        ("stabilityai/sd-turbo", 1),
    ]


def test_cosy_generator_settings():
    run = load_config(None, ["synthesize.model=/models/my-sd", "synthesize.steps=20", "cosy.batch_size=2"])
    assert run.cosy.images_per_label == 50 and run.cosy.prompt_file == "cosy.md"
    mine = run.cosy.model_copy(update={"prompt_file": "mine.md"})
    assert mine.deviations() == ["cosy.prompt_file='mine.md'"]
    published = cosy_run_config(run).synthesize
    assert (published.model, published.scheduler, published.steps, published.guidance_scale, published.size) == (
        "stabilityai/stable-diffusion-xl-base-1.0",
        "model_default",
        50,
        5.0,
        1024,
    )
    assert published.batch_size == 2
    local = cosy_run_config(run.model_copy(update={"cosy": run.cosy.model_copy(update={"model": "/models/sdxl"})}))
    assert local.synthesize.model == "/models/sdxl" and local.cosy.deviations() == []
    own = cosy_run_config(run.model_copy(update={"cosy": run.cosy.model_copy(update={"generator": "synthesize"})}))
    assert (own.synthesize.model, own.synthesize.steps) == ("/models/my-sd", 20)
    names = {
        generator_name(cosy_run_config(load_config(None, [f"cosy.generator={g}"])).synthesize) for g in COSY_GENERATORS
    }
    assert len(names) == 3  # each preset's images are stored under keys of their own


def test_cosy_command_errors_and_help(cifar, tmp_path):
    config, built = cifar
    labels = tmp_path / "net_layer1.csv"
    labels.write_text("Neuron ID,label\n0,red patches\n16,sky\n")

    def error(*args: object) -> str:
        result = invoke(*args)
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
        return " ".join(result.output.split())

    assert "missing.csv cannot be read: no such file" in error(tmp_path / "missing.csv", "-c", config, "-l", "layer1")
    assert "layer layer2 is not in" in error(labels, "-c", config, "-l", "layer2")
    assert "labels units [16] of layer1, but this network's layer1 has 16 neurons (0-15)" in error(
        labels, "-c", config, "-l", "layer1"
    )
    assert "write results to a .csv" in error(labels, "-c", config, "-l", "layer1", "--out", tmp_path / "x.txt")
    assert "cosy.model applies to the preset generators" in error(
        labels, "-c", config, "-l", "layer1", "--set", "cosy.generator=synthesize", "--set", "cosy.model=/m"
    )
    assert built == []

    result = invoke("--help")
    assert result.exit_code == 0 and "Example: dnd evaluate cosy" in result.output
