"""Options shared by several commands, and the check every ``--out`` passes before any work starts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from dnd.errors import DnDError

EmbedderOption = Annotated[
    list[str] | None,
    typer.Option(
        "--embedder",
        "-e",
        help="Text-embedding space (repeatable): minilm (offline, from its package), clip (embed.clip_model), "
        "mpnet (embed.sentence_model), or a model id or folder. Default: minilm.",
        show_default=False,
    ),
]
PaperEmbedderOption = Annotated[
    list[str] | None,
    typer.Option(
        "--embedder",
        "-e",
        help="Text-embedding space (repeatable): clip (embed.clip_model), mpnet (embed.sentence_model), minilm "
        "(offline, from its package), or a model id or folder. Default: clip and mpnet, the published numbers' "
        "spaces; where one cannot be loaded, minilm stands in and the output says so.",
        show_default=False,
    ),
]
BinsOption = Annotated[int, typer.Option("--bins", min=1, help="Histogram bins over similarity −1…1.")]
DeviceOption = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]


def check_out(path: Path | None, row: str | None = None) -> None:
    """Raise :class:`DnDError` unless a file can be written at ``--out`` ``path`` (nothing to check for None), so
    that a typo fails before the work rather than after it.

    ``row``: what one CSV row holds, for a command that writes ``.csv`` or ``.json`` by the suffix (None: any name).
    The folder may not exist yet (it is made when the file is written): its nearest existing parent must be a
    folder this process can write in.
    """
    if path is None:
        return
    if row is not None:
        from dnd.evaluate.output import check_out_path

        check_out_path(path, row)
    if path.is_dir():
        raise DnDError(f"--out {path} is a folder: give a file path, e.g. --out {path / 'results.csv'}")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise DnDError(f"--out {path}: {folder} is a file, not a folder; choose a path under a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise DnDError(f"--out {path}: cannot write in {folder} (permission denied); choose a folder you can write to")
