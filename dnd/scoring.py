"""Stage 6 scoring (method.md, stage 6 and its published extensions): pure functions, no I/O, no models.

For one neuron with candidate concepts ``c_1 … c_N``, each with its generated images:

1. **The pool** is every generated image of the neuron's concepts, in *pool order*: concepts in candidate order, each
   concept's images in their stored order (N × Q images, fewer where a concept has fewer). It is sorted by the
   neuron's activation, highest first; equal activations keep pool order (a stable sort), and a NaN activation sorts
   after every number. ``r_c`` is the ascending list of 0-based positions of ``c``'s images in that order.
2. **TopK-Squared** ``TopKSq(c) = (1 / min(β, |r_c|)) · Σ_{i<β} r_c[i]²`` (lower is better); a concept with no images
   gets ``N + 1``, literally as the method says (small next to squared positions, so such a concept can lead this
   order; its Image Products is −1, so its final score is negative). ``idx_c`` is ``c``'s 0-based position when the
   concepts are ordered by TopKSq ascending; equal TopKSq keep candidate order.
3. **Image Products** ``IP(c)`` = the mean cosine similarity over all pairs (exemplar e, image g) where g is one of
   ``c``'s images at a pool position < ``top_pool``, of the CLIP image embeddings of e and g; −1 where ``c`` has no
   image there.
4. **Scoring functions** (``score.function``), each stored as ``ConceptScore.score`` with *higher is better*:

   - ``topk_squared_image_products``: ``(N − idx_c) · IP(c)``, DnD's final score;
   - ``mean_rank``: ``−mean(r_c)``; a concept with no images counts as mean ``P`` (the pool size, past every
     position), so it comes after every concept with images;
   - ``topk_squared``: ``−TopKSq(c)``;
   - ``image_products``: ``IP(c)``.

   Concepts are ordered by ``score`` descending; equal scores keep the TopK-Squared order (``idx_c``), whose own ties
   keep candidate order. Labels are the first ``n_labels`` concepts of that order; Label 1 is the description.
5. **Multi-label variant**: walk that order and keep a concept unless its CLIP text cosine similarity to a concept
   already kept exceeds ``multi_label_threshold`` (strictly greater); stop at ``n_labels`` kept.
6. **Interpretability**: the mean over pairs ``i < j`` of the CLIP image cosine similarity of exemplars i and j
   (None with fewer than two exemplars).

Cosine similarities are computed here (rows are normalised in float64), so embeddings need not arrive normalised.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from dnd.artifacts import ConceptScore, NeuronLabels
from dnd.config import ScoreConfig

#: Image Products of a concept with no image in the pool's top ``top_pool``.
NO_TOP_IMAGE = -1.0


@dataclass(frozen=True)
class RankedImages:
    """One concept's images placed in a neuron's pool: ``ranks`` is ``r_c`` (ascending) and ``image_ids[i]`` is the
    image at position ``ranks[i]``."""

    image_ids: list[str]
    ranks: list[int]

    def within(self, top_pool: int) -> list[str]:
        """The ids of this concept's images at pool positions below ``top_pool``, best first."""
        return [image_id for image_id, rank in zip(self.image_ids, self.ranks, strict=True) if rank < top_pool]


def rank_pool(concept_images: Sequence[Sequence[str]], activation: Mapping[str, float]) -> list[RankedImages]:
    """Place every concept's images in the neuron's pool (see step 1 of the module docstring).

    ``concept_images[c]`` lists concept ``c``'s image ids; ``activation[id]`` is the neuron's activation on image
    ``id``. Returns one :class:`RankedImages` per concept, in candidate order.
    """
    pool = [(concept, image_id) for concept, ids in enumerate(concept_images) for image_id in ids]
    order = sorted(range(len(pool)), key=lambda i: (math.isnan(activation[pool[i][1]]), -activation[pool[i][1]]))
    placed: list[list[tuple[int, str]]] = [[] for _ in concept_images]
    for position, i in enumerate(order):
        concept, image_id = pool[i]
        placed[concept].append((position, image_id))
    return [RankedImages([image_id for _, image_id in pairs], [p for p, _ in pairs]) for pairs in placed]


def topk_squared(ranks: Sequence[int], beta: int, n_concepts: int) -> float:
    """``TopKSq = (1 / min(β, |r_c|)) · Σ_{i<β} r_c[i]²`` for ascending ``ranks`` = ``r_c``; ``N + 1`` when empty."""
    if not ranks:
        return float(n_concepts + 1)
    best = ranks[:beta]
    return sum(rank * rank for rank in best) / len(best)


def mean_rank(ranks: Sequence[int]) -> float | None:
    """The mean of ``r_c``; None for a concept with no images."""
    return sum(ranks) / len(ranks) if ranks else None


def topk_order(values: Sequence[float]) -> list[int]:
    """``idx_c`` for every concept: its 0-based position when ordered by TopK-Squared ``values`` ascending (equal
    values keep candidate order)."""
    order = sorted(range(len(values)), key=lambda c: values[c])
    idx = [0] * len(values)
    for position, concept in enumerate(order):
        idx[concept] = position
    return idx


