"""Stage 6 — score: each neuron's candidate concepts scored on their generated images; the best are its labels.

The formulas (pool ranks, TopK-Squared, Image Products, the scoring functions, ties, the multi-label variant and the
interpretability score) are in :mod:`dnd.scoring`; this module gathers their inputs once per layer:

- **Activations**: the unique generated images of all requested neurons (an image shared by several neurons is
  loaded and run once) go through the target network in one batched pass, with the network's own preprocessing and
  the layer summarised as in stage 1 (``record.summary`` / ``record.tokens``), all neurons at once.
- **CLIP embeddings**: each distinct exemplar (keyed by its pixels, rendered as stage 2 ranked it), each generated
  image that lands in some neuron's top ``score.top_pool`` (the only ones Image Products reads; keyed by its
  image-store id) and each concept text, embedded once per CLIP model (``embed.clip_model``). They live in the item
  caches ``clip-images`` and ``clip-texts``, stored batch by batch, so a re-run or a killed run embeds only what is
  missing, and CLIP is loaded only then. With ``score.image_embedder: classifier`` (offline) the images are embedded
  by the classifier's pooled features and the texts by MiniLM instead, under keys that name those models.

The target network's summaries are kept batch by batch in the stage's progress folder until the stage is written, so
a killed run redoes at most one batch. In a job of several processes, each runs its share of the target-network
batches, renders its share of the exemplars and embeds its share of the missing images and texts.

Whenever a run ends at this stage (computed or cached), the layer's exports ``descriptions.csv`` and
``final_results.csv`` (:mod:`dnd.export`) are rewritten in the layer's folder of the run (:mod:`dnd.layout`), so they
always match the config that ran last. The manifest counts the
``generated_images`` (unique), ``target_passes`` over them (one per layer) and ``target_batches``, the images and
texts CLIP embedded, its ``clip_calls`` (batches) and ``clip_cache_hits``, and ``failed_neurons``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from dnd.activations import StoredActivations
from dnd.artifacts import (
    ExemplarImage,
    Labels,
    NeuronExemplars,
    NeuronGenerations,
    NeuronLabels,
)
from dnd.batching import BatchFunction, EncodedCache, cached_map
from dnd.config import ScoreConfig
from dnd.data import open_rgb
from dnd.exemplars import ExemplarPixels, hash_exemplars
from dnd.export import write_exports
from dnd.halving import fitting, joined_tensors
from dnd.image_store import ImageStore, image_store
from dnd.scoring import RankedImages, label_neuron, rank_pool
from dnd.stages.base import NeuronWork, Requirement, StageContext, StageSpec
from dnd.store import content_key

IMAGE_CACHE = "clip-images"
TEXT_CACHE = "clip-texts"


def compute(ctx: StageContext, work: NeuronWork) -> tuple[Labels, dict[str, int]]:
    """Score the candidate concepts of ``work.neurons`` of one layer; return their labels and backend-call counts."""
    settings = ctx.config.score
    # 1. Each neuron's generated images (stage 5) and exemplars (stage 2).
    failed: dict[int, str] = {}
    scorable = {
        neuron: _Candidate(work.entries["synthesize"][neuron], work.entries["crop"][neuron]) for neuron in work.neurons
    }
    # 2. The layer's activations on every unique generated image, in one batched pass of the target network (loaded
    #    only if there is an image).
    store = image_store(ctx.config.output_dir)
    unique = list(dict.fromkeys(i for n in scorable.values() for ids in n.concept_images() for i in ids))
    activations = StoredActivations.none()
    if unique:
        activations = StoredActivations.compute(
            ctx.backends.target,
            work.layer,
            ctx.config.record,
            store,
            unique,
            settings.batch_size,
            ctx.config.probe.num_workers,
            f"score {work.layer}: target network",
            progress=work.progress,
            ranks=ctx.ranks,
        )
    # 3. Each neuron's pool ranked by its activations; a neuron with an unreadable generated image fails.
    for neuron, candidate in list(scorable.items()):
        concept_images = candidate.concept_images()
        lost = sorted({i for ids in concept_images for i in ids if i in activations.errors})
        if lost:
            failed[neuron] = _lost_generated(store, lost, activations.errors)
            del scorable[neuron]
        else:
            candidate.ranked = rank_pool(concept_images, activations.of(neuron, concept_images))
    # 4. CLIP embeddings of the exemplars, of the generated images in some neuron's top pool, of the concepts.
    clip = _ClipInputs(ctx, store)
    entries = [candidate.chosen for candidate in scorable.values()]
    hashes = hash_exemplars(clip.exemplars, entries, ctx.ranks, f"score {work.layer}: exemplars")
    for (neuron, candidate), hashed in zip(list(scorable.items()), hashes, strict=True):
        if hashed.lost:
            failed[neuron] = (
                f"an exemplar image is unreadable since stage 2 read it: {hashed.lost[0]}; restore it and run "
                f"`dnd run score --force`"
            )
            del scorable[neuron]
            continue
        pairs = zip(candidate.chosen.exemplars, hashed.hashes, strict=True)
        candidate.exemplar_keys = [clip.add_exemplar(exemplar, digest) for exemplar, digest in pairs]
    for candidate in scorable.values():
        for image_id in candidate.top_images(settings.top_pool):
            clip.add_generated(image_id)
    for candidate in scorable.values():
        for concept in candidate.concepts():
            clip.add_text(concept)
    clip.flush(f"score {work.layer}: embed")
    # 5. Score every neuron with dnd.scoring; the failed ones keep their reason.
    neurons = [NeuronLabels(neuron=neuron, failed=reason) for neuron, reason in failed.items()]
    neurons += [candidate.label(clip, settings) for candidate in scorable.values()]
    counts = {
        "generated_images": len(unique) if ctx.ranks.is_main else 0,  # counts are added up over the processes
        "target_passes": int(activations.batches > 0),
        "target_batches": activations.batches,
        **clip.counts(),
    }
    return Labels(layer=work.layer, function=settings.function, neurons=neurons), counts


@dataclass
class _Candidate:
    """A neuron on its way to labels: its upstream entries, then its ranked pool and its exemplars' embedding keys."""

    generated: NeuronGenerations
    chosen: NeuronExemplars
    ranked: list[RankedImages] = field(default_factory=list)
    exemplar_keys: list[str] = field(default_factory=list)

    def concepts(self) -> list[str]:
        return [images.concept for images in self.generated.concepts]

    def concept_images(self) -> list[list[str]]:
        return [images.image_ids for images in self.generated.concepts]

    def top_images(self, top_pool: int) -> list[str]:
        """The generated images at pool positions below ``top_pool`` (the ones Image Products reads)."""
        return [image_id for placed in self.ranked for image_id in placed.within(top_pool)]

    def label(self, clip: _ClipInputs, settings: ScoreConfig) -> NeuronLabels:
        """The neuron's labels and scores, from its ranked pool and the embeddings in ``clip``."""
        return label_neuron(
            self.generated.neuron,
            self.concepts(),
            self.ranked,
            {image_id: clip.generated(image_id) for image_id in self.top_images(settings.top_pool)},
            [exemplar.image_id for exemplar in self.chosen.exemplars],
            torch.stack([clip.image(key) for key in self.exemplar_keys]),
            {concept: clip.text(concept) for concept in self.concepts()},
            settings,
        )


