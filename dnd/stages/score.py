"""Stage 6 — score: each neuron's candidate concepts scored on their generated images; the best are its labels.

The formulas (pool ranks, TopK-Squared, Image Products, the scoring functions, ties, the multi-label variant and the
interpretability score) are in :mod:`dnd.scoring`; this module gathers their inputs once per layer:

- **Activations**: the unique generated images of all requested neurons (an image shared by several neurons is
  loaded and run once) go through the target network in one batched pass, with the network's own preprocessing and
  the layer summarised as in stage 1 (``record.summary`` / ``record.tokens``), all neurons at once.
- **CLIP embeddings**: each distinct exemplar (keyed by its pixels, rendered as stage 2 ranked it), each generated
  image that lands in some neuron's top ``score.top_pool`` (the only ones Image Products reads; keyed by its
  image-store id) and each concept text, embedded once per CLIP model. They live in the item caches ``clip-images``
  and ``clip-texts``, stored batch by batch, so a re-run or a killed run embeds only what is missing, and CLIP is
  loaded only then.

Whenever a run ends at this stage (computed or cached), the layer's exports ``descriptions.csv`` and
``final_results.csv`` (:mod:`dnd.export`) are rewritten beside the run, ``<output_dir>/<run name>/<layer>/``, so they
always match the config that ran last. The manifest counts the
``generated_images`` (unique), ``target_passes`` over them (one per layer) and ``target_batches``, the images and
texts CLIP embedded, its ``clip_calls`` (batches) and ``clip_cache_hits``, and ``failed_neurons``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from dnd.artifacts import (
    CropBox,
    ExemplarImage,
    Exemplars,
    Generations,
    Labels,
    NeuronExemplars,
    NeuronGenerations,
    NeuronLabels,
)
from dnd.backends.targets import summary_reducer
from dnd.config import ScoreConfig
from dnd.data import ProbeSet, UnreadableImage, batch_loader, open_rgb
from dnd.export import write_exports
from dnd.pipeline import StageContext, StageJob, StageSpec, split_upstream
from dnd.progress import track
from dnd.scoring import RankedImages, label_neuron, rank_pool
from dnd.stages.caption import pixel_hash
from dnd.stages.crop import render_exemplar
from dnd.stages.synthesize import image_store
from dnd.store import ImageStore, ItemCache, content_key

IMAGE_CACHE = "clip-images"
TEXT_CACHE = "clip-texts"


def run(ctx: StageContext, jobs: list[StageJob]) -> None:
    """Score the candidate concepts of ``job.neurons`` for every layer of ``jobs``, store their labels, export CSVs."""
    settings = ctx.config.score
    for job in jobs:
        started = time.perf_counter()
        # 1. Each requested neuron's generated images (stage 5) and exemplars (stage 2); upstream failures carried.
        failed, scorable = _read_upstream(job)
        # 2. The layer's activations on every unique generated image, in one batched pass of the target network.
        store = image_store(ctx)
        unique = list(dict.fromkeys(i for n in scorable.values() for ids in n.concept_images() for i in ids))
        activations = StoredActivations.compute(
            ctx, job.layer, store, unique, settings.batch_size, f"score {job.layer}: target network"
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
        for neuron, candidate in track(list(scorable.items()), f"score {job.layer}: exemplars"):
            try:
                candidate.exemplar_keys = [clip.add_exemplar(exemplar) for exemplar in candidate.chosen.exemplars]
            except UnreadableImage as exc:
                failed[neuron] = (
                    f"an exemplar image is unreadable since stage 2 read it ({exc}); restore it and run "
                    f"`dnd run score --force`"
                )
                del scorable[neuron]
        top = dict.fromkeys(i for candidate in scorable.values() for i in candidate.top_images(settings.top_pool))
        for image_id in track(list(top), f"score {job.layer}: generated images"):
            clip.add_generated(image_id)
        for candidate in scorable.values():
            for concept in candidate.concepts():
                clip.add_text(concept)
        clip.flush()
        # 5. Score every neuron with dnd.scoring; the failed ones keep their reason.
        neurons = [NeuronLabels(neuron=neuron, failed=reason) for neuron, reason in failed.items()]
        neurons += [candidate.label(clip, settings) for candidate in scorable.values()]
        # 6. Store the artifact beside the neurons of earlier runs (the pipeline then publishes the exports).
        counts = {
            "generated_images": len(unique),
            "target_passes": int(activations.batches > 0),
            "target_batches": activations.batches,
            **clip.counts(),
            "failed_neurons": len(failed),
        }
        neurons.sort(key=lambda entry: entry.neuron)
        artifact = Labels(layer=job.layer, function=settings.function, neurons=neurons)
        ctx.write_per_neuron(job, artifact, time.perf_counter() - started, counts)


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


def _read_upstream(job: StageJob) -> tuple[dict[int, str], dict[int, _Candidate]]:
    """``(failure reason by neuron, scorable neurons)`` for ``job.neurons``, from stages 5 and 2."""
    generated, synthesis_failed = split_upstream(
        job, "synthesize", Generations, lambda e: e.concepts, "no candidate concepts to score (stage 5 lists none)"
    )
    chosen, crop_failed = split_upstream(
        job,
        "crop",
        Exemplars,
        lambda e: e.exemplars,
        "no exemplars to compare generated images with (stage 2 kept none)",
    )
    failed = {**crop_failed, **synthesis_failed}  # where both failed, stage 5's reason (which carries its cause) wins
    scorable = {neuron: _Candidate(generated[neuron], chosen[neuron]) for neuron in generated if neuron in chosen}
    return dict(sorted(failed.items())), scorable


def _lost_generated(store: ImageStore, lost: list[str], errors: dict[str, str]) -> str:
    shown = ", ".join(f"{image_id} ({errors[image_id]})" for image_id in lost[:3])
    more = f" and {len(lost) - 3} more" if len(lost) > 3 else ""
    return (
        f"generated image(s) missing or unreadable in the image store {store.root}: {shown}{more}; "
        f"regenerate them with `dnd run synthesize --force`"
    )


@dataclass(frozen=True)
class _StoredImages:
    """``load(index)`` for a list of image-store ids (a picklable callable, for DataLoader workers)."""

    store: ImageStore
    ids: list[str]

    def __call__(self, index: int) -> Image.Image:
        return open_rgb(self.store.path(self.ids[index]))


@dataclass
class StoredActivations:
    """The layer's summaries ``values [n_readable, n_neurons]`` on images of the image store; ``rows[id]`` is an
    image's row, ``errors[id]`` why an image could not be read; ``batches`` counts the forward passes.

    Computed as stage 1 computed the probing set's (the network's own preprocessing, ``record.summary`` /
    ``record.tokens``, autocast on CUDA), so the two can be compared; used by stage 6 and by CoSy."""

    values: torch.Tensor
    rows: dict[str, int]
    errors: dict[str, str]
    batches: int

    @classmethod
    def compute(
        cls, ctx: StageContext, layer: str, store: ImageStore, image_ids: list[str], size: int, description: str
    ) -> StoredActivations:
        """Run ``image_ids`` through the target network in batches of ``size`` (the network is loaded only if any)."""
        if not image_ids:
            return cls(torch.empty(0, 0), {}, {}, 0)
        config, target = ctx.config, ctx.backends.target
        batches = [list(range(i, min(i + size, len(image_ids)))) for i in range(0, len(image_ids), size)]
        images = ProbeSet(ids=image_ids, load=_StoredImages(store, image_ids), fingerprint=content_key(image_ids))
        loader = batch_loader(
            images, target.preprocess, batches, config.probe.num_workers, pin_memory=target.device.type == "cuda"
        )
        reduce = summary_reducer(config.record.summary, config.record.tokens)
        rows: dict[str, int] = {}
        errors: dict[str, str] = {}
        parts: list[torch.Tensor] = []
        for batch in track(loader, description, total=len(batches)):
            errors.update({image_ids[index]: error for index, error in batch.skipped})
            if batch.pixels is None:
                continue
            summaries = target.capture(batch.pixels, [layer], reduce, config.record.autocast)[layer]
            parts.append(summaries.float().cpu())
            for index in batch.indices.tolist():
                rows[image_ids[index]] = len(rows)
        values = torch.cat(parts) if parts else torch.empty(0, 0)
        return cls(values, rows, errors, len(parts))

    def of(self, neuron: int, concept_images: list[list[str]]) -> dict[str, float]:
        """``neuron``'s activation on each of ``concept_images`` (every id must be readable)."""
        ids = list(dict.fromkeys(i for images in concept_images for i in images))
        values = self.values[[self.rows[i] for i in ids], neuron].tolist()
        return dict(zip(ids, values, strict=True))


