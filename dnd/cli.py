"""The ``dnd`` command line: parse, call the pipeline, print. No logic of its own."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from dnd import commands
from dnd.artifacts import TopImages
from dnd.config import RunConfig, load_config
from dnd.errors import DnDError
from dnd.pipeline import METHOD_STAGES, Pipeline

app = typer.Typer(
    help="Describe-and-Dissect: plain-language descriptions of what a vision network's neurons respond to.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

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


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """Print a :class:`DnDError` as one clear message (no traceback) and exit with status 2."""
    try:
        yield
    except DnDError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def parse_neurons(spec: str | None) -> list[int] | None:
    """``"0-3,7"`` → ``[0, 1, 2, 3, 7]``; None means every neuron."""
    if spec is None or not spec.strip():
        return None
    neurons: set[int] = set()
    for part in spec.split(","):
        first, dash, last = part.strip().partition("-")
        try:
            low, high = int(first), int(last) if dash else int(first)
        except ValueError:
            raise DnDError(f"--neurons {spec!r}: expected numbers and ranges such as 0-63 or 1,5,7-9") from None
        if low < 0 or high < low:
            raise DnDError(f"--neurons {spec!r}: {part.strip()!r} is not a valid range")
        neurons.update(range(low, high + 1))
    return sorted(neurons)


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
) -> None:
    """Run every available stage for a layer, reusing whatever is cached.

    Example: dnd describe --config configs/offline.yaml --layer blocks.10 --neurons 0-15
    """
    with _user_errors():
        run_config, pipeline = _setup(config, set_)
        layers = _layers(run_config, layer)
        pipeline.describe(layers, parse_neurons(neurons), force=force)
        _print_outputs(pipeline, layers)


@app.command("run")
def run_stage(
    stage: Annotated[str, typer.Argument(help=f"One of: {', '.join(METHOD_STAGES)}.", show_default=False)],
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
        pipeline.run_until(stage, layers, parse_neurons(neurons), force_stages={stage} if force else set())
        _print_outputs(pipeline, layers)


@app.command()
def status(config: ConfigOption = None, layer: LayerOption = None, set_: SetOption = None) -> None:
    """Show each stage as fresh, stale (cached for other inputs), missing or not available.

    Example: dnd status --config configs/offline.yaml --layer blocks.10
    """
    with _user_errors():
        run_config, pipeline = _setup(config, set_)
        for name in _layers(run_config, layer):
            table = Table(title=f"{run_config.name} / {name}")
            for column in ("stage", "status", "key", "folder"):
                table.add_column(column)
            colours = {"fresh": "green", "stale": "yellow", "missing": "red"}
            for stage, state, key in pipeline.status(name):
                folder = str(pipeline.store.stage_dir(name, stage, key)) if state == "fresh" else ""
                table.add_row(stage, f"[{colours.get(state, 'dim')}]{state}[/]", key, folder)
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


def _print_outputs(pipeline: Pipeline, layers: list[str]) -> None:
    for name in layers:
        stage_dir = pipeline.store.stage_dir(name, "record", pipeline.key("record", name))
        top = pipeline.store.load(name, "record", pipeline.key("record", name), TopImages)
        out.print(
            f"[bold]{name}[/]: {top.n_neurons} neurons over {top.n_images} images, "
            f"top-{len(top.neurons[0].rows)} each → {stage_dir}",
            highlight=False,
        )
        if top.skipped:
            shown = ", ".join(f"{s.image_id} ({s.reason})" for s in top.skipped[:5])
            more = f" and {len(top.skipped) - 5} more" if len(top.skipped) > 5 else ""
            err.print(f"[yellow]skipped {len(top.skipped)} unreadable image(s):[/] {shown}{more}", highlight=False)
        for stage, state, _key in pipeline.status(name):
            if state == "not available":
                err.print(f"[dim]stage {stage}: not available yet[/]")


# Label comparisons and evaluations live in dnd.commands; _user_errors() wraps each one as a decorator.
evaluate_app = typer.Typer(help="Score label sets quantitatively.", no_args_is_help=True)
app.add_typer(evaluate_app, name="evaluate")
app.command("compare")(_user_errors()(commands.compare))
app.command("clip-dissect")(_user_errors()(commands.clip_dissect))
evaluate_app.command("final-layer")(_user_errors()(commands.final_layer))
