"""The ``dnd`` command line: parse, call the pipeline, print. No logic of its own."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from dnd import commands, layout
from dnd.artifacts import Captions, Concepts, Exemplars, Generations, Labels, PerNeuronArtifact, TopImages
from dnd.config import RunConfig, load_config
from dnd.errors import DnDError
from dnd.neurons import parse_neurons
from dnd.pipeline import Pipeline
from dnd.stages.registry import STAGE_NAMES

app = typer.Typer(
    help="Describe-and-Dissect: plain-language descriptions of what a vision network's neurons respond to.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(soft_wrap=True)  # paths stay whole and copyable when output is not a terminal
err = Console(stderr=True, soft_wrap=True)

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML config, e.g. configs/offline.yaml.", show_default=False)
]
LayerOption = Annotated[
    list[str] | None,
    typer.Option(
        "--layer", "-l", help="Layer module path (repeatable); default: the config's layers.", show_default=False
    ),
]
NeuronsOption = Annotated[
    str | None, typer.Option("--neurons", "-n", help="Neurons to describe, e.g. 0-63 or 1,5,7-9; default: all.")
]
SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set", help="Override a config key, e.g. --set probe.batch_size=32 (repeatable).", show_default=False
    ),
]
ForceOption = Annotated[bool, typer.Option("--force", help="Recompute even when a cached result exists.")]
ReportOption = Annotated[
    bool, typer.Option("--report/--no-report", help="Write the layer's HTML report when the stages are done.")
]


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """Print a :class:`DnDError` as one clear message (no traceback) and exit with status 2."""
    try:
        yield
    except DnDError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _layers(config: RunConfig, layers: list[str] | None) -> list[str]:
    chosen = layers or config.layers
    if not chosen:
        raise DnDError("no layer given: pass --layer <module path> (see `dnd layers`) or set `layers:` in the config")
    return chosen


def _setup(config_path: Path | None, overrides: list[str] | None) -> tuple[RunConfig, Pipeline]:
    config = load_config(config_path, overrides)
    return config, Pipeline(config)


@app.command()
def describe(
    config: ConfigOption = None,
    layer: LayerOption = None,
    neurons: NeuronsOption = None,
    set_: SetOption = None,
    force: ForceOption = False,
    report: ReportOption = True,
) -> None:
    """Run every stage for a layer (up to the config's stop_after), reusing whatever is cached, then write its
    HTML report.

    Example: dnd describe --config configs/offline.yaml --layer blocks.10 --neurons 0-15
    On 8 GPUs: torchrun --nproc_per_node 8 -m dnd describe --config configs/resnet50_imagenet.yaml --layer layer3
    """
    with _user_errors():
        run_config, pipeline = _setup(config, set_)
        layers = _layers(run_config, layer)
        chosen = parse_neurons(neurons)
        pipeline.describe(layers, chosen, force=force)
        if pipeline.ranks.is_main:  # one report per job, however many processes it has
            _print_outputs(pipeline, layers, run_config.stop_after or list(pipeline.stages)[-1], chosen)
            if report:
                _write_reports(pipeline, layers)


@app.command("report")
def report_command(
    config: ConfigOption = None,
    layer: LayerOption = None,
    neurons: NeuronsOption = None,
    compare: Annotated[
        str | None,
        typer.Option(
            "--compare",
            help="Another method's labels: a CLIP-Dissect / DnD / MILAN / NetDissect file (PATH or PATH:LAYER) or "
            "another run's score-<key> folder; adds its label, the per-neuron similarity and the agreement summary.",
            show_default=False,
        ),
    ] = None,
    embedder: Annotated[
        str, typer.Option("--embedder", "-e", help="Text-embedding space of --compare: minilm, clip, mpnet or a model.")
    ] = "minilm",
    set_: SetOption = None,
) -> None:
    """Write a layer's HTML report from what the stages made: index.html and a page per neuron, beside the outputs.

    Example: dnd report --config configs/offline.yaml --layer blocks.10 --compare descriptions.csv
    """
    with _user_errors():
        run_config, pipeline = _setup(config, set_)
        _write_reports(pipeline, _layers(run_config, layer), parse_neurons(neurons), compare, embedder)


def _write_reports(
    pipeline: Pipeline,
    layers: list[str],
    neurons: list[int] | None = None,
    compare: str | None = None,
    embedder: str = "minilm",
) -> None:
    from dnd.report.render import write_reports

    for result in write_reports(pipeline, layers, neurons, compare, embedder):
        thumbnails = result.thumbnails
        out.print(
            f"report {result.layer}: {result.index} ({result.neurons} neurons; thumbnails: {thumbnails.written} new, "
            f"{thumbnails.reused} reused)",
            highlight=False,
        )


@app.command("run")
def run_stage(
    stage: Annotated[str, typer.Argument(help=f"One of: {', '.join(STAGE_NAMES)}.", show_default=False)],
    config: ConfigOption = None,
    layer: LayerOption = None,
    neurons: NeuronsOption = None,
    set_: SetOption = None,
    force: ForceOption = False,
) -> None:
    """Run one stage (and any earlier stage it needs that is not fresh).

    Example: dnd run record --config configs/offline.yaml --layer blocks.10
    """
    with _user_errors():
        run_config, pipeline = _setup(config, set_)
        layers = _layers(run_config, layer)
        chosen = parse_neurons(neurons)
        pipeline.run_until(stage, layers, chosen, force_stages={stage} if force else set())
        if pipeline.ranks.is_main:
            _print_outputs(pipeline, layers, stage, chosen)


@app.command()
def status(config: ConfigOption = None, layer: LayerOption = None, set_: SetOption = None) -> None:
    """Show each stage as fresh, stale (cached for other inputs) or missing.

    Example: dnd status --config configs/offline.yaml --layer blocks.10
    """
    with _user_errors():
        run_config, pipeline = _setup(config, set_)
        for name in _layers(run_config, layer):
            table = Table(title=f"{run_config.name} / {name}")
            for column in ("stage", "status", "key"):
                table.add_column(column)
            table.add_column("folder", overflow="fold")
            colours = {"fresh": "green", "stale": "yellow", "missing": "red"}
            for stage, state, key in pipeline.status(name):
                folder = str(pipeline.store.stage_dir(name, stage, key)) if state == "fresh" else ""
                table.add_row(stage, f"[{colours[state]}]{state}[/]", key, folder)
            out.print(table)


@app.command()
def layers(
    config: ConfigOption = None,
    set_: SetOption = None,
    contains: Annotated[str, typer.Option(help="Only paths containing this text.")] = "",
) -> None:
    """List the target network's module paths with each one's output shape for the first probing image.

    Example: dnd layers --config configs/offline.yaml --contains blocks
    """
    with _user_errors():
        _run_config, pipeline = _setup(config, set_)
        table = Table()
        for column in ("module path", "type", "output shape"):
            table.add_column(column)
        sample = pipeline.context.probe.load(0)
        for path, kind, shape in pipeline.backends.target.describe_layers(sample):
            if contains in path:
                table.add_row(path, kind, shape)
        out.print(table)


def _print_outputs(pipeline: Pipeline, layers: list[str], last_stage: str, neurons: list[int] | None) -> None:
    """One line per finished stage up to ``last_stage``, skipped images, failures, and the concepts if any."""
    for layer in layers:
        out.print(f"[bold]{layer}[/]", highlight=False)
        artifact = None
        for stage, folder, artifact in pipeline.finished(layer, last_stage):
            out.print(f"  {stage:<10} {_summary(artifact)} → {folder}", highlight=False)
            _warn_about(artifact)
        if isinstance(artifact, Concepts):
            _print_concepts(artifact, neurons)
        if isinstance(artifact, Labels):
            _print_labels(artifact, neurons, layout.export_paths(layout.layer_dir(pipeline.store.root, layer))[1])
    if pipeline.wall_seconds:
        times = ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in pipeline.wall_seconds.items())
        total = sum(pipeline.wall_seconds.values())
        out.print(f"wall time: {times}; total {total:.1f} s (stages not listed were cached)", highlight=False)


def _summary(artifact: object) -> str:
    if isinstance(artifact, TopImages):
        k = len(artifact.neurons[0].rows) if artifact.neurons else 0
        return f"{artifact.n_neurons} neurons over {artifact.n_images} images, top-{k} each"
    assert isinstance(artifact, PerNeuronArtifact)
    failed = sum(entry.failed is not None for entry in artifact.neurons)
    detail = {
        Exemplars: lambda a: "with attention crops" if a.cropped else "top images (no spatial map to crop)",
        Captions: lambda a: f"by {a.captioner}",
        Concepts: lambda a: f"by {a.llm}, {a.usage.prompt_tokens + a.usage.completion_tokens} tokens",
        Generations: lambda a: f"by {a.generator}",
        Labels: lambda a: f"scored by {a.function}",
    }[type(artifact)](artifact)
    return f"{len(artifact.neurons)} neurons ({failed} failed), {detail}"


def _warn_about(artifact: object) -> None:
    if isinstance(artifact, TopImages) and artifact.skipped:
        shown = ", ".join(f"{s.image_id} ({s.reason})" for s in artifact.skipped[:5])
        more = f" and {len(artifact.skipped) - 5} more" if len(artifact.skipped) > 5 else ""
        err.print(f"[yellow]skipped {len(artifact.skipped)} unreadable image(s):[/] {shown}{more}", highlight=False)
    if isinstance(artifact, PerNeuronArtifact):
        failed = [entry for entry in artifact.neurons if entry.failed is not None]
        for entry in failed[:5]:
            err.print(f"[yellow]neuron {entry.neuron} failed:[/] {entry.failed}", highlight=False)
        if len(failed) > 5:
            err.print(f"[yellow]… and {len(failed) - 5} more failed neurons (see artifact.json)[/]")


def _print_concepts(concepts: Concepts, neurons: list[int] | None, limit: int = 32) -> None:
    rows = [entry for entry in concepts.neurons if neurons is None or entry.neuron in neurons]
    table = Table("neuron", "candidate concepts")
    for entry in rows[:limit]:
        table.add_row(str(entry.neuron), "; ".join(entry.concepts) or f"[red]failed: {entry.failed}[/]")
    out.print(table)
    if len(rows) > limit:
        out.print(f"… {len(rows) - limit} more neurons in artifact.json")


def _print_labels(labels: Labels, neurons: list[int] | None, final_results: Path, limit: int = 32) -> None:
    rows = [entry for entry in labels.neurons if neurons is None or entry.neuron in neurons]
    table = Table("neuron", "Label 1 (description)", "Label 2", "Label 3")
    for entry in rows[:limit]:
        if entry.failed is not None:
            table.add_row(str(entry.neuron), f"[red]failed: {entry.failed}[/]", "", "")
        else:
            table.add_row(str(entry.neuron), *(entry.labels + ["", "", ""])[:3])
    out.print(table)
    more = f"… {len(rows) - limit} more neurons; " if len(rows) > limit else ""
    out.print(f"{more}all labels: {final_results}", highlight=False)


# Label comparisons and evaluations live in dnd.commands; _user_errors() wraps each one as a decorator.
evaluate_app = typer.Typer(help="Score label sets quantitatively.", no_args_is_help=True)
app.add_typer(evaluate_app, name="evaluate")
app.command("compare")(_user_errors()(commands.compare))
app.command("clip-dissect")(_user_errors()(commands.clip_dissect))
evaluate_app.command("final-layer")(_user_errors()(commands.final_layer))
evaluate_app.command("cosy")(_user_errors()(commands.cosy))
evaluate_app.command("classifiers")(_user_errors()(commands.classifiers))
evaluate_app.command("simulation")(_user_errors()(commands.simulation))
evaluate_app.command("ablation")(_user_errors()(commands.ablation))
