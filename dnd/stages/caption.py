"""Stage 3 — caption: a caption for every exemplar of every requested neuron.

Exemplars are rendered exactly as stage 2 ranked them (:func:`dnd.stages.crop.render_exemplar`) and keyed by a hash
of their pixels, so an image shared by several neurons (or layers, or runs) is captioned once per captioner. Captions
live in the item cache ``captions`` under ``content_key({"captioner": name, "image": pixel hash})``; each batch is
stored as soon as it is captioned, so a killed run keeps every finished batch. The captioner is loaded only when an
image is missing from the cache.
"""

from __future__ import annotations

import hashlib
import time

from PIL import Image

from dnd.artifacts import Caption, Captions, CropBox, ExemplarImage, Exemplars, NeuronCaptions, NeuronExemplars
from dnd.data import UnreadableImage
from dnd.pipeline import StageContext, StageJob, StageSpec
from dnd.progress import track
from dnd.stages.crop import render_exemplar
from dnd.store import ARTIFACT_FILE, content_key, read_model

CACHE_NAMESPACE = "captions"


def pixel_hash(image: Image.Image) -> str:
    """sha256 of an image's size and RGB bytes: equal pixels, equal hash, whatever file or crop they came from."""
    rgb = image.convert("RGB")
    return hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode() + rgb.tobytes()).hexdigest()


def run(ctx: StageContext, jobs: list[StageJob]) -> None:
    """Caption the exemplars of ``job.neurons`` for every layer of ``jobs`` and add them to the layer's artifact."""
    name = ctx.backends.captioner_name()
    cache = ctx.cache(CACHE_NAMESPACE)
    for job in jobs:
        started = time.perf_counter()
        # 1. The requested neurons' exemplars, from stage 2.
        exemplars = read_model(job.upstream["crop"] / ARTIFACT_FILE, Exemplars)
        by_neuron = {entry.neuron: entry for entry in exemplars.neurons}
        entries = [by_neuron[neuron] for neuron in sorted(job.neurons or [])]
        # 2. Render every exemplar once and key it by its pixels and the captioner.
        images = _ImageKeys(ctx, name)
        for entry in track(entries, f"caption {job.layer}: read exemplars"):
            images.add(entry)
        # 3. Captions already in the cache; the remaining unique images are still to caption.
        captions = {key: text for key in images.sources if (text := cache.get(key)) is not None}
        missing = [key for key in images.sources if key not in captions]
        # 4. Caption the missing images in batches, storing each batch the moment it exists.
        batch_size = ctx.config.caption.batch_size
        batches = [missing[i : i + batch_size] for i in range(0, len(missing), batch_size)]
        if batches:
            captioner = ctx.backends.captioner  # built only now: a fully cached run never loads the model
            for batch in track(batches, f"caption {job.layer}"):
                texts = captioner.caption([images.render(key) for key in batch])
                if len(texts) != len(batch):
                    raise RuntimeError(f"captioner {name} returned {len(texts)} captions for {len(batch)} images")
                for key, text in zip(batch, texts, strict=True):
                    cache.put(key, text)
                    captions[key] = text
        # 5. Each neuron's captions in exemplar order; neurons without exemplars carry their reason.
        neurons = [images.neuron_captions(entry, captions) for entry in entries]
        counts = {
            "unique_images": len(images.sources),
            "captioned": len(missing),
            "cache_hits": len(images.sources) - len(missing),
            "captioner_calls": len(batches),
        }
        artifact = Captions(layer=job.layer, captioner=name, neurons=neurons)
        ctx.write_per_neuron(job, artifact, time.perf_counter() - started, counts)


class _ImageKeys:
    """The cache key of every exemplar of a layer's neurons, and one exemplar to render per key.

    Only keys are kept, never pixels, so memory does not grow with the number of exemplars; an exemplar (probe
    image and box) is rendered once here however many neurons share it, and once more if it must be captioned.
    """

    def __init__(self, ctx: StageContext, captioner: str):
        self.ctx = ctx
        self.captioner = captioner
        self.sources: dict[str, ExemplarImage] = {}  # cache key -> an exemplar with these pixels
        self.keys: dict[int, list[str]] = {}  # neuron -> cache key of each of its exemplars
        self.failed: dict[int, str] = {}  # neuron -> why it has no captions
        self._rendered: dict[tuple[int, CropBox | None], str] = {}  # exemplar -> cache key
        self._unreadable: dict[int, str] = {}  # probe index -> error

    def add(self, entry: NeuronExemplars) -> None:
        """Key ``entry``'s exemplars, or record why the neuron cannot be captioned."""
        if entry.failed is not None:
            self.failed[entry.neuron] = f"crop stage failed: {entry.failed}"
            return
        keys, lost = [], []
        for exemplar in entry.exemplars:
            try:
                keys.append(self._key(exemplar))
            except UnreadableImage as exc:
                lost.append(f"{exemplar.image_id} ({exc})")
        if lost:
            self.failed[entry.neuron] = (
                f"exemplar image(s) unreadable since stage 2 read them: {', '.join(lost)}; restore them and run "
                f"`dnd run caption --force`"
            )
            return
        self.keys[entry.neuron] = keys
        for key, exemplar in zip(keys, entry.exemplars, strict=True):
            self.sources.setdefault(key, exemplar)

    def render(self, key: str) -> Image.Image:
        """The pixels behind cache key ``key`` (PIL RGB)."""
        return self._render(self.sources[key])

    def neuron_captions(self, entry: NeuronExemplars, captions: dict[str, str]) -> NeuronCaptions:
        """``entry``'s captions in exemplar order (``captions`` maps cache key -> text), or its failure."""
        if entry.neuron in self.failed:
            return NeuronCaptions(neuron=entry.neuron, failed=self.failed[entry.neuron])
        pairs = zip(entry.exemplars, self.keys[entry.neuron], strict=True)
        return NeuronCaptions(
            neuron=entry.neuron,
            captions=[Caption(image_id=e.image_id, box=e.box, text=captions[key]) for e, key in pairs],
        )

    def _key(self, exemplar: ExemplarImage) -> str:
        """The cache key of ``exemplar``'s pixels; raises :class:`UnreadableImage` when its image cannot be read."""
        if exemplar.probe_index in self._unreadable:
            raise UnreadableImage(self._unreadable[exemplar.probe_index])
        identity = (exemplar.probe_index, exemplar.box)  # CropBox is frozen, so hashable
        if identity not in self._rendered:
            try:
                image = self._render(exemplar)
            except UnreadableImage as exc:
                self._unreadable[exemplar.probe_index] = str(exc)
                raise
            self._rendered[identity] = content_key({"captioner": self.captioner, "image": pixel_hash(image)})
        return self._rendered[identity]

    def _render(self, exemplar: ExemplarImage) -> Image.Image:
        return render_exemplar(self.ctx.probe, self.ctx.backends.target, exemplar)


SPEC = StageSpec(
    name="caption",
    version=1,
    needs=("crop",),
    config_sections=("caption",),
    run=run,
    artifact=Captions,
    per_neuron=True,
)