class _CachedEmbeddings:
    """Embeddings under content keys: read from an item cache, or computed by ``embed`` (lists in, ``[n, d]`` out)
    in batches of ``batch_size`` and stored batch by batch, so a killed run keeps every finished batch."""

    def __init__(self, cache: ItemCache, embed: Callable[[list[Any]], torch.Tensor], batch_size: int):
        self.cache, self.embed, self.batch_size = cache, embed, batch_size
        self.vectors: dict[str, torch.Tensor] = {}
        self.pending: dict[str, Any] = {}
        self.computed = self.hits = self.calls = 0

    def add(self, key: str, item: Callable[[], Any]) -> None:
        """Make ``key``'s embedding available; ``item()`` gives what to embed and is called only on a cache miss."""
        if key in self.vectors or key in self.pending:
            return
        stored = self.cache.get(key)
        if stored is not None:
            self.vectors[key] = torch.tensor(stored, dtype=torch.float32)
            self.hits += 1
            return
        self.pending[key] = item()
        if len(self.pending) == self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        vectors = self.embed(list(self.pending.values()))
        if len(vectors) != len(self.pending):
            raise RuntimeError(f"CLIP returned {len(vectors)} embeddings for {len(self.pending)} inputs")
        self.calls += 1
        self.computed += len(self.pending)
        for key, vector in zip(self.pending, vectors, strict=True):
            self.cache.put(key, vector.tolist())
            self.vectors[key] = vector.float()
        self.pending.clear()


