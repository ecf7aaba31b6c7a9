"""The store of generated images, shared by every stage, run and evaluation under one output folder.

An image is kept as a PNG under the content key of everything that made its pixels: the generator's name (model and
every setting that changes pixels), the prompt and the seed. Image ``i`` of a prompt is seeded by a hash of (run
seed, prompt, ``i``), never by its place in a batch, so the same concept proposed by another neuron, layer or run, or
by a CoSy evaluation, finds its images already there. Stage 5 fills the store, stage 6 and CoSy read it.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dnd import layout
from dnd.backends.generators import GenerationRequest
from dnd.progress import track
from dnd.store import atomic_write_bytes, content_key

if TYPE_CHECKING:
    from dnd.backends import Backends

#: Seeds are this wide so that every random number generator accepts them.
SEED_BITS = 32


class ImageStore:
    """Generated images as PNG files under their content key: ``<root>/<key[:2]>/<key>.png``."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.png"

    def has(self, key: str) -> bool:
        return self.path(key).is_file()

    def put(self, key: str, image: Any) -> None:
        """Store a PIL image atomically."""
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        atomic_write_bytes(self.path(key), buffer.getvalue())

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
            request = GenerationRequest(prompt, image_seed(run_seed, prompt, index))
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

    Batches may mix prompts. The generator (``backends.generator``) is built only if an image is missing.
    """
    missing = [key for key in requests if not store.has(key)]
    batches = [missing[i : i + batch_size] for i in range(0, len(missing), batch_size)]
    if batches:
        generator = backends.generator
        for batch in track(batches, description):
            images = generator.generate([requests[key] for key in batch])
            if len(images) != len(batch):
                raise RuntimeError(
                    f"generator {generator.name} returned {len(images)} images for {len(batch)} requests"
                )
            for key, image in zip(batch, images, strict=True):
                store.put(key, image)
    return len(missing), len(batches)
