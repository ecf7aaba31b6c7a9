"""Readers for published neuron-description files, all returning one :class:`LabelSet`.

Formats (sniffed from the header by :func:`read_labels`):

- CLIP-Dissect ``descriptions.csv``: ``layer,unit,description,similarity``
- the DnD authors' CSVs: ``Neuron ID,Label 1,Label 2,Label 3`` or ``Neuron ID,label`` (no layer column)
- MILAN: ``layer,unit,description``
- NetDissect: ``unit,category,label,score,...`` with 1-based units (no layer column)

For files without a layer column the layer is the file name's last ``_``-separated part
(``resnet50_imagenet_broden_layer3.csv`` → ``layer3``) unless one is given. A row that does not parse is kept out of
the set and reported in :attr:`LabelSet.warnings` with its line number; it is never dropped silently.
"""

from __future__ import annotations

import csv
import glob
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from pydantic import BaseModel, Field, ValidationError

from dnd.artifacts import Labels
from dnd.errors import DnDError
from dnd.layout import ARTIFACT_FILE, FINAL_RESULTS_FILE
from dnd.store import read_model

_QUOTES = "\"'"
_GLOB_CHARS = "*?["


class LabelRow(BaseModel):
    """One neuron's labels, best first (at least one)."""

    layer: str
    unit: int = Field(ge=0, description="0-based neuron index within the layer.")
    labels: list[str]
    score: float | None = None


class LabelSet(BaseModel):
    """Neuron descriptions from one source: a published file or one of our runs."""

    source: str = Field(description="Where the labels came from (a file path).")
    method: str = Field(description="clip-dissect, dnd, milan or netdissect.")
    rows: list[LabelRow]
    warnings: list[str] = Field(default_factory=list, description="Rows that did not parse, with line numbers.")

    def layers(self) -> list[str]:
        """The layers present, in order of first appearance."""
        return list(dict.fromkeys(row.layer for row in self.rows))

    def check_layers(self, layers: list[str]) -> None:
        """Raise :class:`DnDError`, naming the layers this set has, if any of ``layers`` is not among them."""
        missing = [layer for layer in layers if layer not in self.layers()]
        if missing:
            have = ", ".join(self.layers()) or "no readable row"
            raise DnDError(f"layer {', '.join(missing)} is not in {self.source}; it has: {have}")

    def units(self, layer: str) -> dict[int, LabelRow]:
        """``unit → row`` for one layer."""
        return {row.unit: row for row in self.rows if row.layer == layer}

    def check_units(
        self,
        layer: str,
        n_neurons: int,
        units: Iterable[int] | None = None,
        fix: str = "is the label file for the network in the config?",
    ) -> None:
        """Raise :class:`DnDError`, ending with ``fix``, if any of ``units`` (default: every unit this set labels in
        ``layer``) is beyond a layer of ``n_neurons`` neurons."""
        beyond = [unit for unit in (self.units(layer) if units is None else units) if unit >= n_neurons]
        if beyond:
            raise DnDError(
                f"{self.name} labels units {beyond[:5]} of {layer}, but this network's {layer} has {n_neurons} "
                f"neurons (0-{n_neurons - 1}): {fix}"
            )

    @property
    def name(self) -> str:
        """A short name for tables: the file name."""
        return Path(self.source).name


class _RowError(ValueError):
    """A row that does not parse; the message says why."""


def read_labels(path: str | Path, layer: str | None = None) -> LabelSet:
    """Read any supported label file (format sniffed from its header), or one of our runs' label folders.

    ``layer`` names the layer of a file that has no layer column (default: from the file name); files with a
    layer column ignore it. Raises :class:`DnDError` for a missing file or an unknown format.
    """
    path = Path(path)
    if path.is_dir():
        return read_run_labels(path)
    header = _header(path)
    for label_format in _FORMATS:
        if all(column in header for column in label_format.columns):
            return _read_table(path, label_format, layer)
    known = "; ".join(f"{f.method}: {','.join(f.columns)}" for f in _FORMATS)
    raise DnDError(f"{path}: unknown label file format (header {','.join(header)}). Known headers: {known}")


