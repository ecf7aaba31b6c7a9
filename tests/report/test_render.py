"""The report of a small real run (six stages, stand-in backends): what the pages hold, escaping, cached thumbnails,
``--compare``, runs that stopped early, layers without spatial maps and the CLI."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dnd.artifacts import Generations, Labels
from dnd.cli import app
from dnd.compare.readers import read_labels
from dnd.errors import DnDError
from dnd.report.render import write_report
from dnd.store import read_model
from tests.compare.fakes import TableEmbedder
from tests.helpers import write_cifar_config
from tests.report.small_run import CAPTION_MARKUP, EVIL, LAYER, small_run

ESCAPED_EVIL = "&lt;script&gt;alert(1)&lt;/script&gt;"


class Page(HTMLParser):
    """The parts of a page the tests read: tags seen, links and image sources, and the text of the rows."""

    def __init__(self, path: Path):
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.rows: list[str] = []
        self._row: list[str] | None = None
        self.feed(path.read_text())

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "tr" and dict(attrs).get("data-search") is not None:
            self._row = []

    def handle_endtag(self, tag):
        if tag == "tr" and self._row is not None:
            self.rows.append(" ".join(" ".join(self._row).split()))
            self._row = None

    def handle_data(self, data):
        if self._row is not None:
            self._row.append(data)

    def references(self) -> list[str]:
        return [
            attrs[name]
            for tag, attrs in self.tags
            for name in ("src", "href")
            if tag in ("img", "a", "link", "script") and attrs.get(name)
        ]


def assert_references_exist(page_path: Path) -> None:
    for reference in Page(page_path).references():
        assert not re.match(r"[a-z]+://", reference), f"{page_path.name} refers outside the report: {reference}"
        assert (page_path.parent / reference).is_file(), f"{page_path.name}: {reference} does not exist"


def thumbnails(report_dir: Path) -> dict[Path, int]:
    """Every thumbnail file with its modification time (ns)."""
    return {path: path.stat().st_mtime_ns for path in (report_dir / "thumbs").glob("*/*.webp")}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return small_run(tmp_path_factory.mktemp("report"))


def test_index_and_neuron_pages_show_every_neuron_with_its_evidence(run):
    result = write_report(run.pipeline, LAYER)
    index = Page(result.index)
    assert result.neurons == 4 and len(index.rows) == 4
    labels = read_model(next(run.layer_dir.glob("score-*")) / "artifact.json", Labels)
    by_neuron = {entry.neuron: entry for entry in labels.neurons}
    for row, entry in zip(index.rows, labels.neurons, strict=True):
        assert row.startswith(str(entry.neuron))
        if entry.labels:
            assert f"{entry.labels[0]} {entry.scores[0].score:.3f} {entry.interpretability:.3f} ok" in row
    assert index.rows[2].endswith("failed score stage: " + by_neuron[2].failed)
    assert [attrs["src"] for tag, attrs in index.tags if tag == "img" and "plots/" in attrs["src"]] == [
        "plots/score.svg",
        "plots/interpretability.svg",
    ]
    assert_references_exist(result.index)
    # Model text is escaped: the label shows as text and there is no script but the report's own.
    raw = result.index.read_text()
    assert ESCAPED_EVIL in raw and EVIL not in raw
    assert [attrs.get("src") for tag, attrs in index.tags if tag == "script"] == ["assets/report.js"]

    page_path = result.index.parent / "neurons" / "0.html"
    page = Page(page_path)
    raw = page_path.read_text()
    zero = by_neuron[0]
    assert_references_exist(page_path)
    assert [attrs.get("src") for tag, attrs in page.tags if tag == "script"] == ["../assets/report.js"]
    assert ESCAPED_EVIL in raw and EVIL not in raw and CAPTION_MARKUP not in raw
    assert "&lt;img src=x onerror=alert(2)&gt;" in raw
    # Every candidate with all three scores, and its generated images in rank order.
    for score in zero.scores:
        for shown in (f"{score.topk_squared:.2f}", f"{score.image_products:.3f}", f"{score.score:.3f}"):
            assert f'class="num">{shown}</td>' in raw
    ranks = [int(r) for r in re.findall(r"rank (\d+)</figcaption>", raw)]
    per_concept = [sorted(score.ranks) for score in zero.scores]
    assert ranks == [rank for ranks in per_concept for rank in ranks]
    assert "150 prompt + 9 completion in 3 request(s)" in raw  # the stand-in LLM's usage for this neuron
    assert 'rel="next" href="1.html"' in raw and 'rel="prev"' not in raw
    # Top images: one heat map per top image, exemplars with their captions.
    assert len(re.findall(r"activation \d\.\d{3}, 1 crop\(s\)", raw)) == 4
    assert raw.count('class="caption"') == 4


def test_a_rerender_after_a_prompt_edit_redraws_only_the_new_generated_images(tmp_path):
    run = small_run(tmp_path)
    first = write_report(run.pipeline, LAYER)
    report_dir = first.index.parent
    before = thumbnails(report_dir)
    assert first.thumbnails.written == len(before) and first.thumbnails.forward_batches == 1

    # Same inputs: nothing is drawn or written, and the target network does not run.
    calls = []
    hook = run.network.register_forward_hook(lambda *_: calls.append(1))
    again = write_report(run.pipeline, LAYER)
    assert (again.thumbnails.written, again.thumbnails.reused, again.removed) == (0, len(before), 0)
    assert thumbnails(report_dir) == before and calls == []

    # A new synthesis prompt: stages 5-6 run again and make new images; every other thumbnail is reused.
    old_images = _generated_ids(run)
    prompt = run.prompts / "synthesize.md"
    prompt.write_text(prompt.read_text().replace("{concept}", "{concept}, photographed"))
    run.describe()
    calls.clear()
    edited = write_report(run.pipeline, LAYER)
    after = thumbnails(report_dir)
    new_images = _generated_ids(run)
    assert new_images and not new_images & old_images
    written = {path for path in after if path not in before}
    assert len(written) == edited.thumbnails.written == len(new_images)  # one thumbnail per new generated image
    assert edited.removed == len(old_images)  # the old ones are gone from the folder
    assert {path: after[path] for path in after if path in before} == {p: t for p, t in before.items() if p in after}
    assert edited.thumbnails.reused == len(before) - len(old_images)
    assert calls == [] and edited.thumbnails.forward_batches == 0  # the heat maps were all reused
    hook.remove()
    assert_references_exist(edited.index)


def _generated_ids(run) -> set[str]:
    """The image-store ids of every generated image of the run's current stage 5 output."""
    generations = run.pipeline.store.load(LAYER, "synthesize", run.pipeline.key("synthesize", LAYER), Generations)
    return {i for entry in generations.neurons for c in entry.concepts for i in c.image_ids}


