"""The content-addressed stage store, atomic writes and the per-item cache.

A run's store (``<output_dir>/<run>``, see :mod:`dnd.layout`) holds one folder per finished stage and layer, named by
the stage and its key; the key hashes exactly what the output depends on, so a finished stage is reused whenever its
inputs are unchanged and recomputed whenever any of them changes. A stage is first written to a private temporary
folder and renamed into place when complete, so a killed run never leaves a half-written stage behind; work that
can be resumed (record's shards) lives in the stage's partial folder until the stage ends.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import struct
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel

from dnd import layout
from dnd.layout import ARTIFACT_FILE

KEY_LENGTH = 16

Status = Literal["fresh", "stale", "missing"]
ArtifactT = TypeVar("ArtifactT", bound=BaseModel)


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace, so equal inputs always hash equally."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def content_key(payload: Any) -> str:
    """A short stable hash of a JSON-ready payload."""
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:KEY_LENGTH]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_save_tensors(path: Path, tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` as a safetensors file that readers see either whole or not at all."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


#: safetensors dtype names of the tensors :func:`atomic_concat_safetensors` writes and :func:`memmap_tensors` reads.
_SAFETENSORS_DTYPES = {"F16": "float16", "F32": "float32", "F64": "float64", "I64": "int64", "I32": "int32"}
_HEADER_ALIGNMENT = 8


def atomic_concat_safetensors(path: Path, sources: Sequence[Path], dtypes: dict[str, str]) -> None:
    """Write one safetensors file holding, for each name in ``dtypes``, that tensor of every file in ``sources``
    concatenated along the first dimension and converted to ``dtypes[name]`` (``"F16"``, ``"F32"``, ``"I64"``,
    ...). One source tensor is in memory at a time; readers see the file whole or not at all."""
    import numpy as np
    from safetensors import safe_open

    shapes: dict[str, list[int]] = {}
    for source in sources:
        with safe_open(str(source), "pt") as file:
            for name in dtypes:
                rows, *trailing = file.get_slice(name).get_shape()
                shapes.setdefault(name, [0, *trailing])[0] += rows
    header: dict[str, Any] = {}
    offset = 0
    for name, shape in shapes.items():
        size = int(np.prod(shape, dtype=np.int64)) * np.dtype(_SAFETENSORS_DTYPES[dtypes[name]]).itemsize
        header[name] = {"dtype": dtypes[name], "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-(len(encoded) + 8) % _HEADER_ALIGNMENT)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with tmp.open("wb") as out:
            out.write(struct.pack("<Q", len(encoded)) + encoded)
            for name in shapes:  # tensor by tensor, in the order of the offsets
                for source in sources:
                    with safe_open(str(source), "pt") as file:
                        tensor = file.get_tensor(name)
                    out.write(tensor.numpy().astype(_SAFETENSORS_DTYPES[dtypes[name]], copy=False).tobytes())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def memmap_tensors(path: Path) -> dict[str, Any]:
    """The tensors of a safetensors file, memory-mapped rather than read (copy-on-write: writing to one never
    changes the file): a tensor of any size costs no memory until its pages are touched."""
    import numpy as np
    import torch

    with path.open("rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        header = json.loads(file.read(length))
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        start, end = entry["data_offsets"]
        dtype = np.dtype(_SAFETENSORS_DTYPES[entry["dtype"]])
        if end == start:
            tensors[name] = torch.from_numpy(np.empty(entry["shape"], dtype=dtype))
            continue
        array = np.memmap(path, dtype=dtype, mode="c", offset=8 + length + start, shape=tuple(entry["shape"]))
        tensors[name] = torch.from_numpy(array)
    return tensors


def write_model(path: Path, model: BaseModel) -> None:
    """Atomically write a pydantic model as indented JSON."""
    atomic_write_text(path, model.model_dump_json(indent=1))


def read_model(path: Path, model_type: type[ArtifactT]) -> ArtifactT:
    return model_type.model_validate_json(path.read_text())


class StageStore:
    """Finished stage outputs of one run, under ``root`` (= ``<output_dir>/<run name>``)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def stage_dir(self, layer: str, stage: str, key: str) -> Path:
        return layout.stage_dir(self.root, layer, stage, key)

    def layer_dir(self, layer: str) -> Path:
        return layout.layer_dir(self.root, layer)

    def partial_dir(self, layer: str, stage: str, key: str) -> Path:
        """Where a stage keeps resumable work in progress (created on demand)."""
        path = layout.partial_dir(self.root, layer, stage, key)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def is_complete(self, layer: str, stage: str, key: str) -> bool:
        return (self.stage_dir(layer, stage, key) / ARTIFACT_FILE).is_file()

    def status(self, layer: str, stage: str, key: str) -> Status:
        """fresh: done for these inputs; stale: done only for other inputs; missing: never done."""
        if self.is_complete(layer, stage, key):
            return "fresh"
        layer_dir = self.layer_dir(layer)
        if layer_dir.is_dir() and any(
            (p / ARTIFACT_FILE).is_file() for p in layer_dir.glob(layout.stage_pattern(stage))
        ):
            return "stale"
        return "missing"

    def load(self, layer: str, stage: str, key: str, artifact_type: type[ArtifactT]) -> ArtifactT:
        return read_model(self.stage_dir(layer, stage, key) / ARTIFACT_FILE, artifact_type)

    def discard_partial(self, layer: str, stage: str, key: str) -> None:
        shutil.rmtree(layout.partial_dir(self.root, layer, stage, key), ignore_errors=True)

    @contextlib.contextmanager
    def writing(self, layer: str, stage: str, key: str) -> Iterator[Path]:
        """Yield an empty temporary folder; on success it becomes the stage's folder in one rename.

        The stage writes its ``artifact.json`` (and anything else) inside the block; the folder only appears under
        its final name once the block has finished without an exception. An existing folder of the same key (a
        forced re-run, or neurons added to a per-neuron stage) is moved aside first and deleted once the new one is
        in place, so the old output stays whole until it is replaced; a journal beside it lets :meth:`recover` put
        it back if the process is killed between the two renames.
        """
        final = self.stage_dir(layer, stage, key)
        staging = layout.staging_dir(self.root)
        tmp = staging / f"{stage}-{key}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        replaced = staging / f"{tmp.name}{_REPLACED}"
        journal = staging / f"{tmp.name}{_JOURNAL}"
        try:
            yield tmp
            if not (tmp / ARTIFACT_FILE).is_file():
                raise RuntimeError(f"stage {stage!r} finished without writing {ARTIFACT_FILE}")
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists():
                entry = {"final": final.relative_to(self.root).as_posix(), "replaced": replaced.name}
                atomic_write_text(journal, canonical_json(entry))
                os.replace(final, replaced)
            try:
                os.replace(tmp, final)
            except BaseException:
                if replaced.exists():
                    os.replace(replaced, final)
                raise
            shutil.rmtree(replaced, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            journal.unlink(missing_ok=True)
        self.discard_partial(layer, stage, key)

    def recover(self) -> list[Path]:
        """Clean up after a killed run (call only while holding the run's lock): a stage folder that was moved aside
        for a replacement that never arrived goes back in place; whatever else is left in the staging folder
        (half-written stage folders) is deleted. Returns the stage folders put back."""
        staging = layout.staging_dir(self.root)
        if not staging.is_dir():
            return []
        restored = []
        for journal in sorted(staging.glob(f"*{_JOURNAL}")):
            entry = json.loads(journal.read_text())
            final, replaced = self.root / entry["final"], staging / entry["replaced"]
            if replaced.exists() and not final.exists():
                os.replace(replaced, final)
                restored.append(final)
            journal.unlink()
        for leftover in staging.iterdir():
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
        return restored


_REPLACED = ".replaced"
_JOURNAL = ".journal"


class ItemCache:
    """Small per-item results (JSON), each under its own content key: ``<root>/<namespace>/<key[:2]>/<key>.json``.

    Items survive a killed run and are shared by every stage and run under the same output folder, so the same
    image is captioned once and the same LLM request is answered once.
    """

    def __init__(self, root: Path, namespace: str):
        self.folder = Path(root) / namespace

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> Any | None:
        path = self.path(key)
        return json.loads(path.read_text()) if path.is_file() else None

    def put(self, key: str, value: Any) -> None:
        atomic_write_text(self.path(key), canonical_json(value))
