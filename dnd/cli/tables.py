"""Every table the command line prints, and how its numbers are rounded. Pure: results in, a rich ``Table`` out;
the commands print them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from rich import box
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from dnd.artifacts import NeuronConcepts, NeuronLabels
    from dnd.compare.agreement import LayerAgreement, SimilarityStats
    from dnd.evaluate.ablation import AblationEvaluation, AblationResult
    from dnd.evaluate.classifiers import ClassifierResult
    from dnd.evaluate.cosy import CosyResult, MetricStats
    from dnd.evaluate.final_layer import FinalLayerResult
    from dnd.evaluate.simulation import SimulationEvaluation, SimulationResult

#: Bars of the distribution column, lowest to highest count.
SPARK = " ▁▂▃▄▅▆▇█"
#: Colour of each stage state in ``dnd status``.
STATE_COLOURS = {"fresh": "green", "stale": "yellow", "missing": "red"}


def stage_status(title: str, rows: Iterable[tuple[str, str, str, str]]) -> Table:
    """``dnd status`` for one layer: ``rows`` of (stage, state, key, folder: empty unless fresh)."""
    table = Table(title=title)
    for column in ("stage", "status", "key"):
        table.add_column(column)
    table.add_column("folder", overflow="fold")
    for stage, state, key, folder in rows:
        table.add_row(stage, f"[{STATE_COLOURS[state]}]{state}[/]", key, folder)
    return table


def module_paths(rows: Iterable[tuple[str, str, str]]) -> Table:
    """``dnd layers``: ``rows`` of (module path, type, output shape)."""
    table = Table()
    for column in ("module path", "type", "output shape"):
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    return table


def concepts(entries: Sequence[NeuronConcepts]) -> Table:
    """Stage 4's candidate concepts, one row per neuron of ``entries`` (a failed one says why)."""
    table = Table("neuron", "candidate concepts")
    for entry in entries:
        table.add_row(str(entry.neuron), "; ".join(entry.concepts) or f"[red]failed: {entry.failed}[/]")
    return table


def labels(entries: Sequence[NeuronLabels]) -> Table:
    """Stage 6's three best labels, one row per neuron of ``entries`` (a failed one says why)."""
    table = Table("neuron", "Label 1 (description)", "Label 2", "Label 3")
    for entry in entries:
        if entry.failed is not None:
            table.add_row(str(entry.neuron), f"[red]failed: {entry.failed}[/]", "", "")
        else:
            table.add_row(str(entry.neuron), *(entry.labels + ["", "", ""])[:3])
    return table


