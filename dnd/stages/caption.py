"""Stage 3 — caption: a caption for every exemplar of every requested neuron.

Exemplars are rendered exactly as stage 2 ranked them (:mod:`dnd.exemplars`) and keyed by a hash
of their pixels, so an image shared by several neurons (or layers, or runs) is captioned once per captioner. Captions
live in the item cache ``captions`` under ``content_key({"captioner": name, "image": pixel hash})``
(:func:`dnd.backends.captioners.caption_key`; the retrieval generator captions its pool into the same cache); each
batch is stored as soon as it is captioned, so a killed run keeps every finished batch. The captioner is loaded only
when an image is missing from the cache. In a job of several processes, each renders its share of the neurons'
exemplars and captions its share of the unique images.
"""

from __future__ import annotations

from PIL import Image

from dnd.artifacts import Caption, Captions, ExemplarImage, NeuronCaptions, NeuronExemplars
from dnd.backends.captioners import CAPTION_CACHE, caption_into_cache, caption_key
from dnd.exemplars import ExemplarHashes, ExemplarPixels, hash_exemplars
from dnd.stages.base import NeuronWork, StageContext, StageSpec


def compute(ctx: StageContext, work: NeuronWork) -> tuple[Captions, dict[str, int]]:
    """Caption the exemplars of ``work.neurons`` of one layer; return their captions and backend-call counts."""
    name = ctx.backends.captioner_identity()
    cache = ctx.cache(CAPTION_CACHE)
    # 1. The neurons' exemplars, from stage 2.
    entries = [work.entries["crop"][neuron] for neuron in work.neurons]
    # 2. Render every exemplar once and key it by its pixels and the captioner.
    pixels = ExemplarPixels(ctx.probe, ctx.backends.target)
    images = _ImageKeys(pixels, name)
    hashes = hash_exemplars(pixels, entries, ctx.ranks, f"caption {work.layer}: read exemplars")
    for entry, hashed in zip(entries, hashes, strict=True):
        images.add(entry, hashed)
    # 3-4. Each process captions its share of the unique images: from the cache, or in batches with the captioner
    #      (loaded only now: a fully cached run never loads the model), each batch stored the moment it exists.
    captioned = caption_into_cache(
        lambda: ctx.backends.captioner,
        images.sources,
        images.render,
        cache,
        ctx.config.caption.batch_size,
        f"caption {work.layer}",
        ctx.ranks,
    )
    counts = {
        "unique_images": captioned.items,
        "captioned": captioned.computed,
        "cache_hits": captioned.hits,
        "captioner_calls": captioned.calls,
    }
    captions = captioned.values
    # 5. Each neuron's captions in exemplar order; a neuron with an unreadable exemplar carries the reason.
    neurons = [images.neuron_captions(entry, captions) for entry in entries]
    return Captions(layer=work.layer, captioner=name, neurons=neurons), counts


class _ImageKeys:
    """The cache key of every exemplar of a layer's neurons, and one exemplar to render per key.

    Only keys are kept, never pixels, so memory does not grow with the number of exemplars; an exemplar (probe
    image and box) is rendered once here however many neurons share it, and once more if it must be captioned.
    """

    def __init__(self, pixels: ExemplarPixels, captioner: str):
        self.pixels = pixels
        self.captioner = captioner
        self.sources: dict[str, ExemplarImage] = {}  # cache key -> an exemplar with these pixels
        self.keys: dict[int, list[str]] = {}  # neuron -> cache key of each of its exemplars
        self.failed: dict[int, str] = {}  # neuron -> why it has no captions

    def add(self, entry: NeuronExemplars, hashed: ExemplarHashes) -> None:
        """Key ``entry``'s exemplars by their pixel hashes, or record why the neuron cannot be captioned."""
        if hashed.lost:
            self.failed[entry.neuron] = (
                f"exemplar image(s) unreadable since stage 2 read them: {', '.join(hashed.lost)}; restore them and run "
                f"`dnd run caption --force`"
            )
            return
        keys = [caption_key(self.captioner, digest) for digest in hashed.hashes]
        self.keys[entry.neuron] = keys
        for key, exemplar in zip(keys, entry.exemplars, strict=True):
            self.sources.setdefault(key, exemplar)

    def render(self, key: str) -> Image.Image:
        """The pixels behind cache key ``key`` (PIL RGB)."""
        return self.pixels.render(self.sources[key])

    def neuron_captions(self, entry: NeuronExemplars, captions: dict[str, str]) -> NeuronCaptions:
        """``entry``'s captions in exemplar order (``captions`` maps cache key -> text), or its failure."""
        if entry.neuron in self.failed:
            return NeuronCaptions(neuron=entry.neuron, failed=self.failed[entry.neuron])
        pairs = zip(entry.exemplars, self.keys[entry.neuron], strict=True)
        return NeuronCaptions(
            neuron=entry.neuron,
            captions=[Caption(image_id=e.image_id, box=e.box, text=captions[key]) for e, key in pairs],
        )


def _extra_inputs(ctx: StageContext) -> dict[str, object]:
    # The captioner's name: an injected captioner, or one its config section does not fully name, keys its own folder.
    return {"captioner": ctx.backends.captioner_identity()}


SPEC = StageSpec(
    name="caption",
    version=1,
    needs=("crop",),
    config_sections=("caption",),
    artifact=Captions,
    compute=compute,
    extra_inputs=_extra_inputs,
)
