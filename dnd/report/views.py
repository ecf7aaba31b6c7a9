"""What the templates show, built from a layer's evidence: one :class:`NeuronView` per neuron.

Views hold plain values (text, numbers) and :class:`~dnd.report.thumbnails.Thumb` handles; every picture they show is
asked of the :class:`~dnd.report.thumbnails.Gallery` here, with its identity taken from the run's artifacts (probe
indices, boxes, image-store ids), never from label or caption text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dnd.artifacts import (
    ConceptScore,
    CropBox,
    ExemplarImage,
    NeuronCaptions,
    NeuronConcepts,
    NeuronExemplars,
    NeuronGenerations,
    NeuronLabels,
    NeuronTopImages,
    TokenUsage,
)
from dnd.report.comparison import Comparison
from dnd.report.evidence import LayerEvidence
from dnd.report.pictures import HeatmapPicture, ProbePicture, StoredPicture
from dnd.report.thumbnails import Gallery, Thumb

#: Thumbnail sizes (the longer side, in pixels) and how many exemplars the index shows per neuron. The index's strips
#: are what make its weight: 4 × 48 px WebP is about 2.5 kB per neuron.
TOP_SIZE = 176
EXEMPLAR_SIZE = 128
GENERATED_SIZE = 96
STRIP_SIZE = 48
STRIP_COUNT = 4


@dataclass
class TopImageView:
    thumb: Thumb
    image_id: str
    activation: float
    boxes: int


@dataclass
class ExemplarView:
    thumb: Thumb
    image_id: str
    activation: float
    box: CropBox | None
    caption: str | None


@dataclass
class GeneratedView:
    thumb: Thumb
    rank: int | None  # 0-based position in the neuron's pool of generated images


@dataclass
class CandidateView:
    """A candidate concept; the scores are None before stage 6 has scored it."""

    concept: str
    prompt: str | None = None
    score: ConceptScore | None = None
    images: list[GeneratedView] = field(default_factory=list)


@dataclass
class NeuronView:
    unit: int
    status: str  # ok | failed | incomplete
    reason: str | None
    strip: list[Thumb]
    top: list[TopImageView]
    exemplars: list[ExemplarView]
    labels: list[str] = field(default_factory=list)
    multi_labels: list[str] = field(default_factory=list)
    score: float | None = None
    interpretability: float | None = None
    candidates: list[CandidateView] = field(default_factory=list)
    simplified_captions: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    usage: TokenUsage | None = None
    other_label: str | None = None
    similarity: float | None = None
    previous: int | None = None
    next: int | None = None

    @property
    def label(self) -> str | None:
        return self.labels[0] if self.labels else None

    @property
    def search_text(self) -> str:
        """What the index's filter matches: the labels, the other method's label, the status and the reason."""
        parts = [*self.labels, *self.multi_labels, self.other_label or "", self.status, self.reason or ""]
        return " ".join(parts).lower()


def neuron_views(
    evidence: LayerEvidence, neurons: list[int], gallery: Gallery, comparison: Comparison | None
) -> list[NeuronView]:
    """One view per neuron of ``neurons`` (in order), linked to its neighbours; asks ``gallery`` for every picture."""
    spatial = len(evidence.top.output_shape) == 3
    top_of = {entry.neuron: entry for entry in evidence.top.neurons}
    views = [_neuron_view(evidence, top_of[n], gallery, spatial) for n in neurons]
    for before, after in zip(views, views[1:], strict=False):
        before.next, after.previous = after.unit, before.unit
    if comparison is not None:
        for view in views:
            view.other_label = comparison.labels.get(view.unit)
            view.similarity = comparison.similarity.get(view.unit)
    return views


def _neuron_view(evidence: LayerEvidence, top: NeuronTopImages, gallery: Gallery, spatial: bool) -> NeuronView:
    neuron = top.neuron
    status, reason = evidence.outcome(neuron)
    chosen: NeuronExemplars | None = evidence.entry("crop", neuron)
    exemplars = chosen.exemplars if chosen is not None else []
    probe_indices = [evidence.top.probe_indices[row] for row in top.rows]
    # 1. Top images: with the neuron's heat map and the boxes of the crops that became its exemplars.
    top_views = []
    for index, image_id, activation in zip(probe_indices, top.image_ids, top.activations, strict=True):
        boxes = tuple(e.box for e in exemplars if e.probe_index == index and e.box is not None)
        picture = (
            HeatmapPicture(neuron, index, image_id, boxes, tuple(probe_indices))
            if spatial
            else ProbePicture(index, image_id)
        )
        top_views.append(TopImageView(gallery.want(picture, TOP_SIZE), image_id, activation, len(boxes)))
    # 2. Exemplars with their captions; the index's strip shows the first few (top images before stage 2).
    captions: NeuronCaptions | None = evidence.entry("caption", neuron)
    caption_of = {(c.image_id, c.box): c.text for c in captions.captions} if captions is not None else {}
    exemplar_views = [
        ExemplarView(
            gallery.want(_exemplar_picture(e), EXEMPLAR_SIZE), e.image_id, e.activation, e.box, caption_of.get(_at(e))
        )
        for e in exemplars
    ]
    if chosen is not None:
        strip_pictures = [_exemplar_picture(e) for e in exemplars]
    else:
        strip_pictures = [ProbePicture(i, image_id) for i, image_id in zip(probe_indices, top.image_ids, strict=True)]
    view = NeuronView(
        unit=neuron,
        status=status,
        reason=reason,
        strip=[gallery.want(picture, STRIP_SIZE) for picture in strip_pictures[:STRIP_COUNT]],
        top=top_views,
        exemplars=exemplar_views,
    )
    # 3. What the LLM made of the captions, and what it cost.
    concepts: NeuronConcepts | None = evidence.entry("summarize", neuron)
    if concepts is not None:
        view.simplified_captions, view.rejected = concepts.simplified_captions, concepts.rejected
        view.usage = concepts.usage
        view.candidates = [CandidateView(concept) for concept in concepts.concepts]
    # 4. Candidates with their images: scored (best first, images in pool order) or as generated.
    generations: NeuronGenerations | None = evidence.entry("synthesize", neuron)
    prompt_of = {c.concept: c.prompt for c in generations.concepts} if generations is not None else {}
    labels: NeuronLabels | None = evidence.entry("score", neuron)
    if labels is not None and labels.scores:
        view.labels, view.multi_labels = labels.labels, labels.multi_labels
        view.score, view.interpretability = labels.scores[0].score, labels.interpretability
        view.candidates = [
            CandidateView(score.concept, prompt_of.get(score.concept), score, _ranked_images(score, gallery))
            for score in labels.scores
        ]
    elif generations is not None and generations.concepts:
        view.candidates = [
            CandidateView(c.concept, c.prompt, None, [GeneratedView(_generated(i, gallery), None) for i in c.image_ids])
            for c in generations.concepts
        ]
    return view


def _exemplar_picture(exemplar: ExemplarImage) -> ProbePicture:
    return ProbePicture(exemplar.probe_index, exemplar.image_id, exemplar.box)


def _at(exemplar: ExemplarImage) -> tuple[str, CropBox | None]:
    return exemplar.image_id, exemplar.box


def _generated(image_id: str, gallery: Gallery) -> Thumb:
    return gallery.want(StoredPicture(image_id), GENERATED_SIZE)


def _ranked_images(score: ConceptScore, gallery: Gallery) -> list[GeneratedView]:
    """A concept's generated images in the order of their rank in the neuron's pool (best first)."""
    ranked = sorted(zip(score.ranks, score.image_ids, strict=True))
    return [GeneratedView(_generated(image_id, gallery), rank) for rank, image_id in ranked]