def read_label_source(spec: str) -> LabelSet:
    """A command-line label source, one of:

    - ``PATH``: any file :func:`read_labels` reads;
    - ``PATH:LAYER``: a file without a layer column, and its layer;
    - a glob pattern (quoted on the shell), e.g. ``'dnd/resnet50_*_layer?.csv'``: files of one layer each, read
      together as one label set.
    """
    if any(char in spec for char in _GLOB_CHARS) and not Path(spec).exists():
        files = sorted(glob.glob(spec))
        if not files:
            raise DnDError(f"no label file matches {spec!r}")
        return merge_label_sets([read_labels(file) for file in files], source=spec)
    path, sep, layer = spec.rpartition(":")
    if sep and path and not Path(spec).exists() and Path(path).exists():
        return read_labels(path, layer or None)
    return read_labels(spec)


def merge_label_sets(parts: list[LabelSet], source: str) -> LabelSet:
    """One label set from several (e.g. one file per layer); a neuron given twice keeps its first labels."""
    rows: dict[tuple[str, int], LabelRow] = {}
    warnings = [warning for part in parts for warning in part.warnings]
    for part in parts:
        for row in part.rows:
            if (row.layer, row.unit) in rows:
                warnings.append(f"{part.name}: unit {row.unit} of {row.layer} also in an earlier file; ignored")
            else:
                rows[row.layer, row.unit] = row
    methods = sorted({part.method for part in parts})
    return LabelSet(source=source, method="+".join(methods), rows=list(rows.values()), warnings=warnings)


def read_run_labels(folder: Path) -> LabelSet:
    """Labels of one of our runs: the folder of a finished score stage (``<output_dir>/<run>/<layer>/score-<key>/``,
    holding a ``Labels`` artifact). Each neuron's row has its labels best first and Label 1's score; a failed neuron
    becomes a warning with its reason."""
    path = folder / ARTIFACT_FILE
    if not path.is_file():
        raise DnDError(
            f"{folder} is a folder without {ARTIFACT_FILE}: reading a run's labels needs the score stage's folder "
            f"(<output_dir>/<run>/<layer>/score-<key>/, shown by `dnd status`), or pass a label file (CSV)"
        )
    try:
        labels = read_model(path, Labels)
    except ValidationError:
        raise DnDError(
            f"{path} is not the artifact of a score stage (stage 6 labels); pass a score-<key> folder"
        ) from None
    rows: list[LabelRow] = []
    warnings: list[str] = []
    for entry in labels.neurons:
        if entry.failed is not None or not entry.labels:
            reason = entry.failed or "none kept"
            warnings.append(f"{folder.name}: unit {entry.neuron} of {labels.layer} has no label: {reason}")
            continue
        score = entry.scores[0].score if entry.scores else None
        rows.append(LabelRow(layer=labels.layer, unit=entry.neuron, labels=entry.labels, score=score))
    return LabelSet(source=str(folder), method="dnd", rows=rows, warnings=warnings)


# --- formats ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Format:
    method: str
    columns: tuple[str, ...]  # header columns that identify the format
    parse: Callable[[dict[str, str], str], LabelRow]  # (cells by lower-cased column, layer) → row
    has_layer_column: bool


def _clip_dissect_row(cells: dict[str, str], _layer: str) -> LabelRow:
    return _row(_required(cells, "layer"), _unit(cells["unit"]), [cells["description"]], _score(cells["similarity"]))


def _milan_row(cells: dict[str, str], _layer: str) -> LabelRow:
    return _row(_required(cells, "layer"), _unit(cells["unit"]), [cells["description"]])


def _dnd_row(cells: dict[str, str], layer: str) -> LabelRow:
    labels = [value for name, value in cells.items() if name.startswith("label")]
    return _row(layer, _unit(cells["neuron id"]), labels)


def _netdissect_row(cells: dict[str, str], layer: str) -> LabelRow:
    unit = _unit(cells["unit"]) - 1
    if unit < 0:
        raise _RowError(f"unit {cells['unit'].strip()} is not 1-based (NetDissect numbers units from 1)")
    return _row(layer, unit, [cells["label"]], _score(cells.get("score", "")))


CLIP_DISSECT = _Format("clip-dissect", ("layer", "unit", "description", "similarity"), _clip_dissect_row, True)
MILAN = _Format("milan", ("layer", "unit", "description"), _milan_row, True)
DND = _Format("dnd", ("neuron id",), _dnd_row, False)
NETDISSECT = _Format("netdissect", ("unit", "category", "label"), _netdissect_row, False)
#: Checked in this order by :func:`read_labels`, the most specific header first.
_FORMATS = (CLIP_DISSECT, MILAN, DND, NETDISSECT)