def _lost_generated(store: ImageStore, lost: list[str], errors: dict[str, str]) -> str:
    shown = ", ".join(f"{image_id} ({errors[image_id]})" for image_id in lost[:3])
    more = f" and {len(lost) - 3} more" if len(lost) > 3 else ""
    return (
        f"generated image(s) missing or unreadable in the image store {store.root}: {shown}{more}; "
        f"regenerate them with `dnd run synthesize --force`"
    )


class _CachedEmbeddings:
    """Embeddings under content keys: read from an item cache, or computed by ``embed`` (lists in, ``[n, d]`` out)
    in batches of ``batch_size`` and stored batch by batch, so a killed run keeps every finished batch.

    Keys are registered with :meth:`add` (in the same order in every process of a job); :meth:`flush` has each process
    read or embed its share of them, then reads the others' from the cache."""

    def __init__(self, ctx: StageContext, namespace: str, embed: Callable[[list[Any]], torch.Tensor], what: str):
        self.ranks, self.embed, self.what = ctx.ranks, embed, what
        self.cache = EncodedCache(ctx.cache(namespace), encode=torch.Tensor.tolist, decode=_float_tensor)
        self.batch_size = ctx.config.score.batch_size
        self.vectors: dict[str, torch.Tensor] = {}
        self.pending: dict[str, Callable[[], Any]] = {}
        self.computed = self.hits = self.calls = 0

    def add(self, key: str, item: Callable[[], Any]) -> None:
        """Make ``key``'s embedding available at the next :meth:`flush`; ``item()`` gives what to embed and is called
        only on a cache miss."""
        if key not in self.vectors:
            self.pending.setdefault(key, item)

    def flush(self, description: str) -> None:
        found = cached_map(
            self.cache,
            self.pending,
            lambda key: self.pending[key](),
            lambda: BatchFunction(self._embed, self.what, "embeddings", "inputs"),
            self.batch_size,
            description,
            self.ranks,
        )
        self.vectors.update({key: vector.float() for key, vector in found.values.items()})
        self.hits += found.hits
        self.computed += found.computed
        self.calls += found.calls
        self.pending.clear()

    def _embed(self, items: list[Any]) -> torch.Tensor:
        return fitting(self.what).run(self.embed, items, joined_tensors)  # [len(items), d]


