"""Simulation: a colour neuron labelled with its colour is simulated well, with another colour or shuffled labels not;
the split is deterministic; the correlations match numpy and scipy-style ranks; bad input is explained."""

from __future__ import annotations

import csv
import re

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import dnd.evaluate.baselines
import dnd.image_embeddings
from dnd.backends.caption_space import CaptionSpace
from dnd.backends.container import Backends
from dnd.backends.embedders import load_image_text_model
from dnd.backends.target_network import TargetNetwork
from dnd.cli import app
from dnd.compare.readers import LabelRow, LabelSet
from dnd.config import EmbedConfig
from dnd.errors import DnDError
from dnd.evaluate.baselines import CONSTANT, SHUFFLED, quality_sources
from dnd.evaluate.simulation import average_ranks, correlations, evaluate_simulation, split_rows
from dnd.pipeline import Pipeline
from dnd.store import ItemCache
from tests.compare.fakes import TableEmbedder
from tests.fakes import ChannelMeans, ColourCaptioner
from tests.helpers import make_config, to_tensor, write_cifar_config
from tests.tiny_models import tiny_clip

#: Texts as unit vectors: each colour its own axis, "images" equally near all three.
VECTORS = {"red": [1, 0, 0], "green": [0, 1, 0], "blue": [0, 0, 1], "images": [1, 1, 1]}


