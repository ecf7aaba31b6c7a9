"""Render a layer's report: a static folder that opens from disk, needs no network and can be zipped or served.

``<output_dir>/<run>/<layer>/report/`` holds ``index.html`` (one row per neuron, sortable and filterable), one page per
neuron under ``neurons/``, thumbnails under ``thumbs/`` (see :mod:`dnd.report.thumbnails`), the distribution plots
under ``plots/`` and the stylesheet and script under ``assets/``. Every link is relative. Pages come from the Jinja2
templates of this package with autoescaping on, so labels, captions and file names from models or files always show
as text.
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import jinja2

from dnd import __version__, layout
from dnd.image_store import image_store
from dnd.report.comparison import Comparison, compare_layer
from dnd.report.evidence import LayerEvidence
from dnd.report.pictures import Painter
from dnd.report.plots import histogram_svg
from dnd.report.thumbnails import Gallery, GalleryCounts
from dnd.report.views import NeuronView, neuron_views
from dnd.store import atomic_write_text

if TYPE_CHECKING:
    from dnd.backends.embedders import TextEmbedder
    from dnd.compare.readers import LabelSet
    from dnd.pipeline import Pipeline

NEURON_FOLDER = "neurons"
PLOT_FOLDER = "plots"
ASSET_FOLDER = "assets"
ASSETS = ("report.css", "report.js")
STATUSES = ("ok", "failed", "incomplete")


@dataclass
class ReportResult:
    """Where a report was written and what rendering it did."""

    layer: str
    index: Path
    neurons: int
    thumbnails: GalleryCounts
    removed: int
    seconds: float


@dataclass(frozen=True)
class Plot:
    path: str
    title: str


def report_dir(pipeline: Pipeline, layer: str) -> Path:
    """The report folder of ``layer``, beside the layer's stage outputs and exports."""
    return layout.report_dir(layout.layer_dir(pipeline.store.root, layer))


def write_reports(
    pipeline: Pipeline,
    layers: list[str],
    neurons: list[int] | None = None,
    compare: str | None = None,
    embedder: str = "minilm",
) -> Iterator[ReportResult]:
    """Render the report of each of ``layers`` (see :func:`write_report`), yielding each result as it is done.

    ``compare`` is a label source as `dnd compare` reads it (a file, ``PATH:LAYER``, a quoted glob or a run's
    ``score-<key>`` folder); it is read once, and the text ``embedder`` loaded at most once, for every layer.
    """
    other = load = None
    if compare is not None:
        from dnd.backends.embedders import load_text_embedder
        from dnd.compare.readers import read_label_source
        from dnd.devices import resolve_device

        other = read_label_source(compare)
        config = pipeline.config
        load = functools.cache(lambda: load_text_embedder(embedder, config.embed, resolve_device(config.device)))
    for layer in layers:
        yield write_report(pipeline, layer, neurons, other, load)


def write_report(
    pipeline: Pipeline,
    layer: str,
    neurons: list[int] | None = None,
    compare: LabelSet | None = None,
    embedder: Callable[[], TextEmbedder] | None = None,
) -> ReportResult:
    """Render the report of ``layer`` from the run's finished stages (all its described neurons, or ``neurons``).

    ``compare`` (another method's labels, compared in the space of the text embedder that ``embedder()`` loads) adds
    the other label, the per-neuron similarity and the layer's agreement summary. Thumbnails already in the folder
    are reused; files the report no longer shows are removed. Raises :class:`~dnd.errors.DnDError` when stage 1 has
    not run for this config.
    """
    started = time.perf_counter()
    root = report_dir(pipeline, layer)
    # 1. The evidence: every stage that is fresh for this config, and the neurons to show.
    evidence = LayerEvidence.load(pipeline, layer)
    chosen = evidence.neurons(neurons)
    # 2. The other method's labels, when asked for (before any picture is drawn: bad input fails fast).
    comparison = None
    if compare is not None:
        if embedder is None:
            raise ValueError("write_report: compare needs an embedder")
        comparison = compare_layer(evidence, compare, embedder)
    # 3. The views, asking the gallery for every picture; then only the missing thumbnails are drawn.
    context = pipeline.context
    painter = Painter(context, layer, image_store(pipeline.config.output_dir), pipeline.config.crop.batch_size)
    gallery = Gallery(root, painter)
    views = neuron_views(evidence, chosen, gallery, comparison)
    counts = gallery.make(f"report {layer}: thumbnails")
    # 4. Plots, pages, assets; then whatever an earlier render left that this one does not show.
    plots = _write_plots(root, views, comparison)
    environment = _environment(gallery)
    page = {
        "version": __version__,
        "run": evidence.run,
        "layer": layer,
        "function": pipeline.config.score.function,
        "comparison": comparison,
        "spatial": len(evidence.top.output_shape) == 3,
    }
    index = environment.get_template("index.html").render(
        **page,
        root="",
        neurons=views,
        plots=plots,
        facts=_facts(evidence),
        status_counts=_status_counts(views),
        has_exemplars="crop" in evidence.artifacts,
        output_shape=" × ".join(map(str, evidence.top.output_shape)) or "unknown",
        top_k=len(evidence.top.neurons[0].rows) if evidence.top.neurons else 0,
        n_images=evidence.top.n_images,
    )
    index_path = root / layout.REPORT_INDEX_FILE
    atomic_write_text(index_path, index)
    template = environment.get_template("neuron.html")
    for view in views:
        atomic_write_text(root / NEURON_FOLDER / f"{view.unit}.html", template.render(**page, root="../", neuron=view))
    _write_assets(root)
    removed = gallery.prune() + _prune_pages(root, views)
    return ReportResult(
        layer, root / layout.REPORT_INDEX_FILE, len(views), counts, removed, time.perf_counter() - started
    )


