"""The stage kernel: specs, carrying upstream failures through one function, and writing a per-neuron stage so
that the neurons it did not compute are kept."""

from __future__ import annotations

import json

import pytest

from dnd.artifacts import (
    Caption,
    Captions,
    Concepts,
    ExemplarImage,
    Exemplars,
    NeuronCaptions,
    NeuronConcepts,
    NeuronExemplars,
    TopImages,
)
from dnd.backends.container import Backends
from dnd.stages.base import (
    Requirement,
    StageContext,
    StageJob,
    StageOutput,
    StageSpec,
    neuron_entry_type,
    read_upstream,
    run_neurons,
)
from dnd.store import StageStore, write_model
from tests.helpers import make_config

LAYER = "conv"


def exemplars(neuron: int, count: int = 1) -> NeuronExemplars:
    images = [ExemplarImage(image_id=f"img{i}.png", probe_index=i, activation=1.0) for i in range(count)]
    return NeuronExemplars(neuron=neuron, exemplars=images, candidates=count)


def captions(neuron: int, *texts: str) -> NeuronCaptions:
    return NeuronCaptions(
        neuron=neuron, captions=[Caption(image_id=f"img{i}.png", text=t) for i, t in enumerate(texts)]
    )


def write_upstream(store: StageStore, stage: str, artifact) -> StageOutput:
    with store.writing(LAYER, stage, "k") as out:
        write_model(out / "artifact.json", artifact)
    return StageOutput(store.stage_dir(LAYER, stage, "k"), type(artifact))


def summarising(compute) -> StageSpec:
    """A per-neuron stage that needs crop and caption (caption's reason first) and computes with ``compute``."""
    return StageSpec(
        "summarize",
        1,
        ("crop", "caption"),
        ("summarize",),
        Concepts,
        compute=compute,
        requires={"caption": Requirement(lambda entry: entry.captions, "no captions for this neuron")},
    )


@pytest.fixture
def store(tmp_path) -> StageStore:
    return StageStore(tmp_path / "run")


@pytest.fixture
def job(store) -> StageJob:
    """Neurons 0-4: 0 usable; 1 failed in crop; 2 failed in caption; 3 failed in both; 4 without captions."""
    crop = Exemplars(
        layer=LAYER,
        cropped=True,
        neurons=[
            exemplars(0),
            NeuronExemplars(neuron=1, failed="unreadable"),
            exemplars(2),
            NeuronExemplars(neuron=3, failed="unreadable"),
            exemplars(4),
        ],
    )
    caption = Captions(
        layer=LAYER,
        captioner="c",
        neurons=[
            captions(0, "a cat"),
            captions(1, "a cat"),
            NeuronCaptions(neuron=2, failed="server down"),
            NeuronCaptions(neuron=3, failed="crop stage failed: unreadable"),
            captions(4),
        ],
    )
    upstream = {"crop": write_upstream(store, "crop", crop), "caption": write_upstream(store, "caption", caption)}
    return StageJob(LAYER, "key", {"stage": "summarize"}, upstream, neurons=[4, 3, 2, 1, 0, 5])


def test_a_spec_is_a_layer_stage_or_a_per_neuron_stage():
    with pytest.raises(TypeError, match="exactly one of run"):
        StageSpec("x", 1, (), (), TopImages)
    with pytest.raises(TypeError, match="must be a PerNeuronArtifact"):
        StageSpec("x", 1, (), (), TopImages, compute=lambda ctx, work: None)
    with pytest.raises(TypeError, match=r"requires \['crop'\], which it does not need"):
        StageSpec("x", 1, (), (), Concepts, compute=lambda ctx, work: None, requires={"crop": Requirement()})
    assert StageSpec("x", 1, (), (), Concepts, compute=lambda ctx, work: None).per_neuron
    assert not StageSpec("x", 1, (), (), TopImages, run=lambda ctx, jobs: None).per_neuron


def test_upstream_failures_are_carried_with_the_first_required_stages_reason(job):
    work, failed = read_upstream(summarising(lambda ctx, work: concepts_of(work)), job)
    assert work.neurons == [0]
    assert failed == {
        1: "crop stage failed: unreadable",
        2: "caption stage failed: server down",
        3: "caption stage failed: crop stage failed: unreadable",  # caption is required first: its reason wins
        4: "no captions for this neuron",
        5: "caption stage has no entry for this neuron",
    }
    assert work.entries["caption"] == {0: captions(0, "a cat")} and work.entries["crop"] == {0: exemplars(0)}
    assert isinstance(work.artifact("crop", Exemplars), Exemplars)
    with pytest.raises(TypeError, match="gave a Exemplars, not a Captions"):
        work.artifact("crop", Captions)


def context(tmp_path, store: StageStore, mixer) -> StageContext:
    config = make_config(tmp_path, tmp_path)
    return StageContext(config, Backends(config, target=mixer), store, tmp_path)


def concepts_of(work) -> tuple[Concepts, dict[str, int]]:
    entries = [NeuronConcepts(neuron=n, concepts=["cats"]) for n in work.neurons]
    return Concepts(layer=work.layer, llm="l", neurons=entries), {"asked": len(work.neurons)}


def test_run_neurons_adds_failures_and_keeps_the_neurons_it_did_not_compute(tmp_path, store, job, mixer):
    earlier = Concepts(
        layer=LAYER,
        llm="l",
        neurons=[NeuronConcepts(neuron=0, concepts=["old"]), NeuronConcepts(neuron=9, concepts=["dogs"])],
    )
    with store.writing(LAYER, "summarize", job.key) as out:
        write_model(out / "artifact.json", earlier)
    run_neurons(summarising(lambda ctx, work: concepts_of(work)), context(tmp_path, store, mixer), job)

    folder = store.stage_dir(LAYER, "summarize", job.key)
    stored = store.load(LAYER, "summarize", job.key, Concepts)
    assert [entry.neuron for entry in stored.neurons] == [0, 1, 2, 3, 4, 5, 9]
    assert stored.neurons[0].concepts == ["cats"]  # recomputed: the new entry wins
    assert stored.neurons[-1] == earlier.neurons[1]  # not asked for: kept as it was
    assert [entry.failed is not None for entry in stored.neurons] == [False, True, True, True, True, True, False]
    counts = json.loads((folder / "manifest.json").read_text())["counts"]
    assert counts == {"asked": 1, "failed_neurons": 5}


def test_a_stage_must_return_exactly_the_neurons_it_was_given(tmp_path, store, job, mixer):
    def too_few(ctx, work):
        return Concepts(layer=work.layer, llm="l", neurons=[]), {}

    with pytest.raises(RuntimeError, match=r"returned entries for neurons \[\], expected \[0\]"):
        run_neurons(summarising(too_few), context(tmp_path, store, mixer), job)
    assert not store.is_complete(LAYER, "summarize", job.key)


def test_the_entry_type_comes_from_the_artifact():
    assert neuron_entry_type(Captions) is NeuronCaptions
    assert neuron_entry_type(Exemplars) is NeuronExemplars