def colour_images(folder, count: int = 40, seed: int = 0):
    """``count`` uniform 8×8 images of random colours, so the three channels vary independently."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i in range(count):
        Image.new("RGB", (8, 8), tuple(int(v) for v in rng.integers(0, 256, 3))).save(folder / f"{i:03d}.png")
    return folder


def label_set(labels: dict[int, str], layer: str = "features", source: str = "labels.csv") -> LabelSet:
    rows = [LabelRow(layer=layer, unit=unit, labels=[text]) for unit, text in labels.items()]
    return LabelSet(source=source, method="test", rows=rows)


@pytest.fixture
def run(tmp_path):
    """A pipeline over 40 random colours with the channel-mean network, and the caption space over its captions."""
    config = make_config(tmp_path, colour_images(tmp_path / "colours"))
    pipeline = Pipeline(config, Backends(config, target=TargetNetwork("means", ChannelMeans(), to_tensor)))
    captioner = ColourCaptioner()
    space = CaptionSpace(
        lambda: captioner, captioner.name, ItemCache(tmp_path / "cache", "captions"), TableEmbedder("t", VECTORS)
    )
    return pipeline, space, captioner


def test_a_colour_neuron_labelled_with_its_colour_is_simulated_and_the_baselines_are_not(run):
    pipeline, space, captioner = run
    right = label_set({0: "red", 1: "green", 2: "blue"})
    wrong = label_set({0: "green", 1: "blue", 2: "red"}, source="wrong.csv")
    sources = quality_sources(right, "features", None, seed=0, shuffles=30)
    sources["wrong.csv"] = [wrong]

    evaluation = evaluate_simulation(pipeline, sources, "features", space)

    results = {result.source: result for result in evaluation.results}
    assert list(results) == ["labels.csv", SHUFFLED, CONSTANT, "wrong.csv"]
    assert (evaluation.n_fit, evaluation.n_held_out, evaluation.simulator) == (20, 20, space.model)
    # The right colour predicts its channel (the dominant colour goes with a high mean of that channel).
    assert results["labels.csv"].pearson.mean > 0.5 and results["labels.csv"].spearman.mean > 0.5
    assert results["labels.csv"].pearson.share_above == 1.0
    assert results["wrong.csv"].pearson.mean < 0
    assert results["labels.csv"].pearson.mean > results["wrong.csv"].pearson.mean + 0.6
    # Shuffled over 30 draws: near zero. The constant label predicts the same for every image: exactly zero.
    assert results[SHUFFLED].draws == 30 and abs(results[SHUFFLED].pearson.mean) < 0.1
    assert results[CONSTANT].pearson.mean == 0 and results[CONSTANT].pearson.share_above == 0
    # Against each later set, the first's lead per neuron with its interval: clear of 0 for the wrong colours.
    assert results["labels.csv"].first_minus_this is None
    versus_wrong = results["wrong.csv"].first_minus_this
    assert versus_wrong.items == 3 and versus_wrong.low > 0.3
    assert versus_wrong.mean == pytest.approx(results["labels.csv"].pearson.mean - results["wrong.csv"].pearson.mean)
    versus_shuffled = results[SHUFFLED].first_minus_this  # 30 draws: each neuron's mean over them
    assert versus_shuffled.mean == pytest.approx(results["labels.csv"].pearson.mean - results[SHUFFLED].pearson.mean)
    # Per neuron, the held-out Pearson is numpy's over the held-out rows.
    activations = pipeline.context.probe
    held = split_rows(activations.ids, 0)[1]
    red = np.array([np.asarray(activations.load(i), dtype=np.float64)[..., 0].mean() / 255 for i in held])
    predicted = np.array([float(captioner.caption([activations.load(i)])[0] == "red") for i in held])
    neuron = next(n for n in results["labels.csv"].neurons if n.unit == 0)
    assert neuron.pearson == pytest.approx(np.corrcoef(red, predicted)[0, 1], abs=1e-4)
    # Every image was captioned once; a second evaluation captions nothing and gives the same numbers.
    assert captioner.captioned == 40 + 20  # the evaluation's 40, then this test's own look at the held-out 20
    assert evaluate_simulation(pipeline, sources, "features", space) == evaluation
    assert captioner.captioned == 60


def test_the_split_is_deterministic_and_ignores_order():
    ids = [f"img{i:03d}.png" for i in range(101)]
    fit, held = split_rows(ids, seed=0)
    assert (len(fit), len(held)) == (50, 51) and sorted(fit + held) == list(range(101))
    assert split_rows(ids, seed=0) == (fit, held)
    assert split_rows(ids, seed=1) != (fit, held)
    reversed_fit, _ = split_rows(ids[::-1], seed=0)
    assert sorted(ids[::-1][row] for row in reversed_fit) == sorted(ids[row] for row in fit)


def test_ranks_average_ties_and_correlations_match_numpy():
    values = torch.tensor([[3.0, 1.0], [1.0, 1.0], [3.0, 2.0], [2.0, 5.0]])
    assert average_ranks(values).tolist() == [[2.5, 0.5], [0.0, 0.5], [2.5, 2.0], [1.0, 3.0]]
    rng = np.random.default_rng(0)
    a, p = rng.normal(size=(50, 3)), rng.normal(size=(50, 3))
    expected = [np.corrcoef(a[:, j], p[:, j])[0, 1] for j in range(3)]
    assert correlations(torch.tensor(a), torch.tensor(p)).tolist() == pytest.approx(expected)
    assert correlations(torch.ones(5, 1), torch.arange(5.0)[:, None]).tolist() == [0.0]  # constant: undefined


def test_bad_input_is_explained(run):
    pipeline, space, _ = run
    with pytest.raises(DnDError, match="layer head is not in labels.csv; it has: features"):
        evaluate_simulation(pipeline, {"x": [label_set({0: "red"})]}, "head", space)
    with pytest.raises(DnDError, match=r"labels units \[7\] of features, but this network's features has 3 neurons"):
        evaluate_simulation(pipeline, {"x": [label_set({0: "red", 7: "blue"})]}, "features", space)


def test_any_transformers_image_text_model_can_simulate(tmp_path, run):
    pipeline, _, _ = run
    model = load_image_text_model(str(tiny_clip(tmp_path / "clip")), EmbedConfig(batch_size=7), torch.device("cpu"))
    sources = {"labels.csv": [label_set({0: "red", 1: "green", 2: "blue"})]}

    evaluation = evaluate_simulation(pipeline, sources, "features", model)

    # The same correlations as by hand from the model's own embeddings of the held-out images and the labels.
    probe = pipeline.context.probe
    held = split_rows(probe.ids, 0)[1]
    predicted = model.embed_images([probe.load(i) for i in held]) @ model.embed(["red", "green", "blue"]).T
    means = torch.stack([to_tensor(probe.load(i)).mean(dim=(1, 2)) for i in held])  # [held, 3]
    expected = correlations(means, predicted).tolist()
    assert [neuron.pearson for neuron in evaluation.results[0].neurons] == pytest.approx(expected, abs=1e-4)
    assert evaluation.simulator == str(tmp_path / "clip")


def test_simulation_command_prints_labels_and_baselines(tmp_path, monkeypatch):
    config = write_cifar_config(tmp_path, images=20)  # a randomly initialised CIFAR ResNet-20
    space = CaptionSpace(
        ColourCaptioner, "stub", ItemCache(tmp_path / "cache", "captions"), TableEmbedder("t", VECTORS)
    )
    monkeypatch.setattr(dnd.image_embeddings, "image_text_space", lambda spec, backends: (space, "offline"))
    monkeypatch.setattr(dnd.evaluate.baselines, "run_captions", lambda pipeline, layer, units: None)
    (tmp_path / "resnet20_layer3.csv").write_text("Neuron ID,Label 1\n0,red\n1,green\n5,blue\n")
    args = ["evaluate", "simulation", str(tmp_path / "resnet20_layer3.csv"), "-c", str(config), "-l", "layer3"]
    args += ["--simulator", "captions", "--out", str(tmp_path / "simulation.csv")]

    result = CliRunner().invoke(app, args)

    assert result.exit_code == 0, result.output
    words = " ".join(result.output.split())
    assert "simulation of layer3: held-out correlation of activations with captions predictions" in words
    assert "(10 held-out images, 10 fit)" in words
    assert re.search(r"resnet20_layer3.csv 3 -?[0-9.]+", words) and "shuffled ×5 15" in words
    assert "constant 'images' 3 0.0000" in words and "note: the offline stand-in simulated" in words
    assert "resnet20_layer3.csv against the others, neuron by neuron: its Pearson minus theirs" in words
    assert re.search(r"shuffled ×5 [+-][0-9.]+ \[[+-][0-9.]+, [+-][0-9.]+\] 3 ", words)
    with (tmp_path / "simulation.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["source"], row["unit"], row["label"]) for row in rows[:3]] == [
        ("resnet20_layer3.csv", "0", "red"),
        ("resnet20_layer3.csv", "1", "green"),
        ("resnet20_layer3.csv", "5", "blue"),
    ]
    assert len(rows) == 3 + 15 + 3
    bad = CliRunner().invoke(app, [*args[:-2], "-l", "layer2"])
    assert bad.exit_code == 2 and "layer layer2 is not in" in " ".join(bad.output.split())
