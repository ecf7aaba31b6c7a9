"""Readers of published label files: the shared samples, and malformed rows reported with their line numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from dnd.compare.readers import read_label_source, read_labels
from dnd.errors import DnDError


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


# --- the published samples in ../shared/reference ----------------------------------------------------------------


def test_clip_dissect_sample(shared):
    labels = read_labels(shared / "reference/clip-dissect/resnet50_imagenet_broden.csv")
    assert (labels.method, len(labels.rows), labels.warnings) == ("clip-dissect", 3904, [])
    assert labels.layers() == ["conv1", "layer1", "layer2", "layer3", "layer4"]
    assert [len(labels.units(layer)) for layer in labels.layers()] == [64, 256, 512, 1024, 2048]
    first = labels.rows[0]
    assert (first.layer, first.unit, first.labels, first.score) == ("conv1", 0, ["red"], pytest.approx(0.25616455))


def test_dnd_samples_take_their_layer_from_the_file_name(shared):
    layer2 = read_labels(shared / "reference/dnd/resnet50_imagenet_broden_layer2.csv")
    assert (layer2.method, layer2.layers(), len(layer2.rows), layer2.warnings) == ("dnd", ["layer2"], 50, [])
    assert layer2.units("layer2")[25].labels == ["checkerboard patterns", "checkered and polka dot patterns"]
    assert [row.unit for row in layer2.rows if len(row.labels) < 3] == [25, 27, 174, 295, 411, 467]

    fc = read_labels(shared / "reference/dnd/resnet50_imagenet_broden_fc.csv")
    assert (fc.layers(), len(fc.rows), fc.warnings) == (["fc"], 1000, [])
    assert fc.units("fc")[416].labels == ["womens gymnastics performances"]  # stored as """...""" in the file

    assert read_labels(shared / "reference/dnd/resnet50_imagenet_broden_fc.csv", layer="output").layers() == ["output"]


def test_milan_sample(shared):
    labels = read_labels(shared / "reference/milan/m_base_resnet50_imagenet.csv")
    assert (labels.method, len(labels.rows), labels.warnings) == ("milan", 4904, [])
    assert sorted(labels.units("fc")) == list(range(1000))
    assert labels.units("conv1")[0].labels == ["Black lettering and numbers"]


def test_netdissect_units_become_zero_based(shared):
    labels = read_labels(shared / "reference/netdissect/resnet50_imagenet_fc.csv")
    assert (labels.method, labels.layers(), len(labels.rows), labels.warnings) == ("netdissect", ["fc"], 1000, [])
    first = labels.units("fc")[0]  # the file's unit 1
    assert (first.labels, first.score) == (["scaly"], pytest.approx(0.143712575))
    assert sorted(labels.units("fc")) == list(range(1000))
    assert len(read_labels(shared / "reference/netdissect/resnet50_imagenet_layer3.csv").units("layer3")) == 1024


def test_a_glob_reads_per_layer_files_as_one_set(shared):
    labels = read_label_source(str(shared / "reference/dnd/resnet50_imagenet_broden_layer?.csv"))
    assert labels.layers() == ["layer1", "layer2", "layer3", "layer4"]
    assert len(labels.rows) == 200


# --- malformed input ---------------------------------------------------------------------------------------------


def test_bad_rows_are_reported_with_line_numbers(tmp_path):
    path = write(
        tmp_path,
        "descriptions.csv",
        "layer,unit,description,similarity\n"
        "conv1,0,red,0.25\n"  # line 2: fine
        "conv1,x,blue,0.1\n"  # 3: unit not a number
        "\n"  # 4: blank, skipped
        "conv1,2,,0.1\n"  # 5: no label
        "conv1,3,green,high\n"  # 6: score not a number
        "conv1,4,teal\n"  # 7: no similarity cell
        'conv1,5,"two\nlines",0.2\n'  # 8-9: a quoted label over two lines, fine
        "conv1,0,red again,0.3\n"  # 10: unit 0 repeated
        "conv1,6,pink,0.1,extra\n"  # 11: one cell too many
        ",7,grey,0.1\n",  # 12: no layer
    )
    labels = read_labels(path)
    assert [(row.unit, row.labels) for row in labels.rows] == [(0, ["red"]), (5, ["two\nlines"])]
    assert [warning.split(": ", 1) for warning in labels.warnings] == [
        ["descriptions.csv:3", "unit 'x' is not a whole number"],
        ["descriptions.csv:5", "unit 2 has no label"],
        ["descriptions.csv:6", "score 'high' is not a number"],
        ["descriptions.csv:7", "no value for column 'similarity'"],
        ["descriptions.csv:10", "unit 0 of conv1 already given on line 2; this row is ignored"],
        ["descriptions.csv:11", "1 more cell(s) than the header's columns"],
        ["descriptions.csv:12", "empty layer"],
    ]


def test_dnd_blank_labels_and_bad_ids(tmp_path):
    path = write(
        tmp_path,
        "net_layer4.csv",
        "Neuron ID,Label 1,Label 2,Label 3\n3,dogs, ,\n4, , ,\n-1,cats,,\n7,birds\n",
    )
    labels = read_labels(path)
    assert labels.method == "dnd"
    assert [(row.layer, row.unit, row.labels) for row in labels.rows] == [
        ("layer4", 3, ["dogs"]),
        ("layer4", 7, ["birds"]),
    ]
    assert labels.warnings == ["net_layer4.csv:3: unit 4 has no label", "net_layer4.csv:4: unit -1 is negative"]


def test_netdissect_unit_zero_is_reported(tmp_path):
    path = write(tmp_path, "net_fc.csv", "unit,category,label,score\n1,texture,scaly,0.1\n0,object,dog,0.2\n")
    labels = read_labels(path)
    assert labels.method == "netdissect"
    assert [(row.unit, row.labels) for row in labels.rows] == [(0, ["scaly"])]
    assert labels.warnings == ["net_fc.csv:3: unit 0 is not 1-based (NetDissect numbers units from 1)"]


def test_files_without_a_layer_column_need_a_layer(tmp_path):
    path = write(tmp_path, "labels.csv", "Neuron ID,label\n0,dogs\n")
    with pytest.raises(DnDError, match=r"labels\.csv \(dnd\) has no layer column.*labels\.csv:<layer>\)"):
        read_labels(path)
    assert read_label_source(f"{path}:layer3").layers() == ["layer3"]


def test_our_final_results_take_their_layer_from_the_layer_folder(tmp_path):
    (tmp_path / "blocks.10").mkdir()
    path = write(tmp_path / "blocks.10", "final_results.csv", "Neuron ID,Label 1,Label 2,Label 3\n0,dogs,cats,\n")
    labels = read_labels(path)
    assert (labels.layers(), labels.units("blocks.10")[0].labels) == (["blocks.10"], ["dogs", "cats"])
    assert read_label_source(f"{path}:fc").layers() == ["fc"]


def test_unreadable_inputs_are_clear_errors(tmp_path):
    with pytest.raises(DnDError, match="missing.csv cannot be read: no such file"):
        read_labels(tmp_path / "missing.csv")
    with pytest.raises(DnDError, match="unknown label file format .* Known headers: clip-dissect: layer,unit"):
        read_labels(write(tmp_path, "odd.csv", "a,b\n1,2\n"))
    with pytest.raises(DnDError, match="no label file matches"):
        read_label_source(str(tmp_path / "*_layer?.csv"))
    with pytest.raises(DnDError, match="needs the score stage"):
        read_labels(tmp_path)  # a folder: one of our runs, once stage 6 exists
