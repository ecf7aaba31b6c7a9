"""The store of generated images, shared by every stage, run and evaluation under one output folder.

An image is kept as a PNG under the content key of everything that made its pixels: the generator's name (model and
every setting that changes pixels), the prompt and the seed. Image ``i`` of a prompt is seeded by a hash of (run
seed, prompt, ``i``), never by its place in a batch, so the same concept proposed by another neuron, layer or run, or
by a CoSy evaluation, finds its images already there. Stage 5 fills the store, stage 6 and CoSy read it.

Equal pixels are stored once (a retrieval generator returns the same pool image for many requests), and a request the
generator had no image for is remembered as such, so it is not asked again.
"""

from __future__ import annotations

import functools
import io
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dnd import layout
from dnd.backends.generators import GenerationRequest
from dnd.batching import BatchFunction, cached_map
from dnd.exemplars import pixel_hash
from dnd.halving import fitting, joined_lists
from dnd.store import atomic_write_bytes, content_key

if TYPE_CHECKING:
    from dnd.backends.container import Backends

#: Seeds are this wide so that every random number generator accepts them.
SEED_BITS = 32
#: zlib level of stored PNGs: 1 writes a photo about 3× faster than PIL's default 6, for files about 4% larger.
PNG_COMPRESS_LEVEL = 1
#: Where the pixels of stored images live once each, inside the store.
PIXELS_FOLDER = "pixels"


class ImageStore:
    """Generated images as PNG files under their content key: ``<root>/<key[:2]>/<key>.png``.

    Each key's file is a hard link to ``<root>/pixels/<pixel hash>.png`` (a copy where the filesystem has no hard
    links), so equal pixels take the disk once. A request the generator had no image for is an empty
    ``<key>.none`` file (:meth:`put_nothing`).
    """

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.png"

    def has(self, key: str) -> bool:
        """True when ``key`` is settled: its image is stored, or the generator had none for it."""
        return self.path(key).is_file() or self.is_nothing(key)

    def is_nothing(self, key: str) -> bool:
        """True when the generator had no image for ``key`` (e.g. nothing left to retrieve)."""
        return self._nothing_path(key).is_file()

    def put(self, key: str, image: Any) -> None:
        """Store a PIL image atomically, its pixels once however many keys share them."""
        digest = pixel_hash(image)
        pixels = self.root / PIXELS_FOLDER / digest[:2] / f"{digest}.png"
        if not _readable_png(pixels):  # absent, or damaged since: (re)written, so a deleted key can be stored anew
            buffer = io.BytesIO()
            image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
            atomic_write_bytes(pixels, buffer.getvalue())
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        try:
            try:
                os.link(pixels, tmp)
            except OSError:  # no hard links here (another filesystem, FAT, ...): a copy is as good, only bigger
                shutil.copyfile(pixels, tmp)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    def put_nothing(self, key: str) -> None:
        """Remember that the generator had no image for ``key``."""
        atomic_write_bytes(self._nothing_path(key), b"")

    def _nothing_path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.none"

    def load(self, key: str) -> Any:
        """The stored image as PIL RGB."""
        from PIL import Image

        with Image.open(self.path(key)) as image:
            return image.convert("RGB")


def image_store(output_dir: Path) -> ImageStore:
    """The image store of every run under ``output_dir``."""
    return ImageStore(layout.images_dir(output_dir))


def image_seed(run_seed: int, prompt: str, index: int) -> int:
    """The seed of image ``index`` of ``prompt``: a hash, so it never depends on batches or the order of concepts."""
    return int(content_key({"seed": run_seed, "prompt": prompt, "image": index}), 16) % 2**SEED_BITS


def plan_images(
    prompts: dict[str, str], images_per_prompt: int, run_seed: int, generator: str
) -> tuple[dict[str, GenerationRequest], dict[str, list[str]]]:
    """``(request by image key, image keys by label)`` for ``images_per_prompt`` images of each label's prompt.

    ``prompts`` maps a label (a concept, a description) to its filled-in prompt. The key of an image is the content
    key of everything that makes its pixels: the generator's name (model and settings), the prompt and the seed.
    """
    requests: dict[str, GenerationRequest] = {}
    keys_of: dict[str, list[str]] = {}
    for label, prompt in prompts.items():
        keys_of[label] = []
        for index in range(images_per_prompt):
            request = GenerationRequest(prompt, image_seed(run_seed, prompt, index), concept=label, index=index)
            key = content_key({"generator": generator, "prompt": request.prompt, "seed": request.seed})
            requests[key] = request
            keys_of[label].append(key)
    return requests, keys_of


def generate_missing(
    store: ImageStore,
    backends: Backends,
    requests: dict[str, GenerationRequest],
    batch_size: int,
    description: str,
) -> tuple[int, int]:
    """Generate the ``requests`` whose key ``store`` lacks, ``batch_size`` at a time, storing each batch as it
    returns (a killed run keeps every finished batch); return ``(images generated, generator calls)``.

    Batches may mix prompts, and are halved if they run out of GPU memory. The generator (``backends.generator``) is
    built only if an image is missing. A request the generator has no image for (retrieval with nothing more to give)
    is stored as such, so it is not asked again.
    """

    def load() -> BatchFunction[GenerationRequest, Any]:
        generator = backends.generator
        run = functools.partial(fitting("generator").run, generator.generate, join=joined_lists)
        return BatchFunction(run, f"generator {generator.name}", "images", "requests")

    stored = cached_map(
        _Settled(store), requests, requests.__getitem__, load, batch_size, description, keep_computed=False
    )
    return stored.computed, stored.calls


class _Settled:
    """The image store as :func:`~dnd.batching.cached_map`'s store: a key is found once it is settled (its image
    stored, or none to be had), and a generator's answer is stored as an image or as nothing."""

    def __init__(self, store: ImageStore):
        self.store = store

    def get(self, key: str) -> bool | None:
        return True if self.store.has(key) else None

    def put(self, key: str, image: Any) -> None:
        if image is None:
            self.store.put_nothing(key)
        else:
            self.store.put(key, image)


def _readable_png(path: Path) -> bool:
    """True when ``path`` is a complete PNG (its chunks' checksums verified, pixels not decoded)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.verify()
    except (OSError, SyntaxError, ValueError):
        return False
    return True