def _float_tensor(stored: list[float]) -> torch.Tensor:
    return torch.tensor(stored, dtype=torch.float32)


class _ClipInputs:
    """The image and text embeddings a layer's scores need, each keyed by what it embeds and the embedding model:
    CLIP for both, or the classifier's features and MiniLM (``score.image_embedder``).

    The embedders (``ctx.backends.image_embedder`` / ``text_embedder``) are built on the first cache miss only.
    """

    def __init__(self, ctx: StageContext, store: ImageStore):
        self.store = store
        self.exemplars = ExemplarPixels(ctx.probe, ctx.backends.target)
        self.model, self.text_model = ctx.backends.image_embedder_identity(), ctx.backends.text_embedder_identity()
        self.images = _CachedEmbeddings(
            ctx, IMAGE_CACHE, lambda images: ctx.backends.image_embedder.embed_images(images), "image embedder"
        )
        self.texts = _CachedEmbeddings(
            ctx, TEXT_CACHE, lambda texts: ctx.backends.text_embedder.embed(texts), "text embedder"
        )

    def add_exemplar(self, exemplar: ExemplarImage, pixel_hash: str) -> str:
        """The embedding key of ``exemplar``, whose pixels hash to ``pixel_hash`` (rendered again only if missing)."""
        key = content_key({"clip": self.model, "image": pixel_hash})
        self.images.add(key, lambda: self.exemplars.render(exemplar))
        return key

    def add_generated(self, image_id: str) -> None:
        self.images.add(self._generated_key(image_id), lambda: open_rgb(self.store.path(image_id)))

    def add_text(self, text: str) -> None:
        self.texts.add(self._text_key(text), lambda: text)

    def flush(self, description: str) -> None:
        self.images.flush(f"{description} images")
        self.texts.flush(f"{description} texts")

    def image(self, key: str) -> torch.Tensor:
        return self.images.vectors[key]

    def generated(self, image_id: str) -> torch.Tensor:
        return self.images.vectors[self._generated_key(image_id)]

    def text(self, text: str) -> torch.Tensor:
        return self.texts.vectors[self._text_key(text)]

    def counts(self) -> dict[str, int]:
        return {
            "clip_images_embedded": self.images.computed,
            "clip_texts_embedded": self.texts.computed,
            "clip_calls": self.images.calls + self.texts.calls,
            "clip_cache_hits": self.images.hits + self.texts.hits,
        }

    def _generated_key(self, image_id: str) -> str:
        return content_key({"clip": self.model, "generated": image_id})

    def _text_key(self, text: str) -> str:
        return content_key({"clip": self.text_model, "text": text})


def _extra_inputs(ctx: StageContext) -> dict[str, object]:
    # The embedders' names: scores made with other embeddings (or injected embedders) never share a folder.
    return {
        "image_embedder": ctx.backends.image_embedder_identity(),
        "text_embedder": ctx.backends.text_embedder_identity(),
    }


def _publish(ctx: StageContext, layer: str, labels: Labels) -> None:
    write_exports(labels, ctx.store.layer_dir(layer))


SPEC = StageSpec(
    name="score",
    version=1,
    needs=("crop", "synthesize"),
    config_sections=("score", "embed.clip_model"),
    artifact=Labels,
    compute=compute,
    requires={  # where both failed, stage 5's reason (which carries its cause) wins
        "synthesize": Requirement(lambda entry: entry.concepts, "no candidate concepts to score (stage 5 lists none)"),
        "crop": Requirement(
            lambda entry: entry.exemplars, "no exemplars to compare generated images with (stage 2 kept none)"
        ),
    },
    publish=_publish,
    extra_inputs=_extra_inputs,
)
