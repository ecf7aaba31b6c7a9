"""Final-layer evaluation: each output unit's label against its class name, with a table embedder."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import dnd.commands
from dnd.cli import app
from dnd.compare.readers import LabelRow, LabelSet
from dnd.errors import DnDError
from dnd.evaluate.final_layer import evaluate_final_layer, read_class_names
from tests.compare.fakes import TableEmbedder

# dog·puppy = 0.6, car·car = 1, cat·dog = 0.8
VECTORS = {"dog": [1, 0], "puppy": [0.6, 0.8], "car": [0, 1], "cat": [0.8, 0.6]}
CLASSES = "dog, domestic dog, Canis familiaris\ncar, auto\ncat\n"


def output_layer(labels: list[str], layer: str = "fc") -> LabelSet:
    rows = [LabelRow(layer=layer, unit=unit, labels=[label]) for unit, label in enumerate(labels)]
    return LabelSet(source="labels.csv", method="test", rows=rows)


def test_class_names_are_first_synonyms(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text(CLASSES + "\n")
    assert read_class_names(path) == ["dog", "car", "cat"]
    path.write_text("dog\n\ncat\n")
    with pytest.raises(DnDError, match=r"line\(s\) \[2\] have no class name"):
        read_class_names(path)
    with pytest.raises(DnDError, match="classes file .* not found"):
        read_class_names(tmp_path / "missing.txt")


def test_mean_similarity_to_the_class_names_is_exact():
    embedder = TableEmbedder("table", VECTORS)
    (result,) = evaluate_final_layer(output_layer(["puppy", "car", "dog"]), ["dog", "car", "cat"], [embedder], bins=4)
    assert (result.layer, result.embedder, result.stats.n) == ("fc", "table", 3)
    assert result.stats.mean == pytest.approx((0.6 + 1.0 + 0.8) / 3)
    assert [(u.unit, u.label, u.class_name) for u in result.units] == [
        (0, "puppy", "dog"),
        (1, "car", "car"),
        (2, "dog", "cat"),
    ]
    assert [u.similarity for u in result.units] == pytest.approx([0.6, 1.0, 0.8])
    assert len(embedder.calls) == 1  # labels and class names in one batch


def test_layer_choice_and_units_without_a_class():
    embedders = [TableEmbedder("table", VECTORS)]
    two_layers = output_layer(["dog"], "fc")
    two_layers.rows.append(LabelRow(layer="layer4", unit=0, labels=["car"]))
    with pytest.raises(DnDError, match="has layers fc, layer4: choose the output layer"):
        evaluate_final_layer(two_layers, ["dog"], embedders, bins=4)
    assert evaluate_final_layer(two_layers, ["car"], embedders, bins=4, layer="layer4")[0].stats.mean == pytest.approx(
        1
    )
    with pytest.raises(DnDError, match="layer head is not in labels.csv; it has: fc, layer4"):
        evaluate_final_layer(two_layers, ["dog"], embedders, bins=4, layer="head")
    with pytest.raises(DnDError, match=r"units \[2\] of fc have no class \(the classes file names 2\)"):
        evaluate_final_layer(output_layer(["dog", "car", "cat"]), ["dog", "car"], embedders, bins=4)


def test_final_layer_command(tmp_path, monkeypatch):
    monkeypatch.setattr(dnd.commands, "_embedders", lambda specs, device: [TableEmbedder("table", VECTORS)])
    (tmp_path / "classes.txt").write_text(CLASSES)
    (tmp_path / "net_fc.csv").write_text("Neuron ID,label\n0,puppy\n1,car\n2,dog\n")
    classes = ["--classes", str(tmp_path / "classes.txt")]

    result = CliRunner().invoke(app, ["evaluate", "final-layer", str(tmp_path / "net_fc.csv"), *classes])
    assert result.exit_code == 0, result.output
    assert "fc table 3 0.8000 0.1633" in " ".join(result.output.split())

    result = CliRunner().invoke(app, ["evaluate", "final-layer", str(tmp_path / "nope_fc.csv"), *classes])
    assert result.exit_code == 2 and "nope_fc.csv cannot be read: no such file" in " ".join(result.output.split())
    result = CliRunner().invoke(app, ["evaluate", "final-layer", str(tmp_path / "net_fc.csv"), "-l", "fc8", *classes])
    assert result.exit_code == 2 and "layer fc8 is not in" in result.output


def test_final_layer_help_has_an_example():
    result = CliRunner().invoke(app, ["evaluate", "final-layer", "--help"])
    assert "Example: dnd evaluate final-layer" in " ".join(result.output.split())
