"""CSV exports (dnd.export): exact text of both formats, quoting, failed neurons, and reading them back."""

from __future__ import annotations

from dnd.artifacts import ConceptScore, Labels, NeuronLabels
from dnd.compare.readers import read_labels
from dnd.export import descriptions_csv, final_results_csv, write_exports


def score(concept: str, value: float) -> ConceptScore:
    return ConceptScore(concept=concept, topk_squared=1.0, image_products=0.5, score=value, ranks=[0], image_ids=["x"])


LABELS = Labels(
    layer="layer3",
    function="topk_squared_image_products",
    neurons=[
        NeuronLabels(
            neuron=0,
            labels=["striped textures", "zebras", "fences"],
            scores=[score("striped textures", 2.25), score("zebras", 1.0), score("fences", -0.5)],
        ),
        NeuronLabels(neuron=1, labels=['dogs, "big" ones'], scores=[score('dogs, "big" ones', 0.125)]),
        NeuronLabels(neuron=2, failed="synthesize stage failed: no concepts"),
    ],
)


def test_descriptions_csv():
    assert descriptions_csv(LABELS) == (
        "layer,unit,description,similarity\n"
        "layer3,0,striped textures,2.25\n"
        'layer3,1,"dogs, ""big"" ones",0.125\n'
        "layer3,2,,\n"
    )


def test_final_results_csv():
    assert final_results_csv(LABELS) == (
        'Neuron ID,Label 1,Label 2,Label 3\n0,striped textures,zebras,fences\n1,"dogs, ""big"" ones",,\n2,,,\n'
    )


def test_more_labels_than_the_authors_three_get_more_columns():
    five = Labels(layer="fc", function="image_products", neurons=[NeuronLabels(neuron=4, labels=list("abcde"))])
    assert final_results_csv(five) == "Neuron ID,Label 1,Label 2,Label 3,Label 4,Label 5\n4,a,b,c,d,e\n"


def test_written_exports_read_back_with_the_comparison_readers(tmp_path):
    descriptions, final_results = write_exports(LABELS, tmp_path / "layer3")
    assert [p.name for p in (descriptions, final_results)] == ["descriptions.csv", "final_results.csv"]

    clip_dissect = read_labels(descriptions)
    assert [(r.layer, r.unit, r.labels, r.score) for r in clip_dissect.rows] == [
        ("layer3", 0, ["striped textures"], 2.25),
        ("layer3", 1, ['dogs, "big" ones'], 0.125),
    ]
    assert len(clip_dissect.warnings) == 1 and ":4:" in clip_dissect.warnings[0]  # the failed neuron, by line

    authors = read_labels(final_results, layer="layer3")
    assert [(r.unit, r.labels) for r in authors.rows] == [
        (0, ["striped textures", "zebras", "fences"]),
        (1, ['dogs, "big" ones']),
    ]