class _ClipInputs:
    """The CLIP image and text embeddings a layer's scores need, each keyed by what it embeds and the CLIP model.

    CLIP (``ctx.backends.clip``) is built on the first cache miss only.
    """

    def __init__(self, ctx: StageContext, store: ImageStore):
        self.ctx, self.store = ctx, store
        self.model = ctx.backends.clip_model()
        batch_size = ctx.config.score.batch_size
        self.images = _CachedEmbeddings(
            ctx.cache(IMAGE_CACHE), lambda images: ctx.backends.clip.embed_images(images), batch_size
        )
        self.texts = _CachedEmbeddings(ctx.cache(TEXT_CACHE), lambda texts: ctx.backends.clip.embed(texts), batch_size)
        self._exemplar_keys: dict[tuple[int, CropBox | None], str] = {}

    def add_exemplar(self, exemplar: ExemplarImage) -> str:
        """The embedding key of ``exemplar``'s pixels (rendered once per distinct exemplar); raises
        :class:`UnreadableImage` when its probe image cannot be read."""
        identity = (exemplar.probe_index, exemplar.box)  # CropBox is frozen, so hashable
        if identity not in self._exemplar_keys:
            image = render_exemplar(self.ctx.probe, self.ctx.backends.target, exemplar)
            key = content_key({"clip": self.model, "image": pixel_hash(image)})
            self.images.add(key, lambda: image)
            self._exemplar_keys[identity] = key
        return self._exemplar_keys[identity]

    def add_generated(self, image_id: str) -> None:
        self.images.add(self._generated_key(image_id), lambda: open_rgb(self.store.path(image_id)))

    def add_text(self, text: str) -> None:
        self.texts.add(self._text_key(text), lambda: text)

    def flush(self) -> None:
        self.images.flush()
        self.texts.flush()

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
        return content_key({"clip": self.model, "text": text})


def _publish(ctx: StageContext, layer: str, labels: Labels) -> None:
    write_exports(labels, ctx.store.root / layer)


SPEC = StageSpec(
    name="score",
    version=1,
    needs=("crop", "synthesize"),
    config_sections=("score",),
    run=run,
    artifact=Labels,
    per_neuron=True,
    publish=_publish,
)
