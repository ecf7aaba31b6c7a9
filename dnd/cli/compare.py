"""``dnd compare``: how two or more label sets agree, layer by layer, in one or more text spaces."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dnd.cli import spaces, tables
from dnd.cli.console import warn_unparsed, wrapped_out
from dnd.cli.options import BinsOption, DeviceOption, EmbedderOption, check_out

#: What one row of compare's CSV holds (its JSON holds everything, neurons included).
CSV_ROW = "pair of label sets, layer and text space"


def compare(
    sources: Annotated[
        list[str],
        typer.Argument(
            help="Two or more label files: PATH, PATH:LAYER (file without a layer column), or a quoted glob "
            "whose files form one set ('dnd/*_layer?.csv').",
            show_default=False,
        ),
    ],
    embedder: EmbedderOption = None,
    layer: Annotated[
        list[str] | None,
        typer.Option("--layer", "-l", help="Compare only this layer (repeatable); default: every shared layer."),
    ] = None,
    out_path: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write results: .csv (per-layer summary) or .json (all).")
    ] = None,
    top_disagreements: Annotated[
        int, typer.Option("--top-disagreements", min=0, help="Neurons listed where the labels differ most.")
    ] = 10,
    bins: BinsOption = 10,
    device: DeviceOption = "auto",
) -> None:
    """Per-layer agreement of two or more label sets: cosine similarity of each neuron's first labels.

    Example: dnd compare '../shared/reference/dnd/resnet50_imagenet_broden_layer?.csv'
    ../shared/reference/clip-dissect/resnet50_imagenet_broden.csv --embedder minilm --out agreement.json
    """
    from dnd.compare.agreement import compare_label_sets, write_results
    from dnd.compare.readers import read_label_source

    check_out(out_path, CSV_ROW)
    label_sets = [read_label_source(source) for source in sources]
    for label_set in label_sets:
        warn_unparsed(label_set)
    results = compare_label_sets(label_sets, spaces.embedders(embedder, device), bins, layer)
    for table in tables.agreement(results):
        wrapped_out.print(table)
    if top_disagreements:
        for result in results:
            wrapped_out.print(tables.disagreements(result, top_disagreements))
    if out_path is not None:
        write_results(results, out_path)
        wrapped_out.print(f"wrote {out_path}", highlight=False)
