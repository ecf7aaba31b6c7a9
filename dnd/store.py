"""The content-addressed stage store.

Layout: ``<root>/<layer>/<stage>-<key>/`` holds ``artifact.json``, ``manifest.json`` and any tensors or images of
one finished stage. The key hashes exactly what the output depends on, so a finished stage is reused whenever its
inputs are unchanged and recomputed whenever any of them changes. A stage is first written to a private temporary
folder and renamed into place when complete, so a killed run never leaves a half-written stage behind; work that
can be resumed (shards, per-item results) lives in ``<root>/<layer>/.<stage>-<key>.partial/`` until the stage ends.
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

ARTIFACT_FILE = "artifact.json"
MANIFEST_FILE = "manifest.json"
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
        return self.root / layer / f"{stage}-{key}"

    def partial_dir(self, layer: str, stage: str, key: str) -> Path:
        """Where a stage keeps resumable work in progress (created on demand)."""
        path = self.root / layer / f".{stage}-{key}.partial"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def is_complete(self, layer: str, stage: str, key: str) -> bool:
        return (self.stage_dir(layer, stage, key) / ARTIFACT_FILE).is_file()

    def status(self, layer: str, stage: str, key: str) -> Status:
        """fresh: done for these inputs; stale: done only for other inputs; missing: never done."""
        if self.is_complete(layer, stage, key):
            return "fresh"
        layer_dir = self.root / layer
        if layer_dir.is_dir() and any((p / ARTIFACT_FILE).is_file() for p in layer_dir.glob(f"{stage}-*")):
            return "stale"
        return "missing"

    def load(self, layer: str, stage: str, key: str, artifact_type: type[ArtifactT]) -> ArtifactT:
        return read_model(self.stage_dir(layer, stage, key) / ARTIFACT_FILE, artifact_type)

    def discard_partial(self, layer: str, stage: str, key: str) -> None:
        shutil.rmtree(self.root / layer / f".{stage}-{key}.partial", ignore_errors=True)

    @contextlib.contextmanager
    def writing(self, layer: str, stage: str, key: str) -> Iterator[Path]:
        """Yield an empty temporary folder; on success it becomes the stage's folder in one rename.

        The stage writes its ``artifact.json`` (and anything else) inside the block; the folder only appears under
        its final name once the block has finished without an exception.
        """
        final = self.stage_dir(layer, stage, key)
        tmp = self.root / ".tmp" / f"{stage}-{key}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            yield tmp
            if not (tmp / ARTIFACT_FILE).is_file():
                raise RuntimeError(f"stage {stage!r} finished without writing {ARTIFACT_FILE}")
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists():  # a forced re-run: the new output replaces the old one
                shutil.rmtree(final)
            os.replace(tmp, final)
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


class ImageStore:
    """Generated images as PNG files under their content key: ``<root>/<key[:2]>/<key>.png``.

    The key hashes everything that made the image (model, prompt, seed, steps, guidance, size), so an image is
    generated once and then shared by every neuron, stage and run under the same output folder.
    """

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.png"

    def has(self, key: str) -> bool:
        return self.path(key).is_file()

    def put(self, key: str, image: Any) -> None:
        """Store a PIL image atomically."""
        import io

        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        atomic_write_bytes(self.path(key), buffer.getvalue())

    def load(self, key: str) -> Any:
        """The stored image as PIL RGB."""
        from PIL import Image

        with Image.open(self.path(key)) as image:
            return image.convert("RGB")
