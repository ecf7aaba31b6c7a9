"""The pipeline's commands: ``describe``, ``run``, ``status``, ``layers`` and ``report``, and the lines each prints
about the stages it finished."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dnd import layout
from dnd.artifacts import Captions, Concepts, Exemplars, Generations, Labels, PerNeuronArtifact, TopImages
from dnd.cli import tables
from dnd.cli.console import err, out
from dnd.config import RunConfig, load_config
from dnd.errors import DnDError
from dnd.neurons import parse_neurons
from dnd.pipeline import Pipeline
from dnd.stages.registry import STAGE_NAMES

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
#: Neurons whose concepts or labels are printed; the rest are in the artifacts and the CSV exports.
SHOWN_NEURONS = 32
#: Skipped images and failed neurons named one by one; the rest are counted.
SHOWN_PROBLEMS = 5


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
    run_config, pipeline = _setup(config, set_)
    layers = _layers(run_config, layer)
    chosen = parse_neurons(neurons)
    pipeline.describe(layers, chosen, force=force)
    if pipeline.ranks.is_main:  # one report per job, however many processes it has
        _print_outputs(pipeline, layers, run_config.stop_after or list(pipeline.stages)[-1], chosen)
        if report:
            _write_reports(pipeline, layers)


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
    run_config, pipeline = _setup(config, set_)
    _write_reports(pipeline, _layers(run_config, layer), parse_neurons(neurons), compare, embedder)


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
    run_config, pipeline = _setup(config, set_)
    layers = _layers(run_config, layer)
    chosen = parse_neurons(neurons)
    pipeline.run_until(stage, layers, chosen, force_stages={stage} if force else set())
    if pipeline.ranks.is_main:
        _print_outputs(pipeline, layers, stage, chosen)


def status(config: ConfigOption = None, layer: LayerOption = None, set_: SetOption = None) -> None:
    """Show each stage as fresh, stale (cached for other inputs) or missing.

    Example: dnd status --config configs/offline.yaml --layer blocks.10
    """
    run_config, pipeline = _setup(config, set_)
    for name in _layers(run_config, layer):
        rows = [
            (stage, state, key, str(pipeline.store.stage_dir(name, stage, key)) if state == "fresh" else "")
            for stage, state, key in pipeline.status(name)
        ]
        out.print(tables.stage_status(f"{run_config.name} / {name}", rows))


def layers(
    config: ConfigOption = None,
    set_: SetOption = None,
    contains: Annotated[str, typer.Option(help="Only paths containing this text.")] = "",
) -> None:
    """List the target network's module paths with each one's output shape for the first probing image.

    Example: dnd layers --config configs/offline.yaml --contains blocks
    """
    _run_config, pipeline = _setup(config, set_)
    sample = pipeline.context.probe.load(0)
    rows = [row for row in pipeline.backends.target.describe_layers(sample) if contains in row[0]]
    out.print(tables.module_paths(rows))


def _setup(config_path: Path | None, overrides: list[str] | None) -> tuple[RunConfig, Pipeline]:
    config = load_config(config_path, overrides)
    return config, Pipeline(config)


def _layers(config: RunConfig, layers: list[str] | None) -> list[str]:
    chosen = layers or config.layers
    if not chosen:
        raise DnDError("no layer given: pass --layer <module path> (see `dnd layers`) or set `layers:` in the config")
    return chosen


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


def _print_outputs(pipeline: Pipeline, layers: list[str], last_stage: str, neurons: list[int] | None) -> None:
    """One line per finished stage up to ``last_stage``, skipped images, failures, and the concepts if any."""
    for layer in layers:
        out.print(f"[bold]{layer}[/]", highlight=False)
        artifact = None
        for stage, folder, artifact in pipeline.finished(layer, last_stage):
            out.print(f"  {stage:<10} {_summary(artifact)} → {folder}", highlight=False)
            _warn_about(artifact)
        if isinstance(artifact, Concepts):
            rows = [entry for entry in artifact.neurons if neurons is None or entry.neuron in neurons]
            out.print(tables.concepts(rows[:SHOWN_NEURONS]))
            if len(rows) > SHOWN_NEURONS:
                out.print(f"… {len(rows) - SHOWN_NEURONS} more neurons in artifact.json")
        if isinstance(artifact, Labels):
            rows = [entry for entry in artifact.neurons if neurons is None or entry.neuron in neurons]
            out.print(tables.labels(rows[:SHOWN_NEURONS]))
            more = f"… {len(rows) - SHOWN_NEURONS} more neurons; " if len(rows) > SHOWN_NEURONS else ""
            final_results = layout.export_paths(layout.layer_dir(pipeline.store.root, layer))[1]
            out.print(f"{more}all labels: {final_results}", highlight=False)
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
        shown = ", ".join(f"{s.image_id} ({s.reason})" for s in artifact.skipped[:SHOWN_PROBLEMS])
        extra = len(artifact.skipped) - SHOWN_PROBLEMS
        more = f" and {extra} more" if extra > 0 else ""
        err.print(f"[yellow]skipped {len(artifact.skipped)} unreadable image(s):[/] {shown}{more}", highlight=False)
    if isinstance(artifact, PerNeuronArtifact):
        failed = [entry for entry in artifact.neurons if entry.failed is not None]
        for entry in failed[:SHOWN_PROBLEMS]:
            err.print(f"[yellow]neuron {entry.neuron} failed:[/] {entry.failed}", highlight=False)
        if len(failed) > SHOWN_PROBLEMS:
            err.print(f"[yellow]… and {len(failed) - SHOWN_PROBLEMS} more failed neurons (see artifact.json)[/]")
