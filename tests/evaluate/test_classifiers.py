"""Neurons as classifiers: AUROC against a hand-worked case, ties, reuse of stage 1, the command."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

import dnd.cli.spaces
from dnd.backends.container import Backends
from dnd.backends.target_network import TargetNetwork
from dnd.cli import app
from dnd.compare.readers import LabelRow, LabelSet
from dnd.errors import DnDError
from dnd.evaluate.classifiers import evaluate_classifiers
from tests.compare.fakes import TableEmbedder
from tests.fakes import ChannelMeans
from tests.helpers import make_config, to_tensor, write_cifar_config, write_images

#: Uniform 8×8 images by class: (red, green, blue) pixel values.
IMAGES = {
    "apple": [(204, 0, 51), (102, 51, 0)],
    "green_grass": [(0, 204, 0), (102, 153, 51), (51, 102, 0)],
}
#: Class names and descriptions as unit vectors: apple·"red fruit" = 0.8, green grass·"green grass" = 0.8, else 0.6.
VECTORS = {"apple": [1, 0], "green grass": [0, 1], "red fruit": [0.8, 0.6], "green leaves": [0.6, 0.8]}
#: Neuron k of the layer ``features`` is the mean of colour channel k; neurons 0 and 2 share a description.
DESCRIPTIONS = {0: "red fruit", 1: "green leaves", 2: "red fruit"}


def labelled_set(root: Path) -> Path:
    for name, colours in IMAGES.items():
        (root / name).mkdir(parents=True)
        for i, colour in enumerate(colours):
            Image.new("RGB", (8, 8), colour).save(root / name / f"{i}.png")
    return root


def label_set(descriptions: dict[int, str], layer: str = "features") -> LabelSet:
    rows = [LabelRow(layer=layer, unit=unit, labels=[text]) for unit, text in descriptions.items()]
    return LabelSet(source="labels.csv", method="test", rows=rows)


def test_auroc_of_the_nearest_neuron_matches_the_hand_worked_case(tmp_path):
    images = labelled_set(tmp_path / "set")
    config = make_config(tmp_path, images)
    module = ChannelMeans()
    backends = Backends(config, target=TargetNetwork("means", module, to_tensor))
    embedder = TableEmbedder("table", VECTORS)

    evaluation = evaluate_classifiers(config, label_set(DESCRIPTIONS), "features", images, [embedder], backends)

    (result,) = evaluation.results
    apple, grass = result.classes
    # apple: neurons 0 (red) and 2 (blue) tie at similarity 0.8; red {204, 102} vs {0, 102, 51}: (3 + 2.5) / 6;
    # blue {51, 0} vs {0, 51, 0}: (2.5 + 1) / 6; the class gets their mean.
    assert (apple.class_name, apple.images, apple.units, apple.labels) == ("apple", 2, [0, 2], ["red fruit"] * 2)
    assert apple.similarity == pytest.approx(0.8)
    assert apple.aurocs == pytest.approx([5.5 / 6, 3.5 / 6])
    assert apple.auroc == pytest.approx(4.5 / 6)
    # green grass ('_' read as a space): neuron 1 alone; green {204, 153, 102} vs {0, 51}: every pair won.
    assert (grass.class_name, grass.images, grass.units, grass.aurocs) == ("green grass", 3, [1], [1.0])
    assert result.mean_auroc == pytest.approx((4.5 / 6 + 1.0) / 2)
    assert (result.n_images, evaluation.labelled_units, evaluation.skipped_images) == (5, 3, 0)
    # The same numbers as sklearn's roc_auc_score over the whole set.
    truth = np.array([1, 1, 0, 0, 0])
    reds, blues = [204, 102, 0, 102, 51], [51, 0, 0, 51, 0]
    assert apple.aurocs == pytest.approx([roc_auc_score(truth, reds), roc_auc_score(truth, blues)])
    assert embedder.calls == [["apple", "green grass", "red fruit", "green leaves", "red fruit"]]

    # Stage 1 recorded the set once: a second evaluation runs no forward pass.
    calls = module.forward_calls
    again = evaluate_classifiers(config, label_set(DESCRIPTIONS), "features", images, [embedder], backends)
    assert module.forward_calls == calls and again.results == evaluation.results


def test_only_described_neurons_are_candidates_and_bad_input_is_explained(tmp_path):
    images = labelled_set(tmp_path / "set")
    config = make_config(tmp_path, images)
    backends = Backends(config, target=TargetNetwork("means", ChannelMeans(), to_tensor))
    embedders = [TableEmbedder("table", VECTORS)]

    evaluation = evaluate_classifiers(config, label_set({2: "red fruit"}), "features", images, embedders, backends)
    assert [match.units for match in evaluation.results[0].classes] == [[2], [2]]

    with pytest.raises(DnDError, match="layer head is not in labels.csv; it has: features"):
        evaluate_classifiers(config, label_set(DESCRIPTIONS), "head", images, embedders, backends)
    with pytest.raises(DnDError, match=r"describes units \[7\] of features, but this network's features has 3 neurons"):
        evaluate_classifiers(config, label_set({7: "red fruit"}), "features", images, embedders, backends)
    write_images(tmp_path / "flat", 2)
    with pytest.raises(DnDError, match=r"must hold one folder per class with the images inside \(<class>/<image>"):
        evaluate_classifiers(config, label_set(DESCRIPTIONS), "features", tmp_path / "flat", embedders, backends)


def test_classifiers_command_on_a_published_style_label_file(tmp_path, monkeypatch):
    monkeypatch.setattr(dnd.cli.spaces, "embedders", lambda specs, device: [TableEmbedder("table", VECTORS)])
    config = write_cifar_config(tmp_path)  # a randomly initialised CIFAR ResNet-20
    for name in IMAGES:
        write_images(tmp_path / "set" / name, 3, size=32, seed=len(name))
    (tmp_path / "resnet20_layer3.csv").write_text("Neuron ID,Label 1,Label 2\n5,red fruit,apples\n9,green leaves,\n")
    args = ["evaluate", "classifiers", str(tmp_path / "resnet20_layer3.csv"), "-c", str(config), "-l", "layer3"]
    args += ["--images", str(tmp_path / "set"), "-e", "table", "--out", str(tmp_path / "classes.csv")]

    result = CliRunner().invoke(app, args)

    assert result.exit_code == 0, result.output
    words = " ".join(result.output.split())
    assert "layer3 as classifiers of set (table): mean AUROC" in words
    assert re.search(r"apple 3 [0-9.]+ 0.800 5 red fruit", words) and re.search(
        r"green grass 3 [0-9.]+ 0.800 9 green", words
    )
    assert "2 neurons of layer3 described in resnet20_layer3.csv were candidates; 6 images" in words
    with (tmp_path / "classes.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["class"], row["units"], row["label"]) for row in rows] == [
        ("apple", "5", "red fruit"),
        ("green grass", "9", "green leaves"),
    ]
    mean = float(words.split("mean AUROC ")[1].split()[0])
    assert mean == pytest.approx(sum(float(row["auroc"]) for row in rows) / 2, abs=1e-4)

    bad = CliRunner().invoke(app, [*args[:-2], "--images", str(tmp_path / "nowhere")])
    assert bad.exit_code == 2 and "--images" in bad.output and "no such folder" in bad.output
    bad = CliRunner().invoke(app, [*args[:-2], "--out", str(tmp_path / "classes.txt")])
    assert bad.exit_code == 2 and "write results to a .csv" in bad.output


def test_classifiers_help_has_an_example():
    result = CliRunner().invoke(app, ["evaluate", "classifiers", "--help"])
    assert "Example: dnd evaluate classifiers" in " ".join(result.output.split())
