"""Ablation: zeroing the neuron labelled with a class's colour drops that class's accuracy and no other; wrong labels
and random neurons do worse; ablations are cached; bad input is explained."""

from __future__ import annotations

import csv
import re

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

import dnd.cli.spaces
import dnd.evaluate.baselines
from dnd.backends.container import Backends
from dnd.backends.target_network import TargetNetwork
from dnd.cli import app
from dnd.compare.readers import LabelRow, LabelSet
from dnd.errors import DnDError
from dnd.evaluate.ablation import RANDOM, evaluate_ablation
from tests.compare.fakes import TableEmbedder
from tests.helpers import make_config, to_tensor

#: Class folders in sorted order = the network's outputs: 0 blue, 1 green, 2 red.
CLASSES = ("blue", "green", "red")
VECTORS = {"blue": [1, 0, 0], "green": [0, 1, 0], "red": [0, 0, 1], "sky": [0.9, 0.1, 0.1], "images": [1, 1, 1]}


class ColourClassifier(nn.Module):
    """``features`` (a 1×1 conv) has one neuron per class, the image's blue, green and red channel; the output is
    their spatial mean, so an image is classified by its dominant channel. ``forward_calls`` counts passes."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 3, kernel_size=1, bias=False)
        with torch.no_grad():
            self.features.weight.copy_(torch.tensor([[0.0, 0, 1], [0, 1, 0], [1, 0, 0]]).view(3, 3, 1, 1))
        self.forward_calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.forward_calls += 1
        return self.features(x).mean(dim=(2, 3))


def class_folders(root, per_class: int = 4, seed: int = 0):
    """``per_class`` images per colour class: the class's channel at 200-255, the others at 0-100."""
    rng = np.random.default_rng(seed)
    for index, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            colour = rng.integers(0, 100, 3)
            colour[2 - index] = rng.integers(200, 256)  # RGB order: blue is channel 2, red channel 0
            Image.new("RGB", (8, 8), tuple(int(v) for v in colour)).save(root / name / f"{i}.png")
    return root


def label_set(labels: dict[int, str], source: str = "labels.csv") -> LabelSet:
    rows = [LabelRow(layer="features", unit=unit, labels=[text]) for unit, text in labels.items()]
    return LabelSet(source=source, method="test", rows=rows)


@pytest.fixture
def setup(tmp_path):
    images = class_folders(tmp_path / "set")
    config = make_config(tmp_path, images)
    module = ColourClassifier()
    backends = Backends(config, target=TargetNetwork("colours", module, to_tensor))
    return config, images, module, backends


def test_ablating_the_neurons_a_label_names_drops_its_class_only(setup):
    config, images, module, backends = setup
    right = label_set({0: "blue", 1: "green", 2: "red"})
    wrong = label_set({0: "green", 1: "blue", 2: "red"}, source="wrong.csv")
    sources = {"right": [right], "wrong": [wrong]}

    evaluation = evaluate_ablation(config, sources, "features", images, TableEmbedder("t", VECTORS), 1, 4, backends)

    results = {result.source: result for result in evaluation.results}
    assert list(results) == ["right", "wrong", RANDOM] and evaluation.accuracy == 1.0
    assert (evaluation.n_images, evaluation.k, results[RANDOM].draws) == (12, 1, 4)
    # Right labels: each class loses its own neuron and all its images; the other classes keep theirs.
    for row in results["right"].classes:
        assert (row.units, row.own_before, row.own_after, row.untargeted_drop) == (
            [CLASSES.index(row.class_name)],
            1.0,
            0.0,
            0.0,
        )
    assert (results["right"].targeted_drop, results["right"].score) == (1.0, 1.0)
    # Blue and green swapped: those two classes zero each other's neuron (targeted 0, untargeted 0.5).
    assert [row.score for row in results["wrong"].classes] == [-0.5, -0.5, 1.0]
    assert results["right"].score > results["wrong"].score > results[RANDOM].score - 1
    assert results["right"].score > results[RANDOM].score + 0.5
    # The first set's lead, class by class: 1.5, 1.5 and 0 over the swapped labels.
    assert results["right"].first_minus_this is None
    assert results["wrong"].first_minus_this.items == 3
    assert results["wrong"].first_minus_this.mean == pytest.approx(1.0)
    assert 0 <= results["wrong"].first_minus_this.low <= 1.0 <= results["wrong"].first_minus_this.high <= 1.5

    # Every distinct ablation is cached: asking again runs no forward pass.
    calls = module.forward_calls
    again = evaluate_ablation(config, sources, "features", images, TableEmbedder("t", VECTORS), 1, 4, backends)
    assert again == evaluation and module.forward_calls == calls + 1  # + the one image that measures the layer


