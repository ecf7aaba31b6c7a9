"""Final-layer evaluation: each output unit's label against its class name, with a table embedder."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import dnd.backends.embedders
import dnd.backends.loading
import dnd.cli.spaces
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


def test_class_names_are_first_synonyms_or_full_lines(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text(CLASSES + "\n")
    assert read_class_names(path) == ["dog", "car", "cat"]
    assert read_class_names(path, "full-line") == ["dog, domestic dog, Canis familiaris", "car, auto", "cat"]
    with pytest.raises(DnDError, match="ground truth 'last' is not one of: first-synonym, full-line"):
        read_class_names(path, "last")  # type: ignore[arg-type]
    path.write_text("dog\n\ncat\n")
    with pytest.raises(DnDError, match=r"line\(s\) \[2\] have no class name"):
        read_class_names(path)
    with pytest.raises(DnDError, match="classes file .* not found"):
        read_class_names(tmp_path / "missing.txt")


def test_places365_categories_are_reduced_as_clip_dissect_does(tmp_path):
    path = tmp_path / "categories_places365.txt"
    path.write_text("/a/airfield 0\n/a/apartment_building/outdoor 8\n/b/bamboo_forest 17\n")
    expected = ["airfield", "apartment_building/outdoor", "bamboo_forest"]
    assert read_class_names(path) == read_class_names(path, "full-line") == expected


def test_mean_similarity_to_the_class_names_is_exact():
    embedder = TableEmbedder("table", VECTORS)
    (result,) = evaluate_final_layer(
        output_layer(["puppy", "car", "dog"]), {"first-synonym": ["dog", "car", "cat"]}, [embedder], bins=4
    )
    assert (result.layer, result.ground_truth, result.embedder, result.stats.n) == ("fc", "first-synonym", "table", 3)
    assert result.stats.mean == pytest.approx((0.6 + 1.0 + 0.8) / 3)
    assert [(u.unit, u.label, u.class_name) for u in result.units] == [
        (0, "puppy", "dog"),
        (1, "car", "car"),
        (2, "dog", "cat"),
    ]
    assert [u.similarity for u in result.units] == pytest.approx([0.6, 1.0, 0.8])
    assert len(embedder.calls) == 1  # labels and class names in one batch


def test_both_ground_truths_in_one_batch_per_embedder():
    table = {**VECTORS, "dog, hound": [0.8, 0.6], "car, auto": [0.6, 0.8]}
    embedders = [TableEmbedder("a", table), TableEmbedder("b", table)]
    truths = {"first-synonym": ["dog", "car"], "full-line": ["dog, hound", "car, auto"]}
    results = evaluate_final_layer(output_layer(["dog", "car"]), truths, embedders, bins=4)
    assert [(r.embedder, r.ground_truth) for r in results] == [
        ("a", "first-synonym"),
        ("a", "full-line"),
        ("b", "first-synonym"),
        ("b", "full-line"),
    ]
    assert [r.stats.mean for r in results[:2]] == pytest.approx([1.0, 0.8])
    assert [u.class_name for u in results[1].units] == ["dog, hound", "car, auto"]
    assert [len(e.calls) for e in embedders] == [1, 1]
    assert embedders[0].calls[0] == ["dog", "car", "dog", "car", "dog, hound", "car, auto"]


def test_layer_choice_and_units_without_a_class():
    embedders = [TableEmbedder("table", VECTORS)]
    two_layers = output_layer(["dog"], "fc")
    two_layers.rows.append(LabelRow(layer="layer4", unit=0, labels=["car"]))
    with pytest.raises(DnDError, match="has layers fc, layer4: choose the output layer"):
        evaluate_final_layer(two_layers, {"first-synonym": ["dog"]}, embedders, bins=4)
    result = evaluate_final_layer(two_layers, {"first-synonym": ["car"]}, embedders, bins=4, layer="layer4")
    assert result[0].stats.mean == pytest.approx(1)
    with pytest.raises(DnDError, match="layer head is not in labels.csv; it has: fc, layer4"):
        evaluate_final_layer(two_layers, {"first-synonym": ["dog"]}, embedders, bins=4, layer="head")
    with pytest.raises(DnDError, match=r"units \[2\] of fc have no class \(the classes file names 2\)"):
        evaluate_final_layer(output_layer(["dog", "car", "cat"]), {"full-line": ["dog", "car"]}, embedders, bins=4)


def test_final_layer_command(tmp_path, monkeypatch):
    table = {**VECTORS, "dog, domestic dog, Canis familiaris": [1, 0], "car, auto": [0.8, 0.6]}
    monkeypatch.setattr(dnd.cli.spaces, "embedders", lambda specs, device: [TableEmbedder("table", table)])
    (tmp_path / "classes.txt").write_text(CLASSES)
    (tmp_path / "net_fc.csv").write_text("Neuron ID,label\n0,puppy\n1,car\n2,dog\n")
    classes = ["--classes", str(tmp_path / "classes.txt"), "-e", "table"]

    result = CliRunner().invoke(app, ["evaluate", "final-layer", str(tmp_path / "net_fc.csv"), *classes])
    assert result.exit_code == 0, result.output
    words = " ".join(result.output.split())
    assert "net_fc.csv, fc: labels vs class names (first-synonym) embedder n mean std" in words
    assert "(first-synonym) embedder n mean std q1 median q3 −1 … 1 ─" in words
    first, full = words.split("(full-line)")
    assert "table 3 0.8000 0.1633" in first  # (0.6 + 1 + 0.8) / 3
    assert "table 3 0.6667 0.0943" in full  # (0.6 + 0.6 + 0.8) / 3

    result = CliRunner().invoke(
        app, ["evaluate", "final-layer", str(tmp_path / "net_fc.csv"), *classes, "--ground-truth", "full-line"]
    )
    assert "(first-synonym)" not in result.output and "table 3 0.6667" in " ".join(result.output.split())
    result = CliRunner().invoke(app, ["evaluate", "final-layer", str(tmp_path / "net_fc.csv"), *classes, "-g", "all"])
    assert result.exit_code == 2 and "--ground-truth 'all': choose first-synonym or full-line" in result.output

    result = CliRunner().invoke(app, ["evaluate", "final-layer", str(tmp_path / "nope_fc.csv"), *classes])
    assert result.exit_code == 2 and "nope_fc.csv cannot be read: no such file" in " ".join(result.output.split())
    result = CliRunner().invoke(app, ["evaluate", "final-layer", str(tmp_path / "net_fc.csv"), "-l", "fc8", *classes])
    assert result.exit_code == 2 and "layer fc8 is not in" in result.output


def test_without_embedders_the_paper_spaces_fall_back_to_minilm_and_say_so(tmp_path, monkeypatch):
    loaded = []

    def load(spec, config, device, store=None):
        loaded.append(spec)
        return TableEmbedder(spec, VECTORS)

    monkeypatch.setattr(dnd.backends.embedders, "load_text_embedder", load)
    (tmp_path / "classes.txt").write_text(CLASSES)
    (tmp_path / "net_fc.csv").write_text("Neuron ID,label\n0,puppy\n1,car\n2,dog\n")
    args = ["evaluate", "final-layer", str(tmp_path / "net_fc.csv"), "--classes", str(tmp_path / "classes.txt")]
    args += ["--ground-truth", "first-synonym"]

    result = CliRunner().invoke(app, args)  # tests run with HF_HUB_OFFLINE=1: neither paper space can be had
    assert result.exit_code == 0, result.output
    assert loaded == ["minilm"]
    words = " ".join(result.output.split())
    assert "minilm 3 0.8000" in words
    assert "note: minilm stands in for clip and mpnet, which could not be loaded here" in words
    assert "not comparable with published clip and mpnet numbers" in words
    assert "clip: HF_HUB_OFFLINE is set and it is not in the local Hugging Face cache" in words

    loaded.clear()
    monkeypatch.setattr(dnd.backends.loading, "hub_unavailable", lambda model: None)  # as where the hub answers
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0 and loaded == ["clip", "mpnet"] and "stands in" not in result.output


def test_final_layer_help_has_an_example():
    result = CliRunner().invoke(app, ["evaluate", "final-layer", "--help"])
    assert "Example: dnd evaluate final-layer" in " ".join(result.output.split())