def _environment(gallery: Gallery) -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("dnd.report", "templates"),
        autoescape=True,  # every value is escaped unless a template says otherwise (none does)
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.globals["thumb_error"] = gallery.error
    return environment


def _facts(evidence: LayerEvidence) -> list[tuple[str, str]]:
    """What made this layer's evidence, as (name, value) rows for the index's header."""
    facts = [("probing images", f"{evidence.top.n_images} read, {len(evidence.top.skipped)} unreadable")]
    artifacts = evidence.artifacts
    if "caption" in artifacts:
        facts.append(("captioner", artifacts["caption"].captioner))
    if "summarize" in artifacts:
        concepts = artifacts["summarize"]
        usage = concepts.usage
        facts.append(("LLM", concepts.llm))
        tokens = f"{usage.prompt_tokens} prompt + {usage.completion_tokens} completion, {usage.requests} requests"
        facts.append(("tokens", tokens))
    if "synthesize" in artifacts:
        facts.append(("image generator", artifacts["synthesize"].generator))
    if "score" in artifacts:
        facts.append(("scoring", artifacts["score"].function))
    facts.append(("stage outputs", ", ".join(folder.name for folder in evidence.folders.values())))
    return facts


def _status_counts(views: list[NeuronView]) -> dict[str, int]:
    counts = Counter(view.status for view in views)
    return {status: counts[status] for status in STATUSES if counts[status]}


def _write_plots(root: Path, views: list[NeuronView], comparison: Comparison | None) -> list[Plot]:
    """The layer's distributions as SVG files under ``plots/``; a distribution without values is left out."""
    interpretability = [v.interpretability for v in views]
    series = [
        ("score", "Label 1 final score", "score", [v.score for v in views], None),
        ("interpretability", "Interpretability", "mean pairwise image-embedding similarity", interpretability, None),
    ]
    if comparison is not None:
        similarity = [v.similarity for v in views]
        series.append(("similarity", f"Similarity with {comparison.method}", "cosine", similarity, (-1.0, 1.0)))
    plots = []
    for name, title, axis, values, value_range in series:
        present = [value for value in values if value is not None]
        path = root / PLOT_FOLDER / f"{name}.svg"
        if not present:
            path.unlink(missing_ok=True)
            continue
        atomic_write_text(path, histogram_svg(present, title, axis, value_range))
        plots.append(Plot(f"{PLOT_FOLDER}/{name}.svg", title))
    return plots


def _write_assets(root: Path) -> None:
    static = resources.files("dnd.report") / "static"
    for name in ASSETS:
        atomic_write_text(root / ASSET_FOLDER / name, (static / name).read_text(encoding="utf-8"))


def _prune_pages(root: Path, views: list[NeuronView]) -> int:
    """Remove neuron pages of an earlier render that this one does not show; return how many."""
    shown = {f"{view.unit}.html" for view in views}
    folder = root / NEURON_FOLDER
    stale = [page for page in folder.glob("*.html") if page.name not in shown] if folder.is_dir() else []
    for page in stale:
        page.unlink()
    return len(stale)