def test_compare_adds_the_other_label_the_similarity_and_the_agreement(run, tmp_path):
    other = tmp_path / "descriptions.csv"
    other.write_text(f"layer,unit,description,similarity\n{LAYER},0,red,1\n{LAYER},1,grass,1\n{LAYER},9,sky,1\n")
    table = {EVIL: [1.0, 0.0], "green blobs": [0.0, 1.0], "red": [1.0, 0.0], "grass": [0.6, 0.8]}
    embedder = TableEmbedder("table", table)
    result = write_report(run.pipeline, LAYER, compare=read_labels(other), embedder=lambda: embedder)
    index = Page(result.index)
    assert "red 1.000" in index.rows[0] and "grass 0.800" in index.rows[1]
    assert index.rows[2].count("—") >= 3 and "—" in index.rows[3]  # no label of ours / no label of theirs
    raw = result.index.read_text()
    assert "Agreement with descriptions.csv (clip-dissect)" in raw
    assert "mean 0.900, std 0.100" in raw and "over the 2 neurons both label" in raw
    assert (result.index.parent / "plots" / "similarity.svg").is_file()

    with pytest.raises(DnDError, match=f"layer {LAYER} is not in .*; it has: layer4"):
        other.write_text("layer,unit,description,similarity\nlayer4,0,red,1\n")
        write_report(run.pipeline, LAYER, compare=read_labels(other), embedder=_no_embedder)