def similarity_stats(title: str, keys: list[str]) -> Table:
    """An empty table of similarity statistics after the ``keys`` columns (min and max are in the --out files),
    compact enough for 80 columns; fill it with ``keys`` values + :func:`similarity_cells`."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    for column in keys:
        table.add_column(column, min_width=len(column))
    for column in ("n", "mean", "std", "q1", "median", "q3"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("−1 … 1", no_wrap=True)
    return table


def similarity_cells(stats: SimilarityStats) -> list[str]:
    """n, mean, std, quartiles and a histogram drawn in :data:`SPARK` bars."""
    peak = max(stats.histogram) or 1
    spark = "".join(SPARK[round(count / peak * (len(SPARK) - 1))] for count in stats.histogram)
    quartiles = (f"{value:.3f}" for value in (stats.q1, stats.median, stats.q3))
    return [str(stats.n), f"{stats.mean:.4f}", f"{stats.std:.4f}", *quartiles, spark]


def agreement(results: Sequence[LayerAgreement]) -> list[Table]:
    """``dnd compare``: one table per pair of label sets, a row per layer and text space."""
    tables = []
    for sources in dict.fromkeys(result.sources for result in results):
        table = similarity_stats(f"{sources[0]}  vs  {sources[1]}", ["layer", "embedder"])
        for result in results:
            if result.sources == sources:
                table.add_row(result.layer, result.embedder, *similarity_cells(result.stats))
        tables.append(table)
    return tables


def disagreements(result: LayerAgreement, count: int) -> Table:
    """The ``count`` neurons of ``result`` whose labels agree least, lowest similarity first."""
    title = f"most disagreeing: {result.layer}, {result.embedder}"
    table = _results(title, (), ("unit", "similarity"), result.sources)
    for neuron in result.most_disagreeing(count):
        table.add_row(str(neuron.unit), f"{neuron.similarity:.3f}", *map(escape, neuron.labels))
    return table


def final_layer(name: str, truth: str, results: Sequence[FinalLayerResult]) -> Table:
    """``dnd evaluate final-layer`` for one reading of the class names: a row per text space of ``results``."""
    table = similarity_stats(f"{name}, {results[0].layer}: labels vs class names ({truth})", ["embedder"])
    for result in results:
        if result.ground_truth == truth:
            table.add_row(result.embedder, *similarity_cells(result.stats))
    return table


def cosy_summary(name: str, layer: str, result: CosyResult) -> Table:
    """``dnd evaluate cosy``: AUC and MAD over the evaluated neurons of ``layer``."""
    table = _results(
        f"{name}: CoSy on {layer}, {result.images_per_label} images per label vs {result.n_control} probing images",
        ["layer"],
        ("n", "AUC mean", "median", "std", "MAD mean", "median", "std"),
        no_wrap=True,
    )
    table.add_row(result.layer, str(len(result.neurons)), *metric_cells(result.auc), *metric_cells(result.mad))
    return table


def cosy_lowest(layer: str, result: CosyResult, count: int) -> Table:
    """The ``count`` neurons whose labels drive them least (lowest AUC first)."""
    table = _results(f"lowest AUC: {layer}", (), ("unit", "AUC", "MAD"), ["label"])
    for neuron in result.lowest(count):
        table.add_row(str(neuron.unit), f"{neuron.auc:.3f}", number(neuron.mad, 2), escape(neuron.label))
    return table


def classifiers(layer: str, images: str, result: ClassifierResult) -> Table:
    """``dnd evaluate classifiers`` in one text space: a row per class of the image set ``images``."""
    table = _results(
        f"{layer} as classifiers of {images} ({result.embedder}): mean AUROC {result.mean_auroc:.4f}",
        ["class"],
        ("images", "AUROC", "sim.", "neuron"),
        ["nearest description"],
        overflow="fold",
    )
    for match in result.classes:
        tied = f" +{len(match.units) - 1}" if len(match.units) > 1 else ""
        table.add_row(
            escape(match.class_name),
            str(match.images),
            f"{match.auroc:.4f}",
            f"{match.similarity:.3f}",
            f"{match.units[0]}{tied}",
            escape(match.labels[0]),
        )
    if any(len(match.units) > 1 for match in result.classes):
        table.caption = "+n: n more neurons as near (ties); the class's AUROC is their mean (--out lists all)"
        table.caption_justify = "left"
    return table


def simulation(layer: str, space: str, evaluation: SimulationEvaluation, good_correlation: float) -> Table:
    """``dnd evaluate simulation``: a row per label set (ours, then the baselines) of held-out correlations."""
    table = _results(
        f"simulation of {layer}: held-out correlation of activations with {escape(space)} predictions "
        f"({evaluation.n_held_out} held-out images, {evaluation.n_fit} fit)",
        ["labels"],
        ("n", "Pearson", "std", f"> {good_correlation}", "Spearman", "std"),
        no_wrap=True,
    )
    for result in evaluation.results:
        pearson, spearman = result.pearson, result.spearman
        table.add_row(
            escape(result.source + draws(result.draws)),
            str(pearson.n),
            f"{pearson.mean:.4f}",
            f"{pearson.std:.3f}",
            f"{pearson.share_above:.0%}",
            f"{spearman.mean:.4f}",
            f"{spearman.std:.3f}",
        )
    return table


def ablation(layer: str, space: str, images: str, evaluation: AblationEvaluation) -> Table:
    """``dnd evaluate ablation``: a row per label set (ours, random neurons, the baselines) of accuracy drops."""
    table = _results(
        f"ablation of {layer}, k={evaluation.k} per class ({space}): accuracy on {images} "
        f"{evaluation.accuracy:.4f} before, {evaluation.n_images} images",
        ["labels"],
        ("targeted drop", "untargeted drop", "score"),
        no_wrap=True,
    )
    for result in evaluation.results:
        cells = (result.targeted_drop, result.untargeted_drop, result.score)
        table.add_row(escape(result.source + draws(result.draws)), *(f"{value:.4f}" for value in cells))
    return table


def versus_first(results: Sequence[SimulationResult | AblationResult], score: str, item: str, items: str) -> Table:
    """The first label set of ``results`` (simulation, ablation) against each later one: its ``score`` minus theirs,
    ``item`` by ``item`` (``first_minus_this``), with the 95% bootstrap interval."""
    table = _results(
        f"{escape(results[0].source)} against the others, {item} by {item}: its {score} minus theirs, with a 95% "
        f"bootstrap interval (one that excludes 0 is a difference the spread over {items} does not explain)",
        ["labels"],
        ("first − this", "95% interval", items),
        no_wrap=True,
    )
    for result in results[1:]:
        if (difference := result.first_minus_this) is not None:
            table.add_row(
                escape(result.source + draws(result.draws)),
                f"{difference.mean:+.4f}",
                f"[{difference.low:+.4f}, {difference.high:+.4f}]",
                str(difference.items),
            )
    return table


def _results(
    title: str, left: Iterable[str], right: Iterable[str], after: Iterable[str] = (), **style: object
) -> Table:
    """An empty results table under a left-aligned ``title``: the ``left`` columns, the ``right``-justified number
    columns, then the ``after`` columns (left-aligned text), each with the rich column ``style`` given."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    for columns, justify in ((left, "left"), (right, "right"), (after, "left")):
        for column in columns:
            table.add_column(column, justify=justify, **style)
    return table


def draws(count: int) -> str:
    """`` ×n`` after a baseline drawn ``n`` > 1 times (its numbers are means over the draws); nothing otherwise."""
    return f" ×{count}" if count > 1 else ""


def metric_cells(stats: MetricStats) -> list[str]:
    """Mean, median and std of a CoSy metric (— where it is defined for no neuron)."""
    return [number(value, 3) for value in (stats.mean, stats.median, stats.std)]


def number(value: float | None, digits: int) -> str:
    """``value`` rounded for a table; — for an undefined one (a MAD where the neuron is constant on the control)."""
    return "—" if value is None else f"{value:.{digits}f}"