# --- parsing ------------------------------------------------------------------------------------------------


def _read_table(path: Path, label_format: _Format, layer: str | None) -> LabelSet:
    """Parse every data row of ``path``; rows that fail, or repeat a neuron, become warnings with line numbers."""
    if not label_format.has_layer_column:
        layer = layer or _layer_from_name(path)
        if not layer:
            raise DnDError(
                f"{path} ({label_format.method}) has no layer column and its name does not end in _<layer>.csv: "
                f"give its layer (on the command line: {path}:<layer>)"
            )
    rows: list[LabelRow] = []
    warnings: list[str] = []
    first_line: dict[tuple[str, int], int] = {}
    for line, cells, extra in _records(path):
        try:
            if extra:
                raise _RowError(f"{extra} more cell(s) than the header's columns")
            row = label_format.parse(cells, layer or "")
        except _RowError as exc:
            warnings.append(f"{path.name}:{line}: {exc}")
            continue
        except KeyError as exc:
            warnings.append(f"{path.name}:{line}: no value for column {exc}")
            continue
        neuron = (row.layer, row.unit)
        if neuron in first_line:
            warnings.append(
                f"{path.name}:{line}: unit {row.unit} of {row.layer} already given on line {first_line[neuron]}; "
                f"this row is ignored"
            )
            continue
        first_line[neuron] = line
        rows.append(row)
    return LabelSet(source=str(path), method=label_format.method, rows=rows, warnings=warnings)


def _records(path: Path) -> Iterator[tuple[int, dict[str, str], int]]:
    """``(line number, cells by lower-cased column name, count of extra non-blank cells)`` per non-blank data row.

    A row with fewer cells than the header leaves the missing columns out, so its parser reports them.
    """
    with _open(path) as handle:
        reader = csv.reader(handle)
        header = [name.strip().lower() for name in next(reader, [])]
        line = reader.line_num + 1
        for cells in reader:
            if any(cell.strip() for cell in cells):
                extra = sum(1 for cell in cells[len(header) :] if cell.strip())
                yield line, dict(zip(header, cells, strict=False)), extra
            line = reader.line_num + 1


def _header(path: Path) -> list[str]:
    with _open(path) as handle:
        return [name.strip().lower() for name in next(csv.reader(handle), [])]


def _open(path: Path) -> TextIO:
    if not path.is_file():
        hint = "it is a folder" if path.exists() else "no such file"
        raise DnDError(f"label file {path} cannot be read: {hint}")
    return path.open(newline="", encoding="utf-8-sig")


def _row(layer: str, unit: int, labels: list[str], score: float | None = None) -> LabelRow:
    cleaned = [_clean(label) for label in labels]
    cleaned = [label for label in cleaned if label]
    if not cleaned:
        raise _RowError(f"unit {unit} has no label")
    return LabelRow(layer=layer, unit=unit, labels=cleaned, score=score)


def _clean(label: str) -> str:
    """Strip spaces and the stray quotes some published files wrap labels in (``"mens formal wear"``)."""
    return label.strip().strip(_QUOTES).strip()


def _required(cells: dict[str, str], column: str) -> str:
    value = cells[column].strip()
    if not value:
        raise _RowError(f"empty {column}")
    return value


def _unit(value: str) -> int:
    try:
        unit = int(value.strip())
    except ValueError:
        raise _RowError(f"unit {value!r} is not a whole number") from None
    if unit < 0:
        raise _RowError(f"unit {unit} is negative")
    return unit


def _score(value: str) -> float | None:
    if not value.strip():
        return None
    try:
        return float(value)
    except ValueError:
        raise _RowError(f"score {value!r} is not a number") from None


def _layer_from_name(path: Path) -> str | None:
    """``resnet50_imagenet_broden_layer3.csv`` → ``layer3``; our runs' ``<run>/layer3/final_results.csv`` →
    ``layer3`` (the folder is the layer); None when the name has no ``_``."""
    if path.name == FINAL_RESULTS_FILE and path.parent.name:
        return path.parent.name
    stem = path.stem
    return stem.rsplit("_", 1)[1] if "_" in stem else None
