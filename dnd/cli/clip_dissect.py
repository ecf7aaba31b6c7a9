"""``dnd clip-dissect``: the CLIP-Dissect baseline's labels for a layer, in CLIP-Dissect's CSV format."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from dnd.cli.console import wrapped_out
from dnd.cli.options import check_out
from dnd.layout import CLIP_DISSECT_FILE

#: The most frequent first labels named after the run.
SHOWN_CONCEPTS = 5


def clip_dissect(
    config: Annotated[Path, typer.Option("--config", "-c", help="YAML config of the run.", show_default=False)],
    layer: Annotated[str, typer.Option("--layer", "-l", help="Layer module path.", show_default=False)],
    concepts: Annotated[
        Path, typer.Option("--concepts", help="Concept set, one per line (e.g. 20k.txt).", show_default=False)
    ],
    out_path: Annotated[
        Path | None,
        typer.Option("--out", "-o", help=f"Output CSV; default <output_dir>/<name>/<layer>/{CLIP_DISSECT_FILE}."),
    ] = None,
    model: Annotated[
        str,
        typer.Option(
            "--model",
            help="Image-text model: clip (embed.clip_model, CLIP-Dissect's), captions (offline stand-in: MiniLM "
            "of each image's caption by the config's captioner), or any transformers image-text model id or folder.",
        ),
    ] = "clip",
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config key, e.g. --set clip_dissect.top_k=50.", show_default=False),
    ] = None,
) -> None:
    """CLIP-Dissect baseline: soft-WPMI labels from the recorded activations, in CLIP-Dissect's CSV format.

    Example: dnd clip-dissect --config configs/offline.yaml --layer blocks.10
    --concepts ../shared/reference/concept-sets/20k.txt --out descriptions.csv
    """
    from dnd.clip_dissect import clip_dissect as run_clip_dissect
    from dnd.clip_dissect import read_concepts, write_descriptions
    from dnd.config import load_config
    from dnd.image_embeddings import image_text_space
    from dnd.pipeline import Pipeline

    check_out(out_path)
    run_config = load_config(config, set_)
    concept_list = read_concepts(concepts)
    pipeline = Pipeline(run_config)
    space = None if model == "clip" else image_text_space(model, pipeline.backends)[0]
    labels = run_clip_dissect(pipeline, layer, concept_list, space)
    path = out_path or pipeline.store.layer_dir(layer) / CLIP_DISSECT_FILE
    write_descriptions(labels, path)
    counts = Counter(row.labels[0] for row in labels.rows)
    common = ", ".join(f"{concept} ({n})" for concept, n in counts.most_common(SHOWN_CONCEPTS))
    wrapped_out.print(
        f"[bold]{layer}[/]: {len(labels.rows)} neurons labelled from {len(concept_list)} concepts → {path}\n"
        f"most frequent: {escape(common)}",
        highlight=False,
    )
