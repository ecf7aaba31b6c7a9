"""Agreement between label sets, on hand-made sets and a table embedder whose similarities are known exactly."""

from __future__ import annotations

import csv
import json
import math

import pytest
from typer.testing import CliRunner

import dnd.cli.spaces
from dnd.cli import app
from dnd.compare.agreement import compare_label_sets, write_results
from dnd.compare.readers import LabelRow, LabelSet
from dnd.errors import DnDError
from tests.compare.fakes import TableEmbedder

# Unit vectors: dog·puppy = 0.6, dog·cat = 0.8, dog·bird = −1, car·car = 1.
VECTORS = {"dog": [1, 0], "puppy": [0.6, 0.8], "car": [0, 1], "cat": [0.8, 0.6], "bird": [-1, 0]}


def label_set(source: str, rows: list[tuple[str, int, str]]) -> LabelSet:
    return LabelSet(
        source=source,
        method="test",
        rows=[LabelRow(layer=layer, unit=unit, labels=[label, "ignored runner-up"]) for layer, unit, label in rows],
    )


OURS = label_set("ours.csv", [("layer1", 0, "dog"), ("layer1", 1, "car"), ("layer1", 2, "cat"), ("layer1", 3, "bird")])
OURS.rows.append(LabelRow(layer="layer2", unit=0, labels=["dog"]))
THEIRS = label_set(
    "theirs.csv",
    [("layer1", 0, "puppy"), ("layer1", 1, "car"), ("layer1", 2, "dog"), ("layer1", 3, "dog"), ("layer1", 9, "cat")],
)


def test_per_layer_statistics_are_exact():
    table, flat = TableEmbedder("table", VECTORS), TableEmbedder("flat", {text: [1, 1] for text in VECTORS})

    results = compare_label_sets([OURS, THEIRS], [table, flat], bins=4)

    assert [(r.sources, r.embedder, r.layer) for r in results] == [
        (("ours.csv", "theirs.csv"), "table", "layer1"),
        (("ours.csv", "theirs.csv"), "flat", "layer1"),
    ]
    stats = results[0].stats
    # similarities of units 0-3: 0.6, 1.0, 0.8, -1.0 (unit 9 and layer2 are not in both sets)
    assert stats.n == 4
    assert stats.mean == pytest.approx(0.35)
    assert stats.std == pytest.approx(math.sqrt((0.25**2 + 0.65**2 + 0.45**2 + 1.35**2) / 4))
    assert (stats.min, stats.q1, stats.median, stats.q3, stats.max) == pytest.approx((-1, 0.2, 0.7, 0.85, 1))
    assert stats.histogram == [1, 0, 0, 3]  # bins over [-1, 1]: [-1, -0.5), ..., [0.5, 1]
    worst = results[0].most_disagreeing(2)
    assert [(n.unit, n.labels, n.similarity) for n in worst] == [
        (3, ("bird", "dog"), pytest.approx(-1)),
        (0, ("dog", "puppy"), pytest.approx(0.6)),
    ]
    assert results[1].stats.mean == pytest.approx(1) and results[1].stats.std == pytest.approx(0, abs=1e-7)
    # each space embeds each distinct first label once
    assert table.calls == flat.calls == [["bird", "car", "cat", "dog", "puppy"]]


def test_three_sets_compare_pairwise_and_layers_can_be_chosen():
    third = label_set("third.csv", [("layer1", 1, "cat"), ("layer2", 0, "puppy")])
    results = compare_label_sets([OURS, THEIRS, third], [TableEmbedder("table", VECTORS)], bins=2, layers=["layer1"])
    assert [(r.sources, r.layer, r.stats.n) for r in results] == [
        (("ours.csv", "theirs.csv"), "layer1", 4),
        (("ours.csv", "third.csv"), "layer1", 1),
        (("theirs.csv", "third.csv"), "layer1", 1),
    ]
    assert results[1].neurons[0].similarity == pytest.approx(0.6)  # car·cat


def never_loaded():
    """Embedders that must not be reached: the input is checked before any model loads."""
    raise AssertionError("an embedder was loaded for input that does not align")
    yield


