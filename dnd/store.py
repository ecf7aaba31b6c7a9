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
import uuid
from collections.abc import Iterator
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
        in place, so the old output stays whole until it is replaced.
        """
        final = self.stage_dir(layer, stage, key)
        staging = layout.staging_dir(self.root)
        tmp = staging / f"{stage}-{key}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        replaced = staging / f"{tmp.name}.replaced"
        try:
            yield tmp
            if not (tmp / ARTIFACT_FILE).is_file():
                raise RuntimeError(f"stage {stage!r} finished without writing {ARTIFACT_FILE}")
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists():
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
        self.discard_partial(layer, stage, key)


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
