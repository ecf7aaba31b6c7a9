"""Writing an evaluation's results: one row per item as CSV, or everything as JSON."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from pathlib import Path

from pydantic import BaseModel

from dnd.errors import DnDError
from dnd.store import atomic_write_text

OUT_SUFFIXES = (".csv", ".json")


def check_out_path(path: Path, row: str) -> None:
    """Raise :class:`DnDError` unless results can be written to ``path`` (checked before any work); ``row`` says
    what one CSV row holds ("neuron", "class and text space")."""
    if path.suffix not in OUT_SUFFIXES:
        raise DnDError(f"--out {path}: write results to a .csv (one row per {row}) or a .json file (everything)")


def write_csv_or_json(
    path: Path, everything: BaseModel, row: str, columns: Sequence[str], rows: Iterable[Sequence[object]]
) -> None:
    """``.json``: ``everything``; ``.csv``: ``rows`` under the header ``columns``. Written atomically."""
    check_out_path(path, row)
    if path.suffix == ".json":
        text = everything.model_dump_json(indent=1)
    else:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
        text = buffer.getvalue()
    atomic_write_text(path, text)