def test_errors_name_what_is_wrong():
    with pytest.raises(DnDError, match="layer layer9 is not in ours.csv; it has: layer1, layer2"):
        compare_label_sets([OURS, THEIRS], never_loaded(), bins=4, layers=["layer9"])
    elsewhere = label_set("elsewhere.csv", [("layer5", 0, "dog")])
    with pytest.raises(DnDError, match=r"ours.csv and elsewhere.csv have no neuron in common.*layer5 \(units 0–0"):
        compare_label_sets([OURS, elsewhere], never_loaded(), bins=4)
    with pytest.raises(DnDError, match="at least two"):
        compare_label_sets([OURS], never_loaded(), bins=4)


def test_results_export_as_csv_and_json(tmp_path):
    results = compare_label_sets([OURS, THEIRS], [TableEmbedder("table", VECTORS)], bins=4)

    write_results(results, tmp_path / "agreement.csv")
    rows = list(csv.DictReader((tmp_path / "agreement.csv").open()))
    assert len(rows) == 1
    assert (rows[0]["source_a"], rows[0]["layer"], rows[0]["n"]) == ("ours.csv", "layer1", "4")
    assert float(rows[0]["mean"]) == pytest.approx(0.35) and float(rows[0]["max"]) == pytest.approx(1)

    write_results(results, tmp_path / "agreement.json")
    data = json.loads((tmp_path / "agreement.json").read_text())
    assert data[0]["stats"]["histogram"] == [1, 0, 0, 3]
    assert [n["unit"] for n in data[0]["neurons"]] == [0, 1, 2, 3]

    with pytest.raises(DnDError, match=r"\.csv or a \.json"):
        write_results(results, tmp_path / "agreement.txt")


# --- the command -------------------------------------------------------------------------------------------------


@pytest.fixture
def files(tmp_path, monkeypatch):
    """Two label files in different formats, and a table embedder behind --embedder."""
    ours = tmp_path / "descriptions.csv"
    ours.write_text("layer,unit,description,similarity\nlayer1,0,dog,0.3\nlayer1,1,car,0.2\nlayer1,2,cat,0.1\n")
    theirs = tmp_path / "net_layer1.csv"
    theirs.write_text("Neuron ID,Label 1,Label 2\n0,puppy,dog\n1,car,\n2,dog,cat\nbad,dog,\n")
    monkeypatch.setattr(dnd.cli.spaces, "embedders", lambda specs, device: [TableEmbedder("table", VECTORS)])
    return ours, theirs


def test_compare_command_prints_tables_and_writes_results(files, tmp_path):
    ours, theirs = files
    result = CliRunner().invoke(app, ["compare", str(ours), str(theirs), "--out", str(tmp_path / "a.json")])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "descriptions.csv vs net_layer1.csv" in text
    assert "layer1 table 3 0.8000 0.1633" in text  # n, mean of 0.6, 1.0, 0.8 and its population std
    assert "most disagreeing: layer1, table" in text and "0 0.600 dog puppy" in text
    assert "net_layer1.csv:5: unit 'bad' is not a whole number" in text  # the bad row is reported
    assert json.loads((tmp_path / "a.json").read_text())[0]["stats"]["n"] == 3


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["missing.csv"], "missing.csv cannot be read: no such file"),
        (["--layer", "layer4"], "layer layer4 is not in"),
        (["other_layer2.csv"], "have no neuron in common"),
    ],
)
def test_compare_command_errors(files, tmp_path, extra, message):
    ours, theirs = files
    (tmp_path / "other_layer2.csv").write_text("Neuron ID,label\n0,dog\n")
    args = [str(ours), *(str(tmp_path / e) if e.endswith(".csv") else e for e in extra)]
    if not extra[0].endswith(".csv"):
        args.append(str(theirs))
    result = CliRunner().invoke(app, ["compare", *args])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_compare_help_has_an_example():
    result = CliRunner().invoke(app, ["compare", "--help"])
    assert "Example: dnd compare" in " ".join(result.output.split())