def test_one_ablation_per_pass_gives_the_same_result(setup, monkeypatch):
    config, images, _, backends = setup
    sources = {"right": [label_set({0: "blue", 1: "green", 2: "sky"})]}
    together = evaluate_ablation(config, sources, "features", images, TableEmbedder("t", VECTORS), 2, 2, backends)
    monkeypatch.setattr(dnd.evaluate.ablation, "ABLATIONS_PER_PASS", 1)
    config = config.model_copy(update={"output_dir": config.output_dir / "fresh"})
    alone = evaluate_ablation(config, sources, "features", images, TableEmbedder("t", VECTORS), 2, 2, backends)
    assert alone == together
    # k = 2: blue's two nearest are 'blue' and 'sky' (units 0 and 2), ties go to the lower unit.
    assert together.results[0].classes[0].units == [0, 2]


def test_bad_input_is_explained(setup, tmp_path):
    config, images, _, backends = setup
    embedder = TableEmbedder("t", VECTORS)
    good = {"right": [label_set({0: "blue", 1: "green", 2: "red"})]}
    with pytest.raises(DnDError, match="layer head is not in labels.csv; it has: features"):
        evaluate_ablation(config, good, "head", images, embedder, 1, 1, backends)
    with pytest.raises(DnDError, match=r"labels units \[9\] of features, but this network's features has 3 neurons"):
        beyond = {"x": [label_set({0: "blue", 9: "red"})]}
        evaluate_ablation(config, beyond, "features", images, embedder, 1, 1, backends)
    with pytest.raises(DnDError, match="--k 4 is larger than features, which has 3 neurons: choose --k 3 or less"):
        evaluate_ablation(config, good, "features", images, embedder, 4, 1, backends)
    with pytest.raises(DnDError, match="--k 2 leaves no choice: only 2 neurons of features are labelled"):
        two_labelled = {"x": [label_set({0: "blue", 1: "red"})]}
        evaluate_ablation(config, two_labelled, "features", images, embedder, 2, 1, backends)
    two = tmp_path / "two"
    for name in ("blue", "red"):
        (two / name).mkdir(parents=True)
        Image.new("RGB", (8, 8), (0, 0, 255)).save(two / name / "0.png")
    with pytest.raises(DnDError, match=r"outputs of shape \[3\] per image, but the image set has 2 class folders"):
        evaluate_ablation(config, good, "features", two, embedder, 1, 1, backends)
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (8, 8), (0, 0, 255)).save(flat / "0.png")
    with pytest.raises(DnDError, match=r"must hold one folder per class"):
        evaluate_ablation(config, good, "features", flat, embedder, 1, 1, backends)


def test_ablation_command_prints_the_table_with_its_baselines(setup, tmp_path, monkeypatch):
    config, images, module, backends = setup
    config_file = tmp_path / "run.yaml"
    config_file.write_text(f"output_dir: {config.output_dir}\nname: test\nprobe:\n  path: {images}\n  num_workers: 0\n")
    monkeypatch.setattr(dnd.cli.spaces, "embedders", lambda specs, device: iter([TableEmbedder("table", VECTORS)]))
    monkeypatch.setattr(dnd.evaluate.baselines, "run_captions", lambda pipeline, layer, units: None)
    monkeypatch.setattr(dnd.evaluate.ablation, "Backends", lambda run_config: backends)
    (tmp_path / "colours_features.csv").write_text("Neuron ID,Label 1\n0,blue\n1,green\n2,red\n")
    args = ["evaluate", "ablation", str(tmp_path / "colours_features.csv"), "-c", str(config_file), "-l", "features"]
    args += ["--images", str(images), "--k", "1", "--out", str(tmp_path / "ablation.csv")]

    result = CliRunner().invoke(app, args)

    assert result.exit_code == 0, result.output
    words = " ".join(result.output.split())
    assert "ablation of features, k=1 per class (table): accuracy on set 1.0000 before, 12 images" in words
    assert "colours_features.csv 1.0000 0.0000 1.0000" in words
    assert "colours_features.csv against the others, class by class: its score minus theirs" in words
    assert re.search(r"random neurons ×5 [+-][0-9.]+ \[[+-][0-9.]+, [+-][0-9.]+\] 3", words)
    assert "shuffled ×5" in words and "constant 'images'" in words and "random neurons ×5" in words
    with (tmp_path / "ablation.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["source"], row["class"], row["units"]) for row in rows[:3]] == [
        ("colours_features.csv", name, str(unit)) for unit, name in enumerate(CLASSES)
    ]
    bad = CliRunner().invoke(app, [*args[:-2], "--out", str(tmp_path / "ablation.txt")])
    assert bad.exit_code == 2 and "write results to a .csv" in bad.output


def test_units_other_than_neurons_are_not_ablated(tmp_path):
    directions = tmp_path / "directions.npy"
    np.save(directions, np.eye(2, dtype=np.float32))
    config = make_config(tmp_path, tmp_path, f"units.directions={directions}")
    with pytest.raises(DnDError, match="zeroes a layer's neurons, not SAE latents or directions"):
        evaluate_ablation(config, {}, "conv", tmp_path, TableEmbedder("minilm", {}))