def test_a_run_that_stopped_after_crop_shows_what_it_reached(tmp_path):
    run = small_run(tmp_path, "stop_after=crop")
    result = write_report(run.pipeline, LAYER)
    rows = Page(result.index).rows
    assert len(rows) == 4
    assert all("incomplete described up to stage crop; not run yet: caption, summarize" in row for row in rows)
    raw = result.index.read_text()
    assert "No scores to plot yet" in raw and not (result.index.parent / "plots" / "score.svg").exists()
    page = (result.index.parent / "neurons" / "1.html").read_text()
    assert "Top-activating images" in page and "Exemplars" in page and "Candidate concepts" not in page
    assert_references_exist(result.index)
    with pytest.raises(DnDError, match="--compare needs this run's labels"):
        write_report(run.pipeline, LAYER, compare=read_labels(_one_label(tmp_path)), embedder=_no_embedder)


def _no_embedder():
    raise AssertionError("the embedder is loaded only once the labels are aligned")


def _one_label(tmp_path: Path) -> Path:
    path = tmp_path / "one.csv"
    path.write_text(f"layer,unit,description,similarity\n{LAYER},0,red,1\n")
    return path


def test_a_layer_without_spatial_maps_shows_plain_top_images(tmp_path):
    run = small_run(tmp_path, "stop_after=record", describe=False)
    run.pipeline.describe(["head"])
    result = write_report(run.pipeline, "head", neurons=[1])
    page = (result.index.parent / "neurons" / "1.html").read_text()
    assert "This layer has no spatial map" in page
    assert result.thumbnails.forward_batches == 0  # no heat map, so no forward pass
    assert len(Page(result.index).rows) == 1
    with pytest.raises(DnDError, match=r"--neurons: \[7\] out of range, layer head has 2 neurons"):
        write_report(run.pipeline, "head", neurons=[7])


def test_report_command_and_describe_print_where_the_report_is(tmp_path):
    config = write_cifar_config(tmp_path, record={"top_k": 3}, crop={"exemplars": 3}, stop_after="crop")
    runner = CliRunner()
    missing = runner.invoke(app, ["report", "--config", str(config), "--layer", "layer3"])
    assert missing.exit_code == 2 and "stage 1 (record) has not run" in missing.output

    described = runner.invoke(app, ["describe", "--config", str(config), "--layer", "layer3", "--neurons", "0-2"])
    assert described.exit_code == 0, described.output
    index = tmp_path / "outputs" / "cli" / "layer3" / "report" / "index.html"
    assert f"report layer3: {index} (3 neurons; thumbnails:" in described.output
    assert len(Page(index).rows) == 3

    again = runner.invoke(app, ["report", "--config", str(config), "--layer", "layer3", "--neurons", "1"])
    assert again.exit_code == 0, again.output
    assert f"report layer3: {index} (1 neurons; thumbnails: 0 new," in again.output
    assert len(Page(index).rows) == 1 and not (index.parent / "neurons" / "0.html").exists()

    # --compare before stage 6 has run: one clear error, and no embedding model is loaded for it.
    other = tmp_path / "other.csv"
    other.write_text("layer,unit,description,similarity\nlayer3,0,dogs,0.5\n")
    compared = runner.invoke(app, ["report", "--config", str(config), "--layer", "layer3", "--compare", str(other)])
    assert compared.exit_code == 2 and "--compare needs this run's labels" in compared.output