def image_products(exemplars: torch.Tensor, images: torch.Tensor) -> float:
    """Mean cosine similarity over all (exemplar, image) pairs of ``exemplars [E, d]`` and ``images [M, d]``; −1 when
    ``M = 0``. Raises ValueError without exemplars (there is nothing to compare with)."""
    if len(exemplars) == 0:
        raise ValueError("Image Products needs at least one exemplar embedding")
    if len(images) == 0:
        return NO_TOP_IMAGE
    return float((_unit(exemplars) @ _unit(images).T).mean())


def interpretability(exemplars: torch.Tensor) -> float | None:
    """Mean cosine similarity over pairs ``i < j`` of ``exemplars [E, d]``; None when ``E < 2``."""
    count = len(exemplars)
    if count < 2:
        return None
    similarity = _unit(exemplars) @ _unit(exemplars).T
    upper = torch.triu_indices(count, count, offset=1)
    return float(similarity[upper[0], upper[1]].mean())


def score_concepts(
    concepts: Sequence[str],
    ranked: Sequence[RankedImages],
    image_embeddings: Mapping[str, torch.Tensor],
    exemplars: torch.Tensor,
    settings: ScoreConfig,
) -> list[ConceptScore]:
    """Every candidate concept scored, best first (steps 2–4 of the module docstring).

    ``ranked[c]`` is concept ``c``'s placement from :func:`rank_pool`; ``image_embeddings[id]`` (``[d]``) is needed
    for every image at a pool position below ``settings.top_pool``; ``exemplars [E, d]`` are the neuron's exemplar
    embeddings. ``ConceptScore.score`` is the value of ``settings.function`` (higher is better).
    """
    n = len(concepts)
    pool_size = sum(len(placed.ranks) for placed in ranked)
    topk = [topk_squared(placed.ranks, settings.beta, n) for placed in ranked]
    idx = topk_order(topk)
    scores = []
    for c, (concept, placed) in enumerate(zip(concepts, ranked, strict=True)):
        top = placed.within(settings.top_pool)
        products = image_products(exemplars, _stack([image_embeddings[image_id] for image_id in top], exemplars))
        mean = mean_rank(placed.ranks)
        value = {
            "topk_squared_image_products": (n - idx[c]) * products,
            "mean_rank": -(pool_size if mean is None else mean),
            "topk_squared": -topk[c],
            "image_products": products,
        }[settings.function]
        scores.append(
            ConceptScore(
                concept=concept,
                mean_rank=mean,
                topk_squared=topk[c],
                image_products=products,
                score=value,
                ranks=placed.ranks,
                image_ids=placed.image_ids,
            )
        )
    by_topk = sorted(range(n), key=lambda c: idx[c])
    return [scores[c] for c in sorted(by_topk, key=lambda c: -scores[c].score)]


def multi_labels(
    ordered: Sequence[str], text_embeddings: Mapping[str, torch.Tensor], threshold: float, n_labels: int
) -> list[str]:
    """The multi-label variant: ``ordered`` concepts (best first) without any whose cosine similarity between
    ``text_embeddings`` (``[d]`` each) and a concept already kept exceeds ``threshold``; at most ``n_labels``."""
    kept: list[str] = []
    for concept in ordered:
        if len(kept) == n_labels:
            break
        vector = _unit(text_embeddings[concept][None])
        if all(float(vector @ _unit(text_embeddings[other][None]).T) <= threshold for other in kept):
            kept.append(concept)
    return kept


def label_neuron(
    neuron: int,
    concepts: Sequence[str],
    ranked: Sequence[RankedImages],
    image_embeddings: Mapping[str, torch.Tensor],
    exemplar_ids: Sequence[str],
    exemplars: torch.Tensor,
    text_embeddings: Mapping[str, torch.Tensor],
    settings: ScoreConfig,
) -> NeuronLabels:
    """One neuron's labels, multi-labels, interpretability and every candidate's scores (best first).

    ``ranked[c]`` places concept ``c``'s images in the pool (:func:`rank_pool`); ``image_embeddings`` must hold every
    image at a pool position below ``settings.top_pool``; ``exemplars [E, d]`` embeds the exemplars named
    ``exemplar_ids``; ``text_embeddings`` holds every concept.
    """
    scores = score_concepts(concepts, ranked, image_embeddings, exemplars, settings)
    ordered = [score.concept for score in scores]
    return NeuronLabels(
        neuron=neuron,
        labels=ordered[: settings.n_labels],
        multi_labels=multi_labels(ordered, text_embeddings, settings.multi_label_threshold, settings.n_labels),
        scores=scores,
        interpretability=interpretability(exemplars),
        exemplar_ids=list(exemplar_ids),
    )


def _unit(rows: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(rows.double(), dim=-1)


def _stack(vectors: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """``vectors`` as ``[M, d]`` (``[0, d]`` of ``like``'s width when there are none)."""
    return torch.stack(vectors) if vectors else like.new_empty(0, like.shape[-1])
