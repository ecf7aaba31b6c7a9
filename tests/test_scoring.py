"""Stage 6 scoring (dnd.scoring) on small cases worked out by hand from method.md's formulas.

Every expected number below is derived in the comments, never by calling the code under test.
"""

from __future__ import annotations

import math

import pytest
import torch

from dnd.config import ScoreConfig
from dnd.scoring import (
    RankedImages,
    image_products,
    interpretability,
    label_neuron,
    mean_rank,
    multi_labels,
    rank_pool,
    score_concepts,
    topk_order,
    topk_squared,
)


def vectors(**rows: tuple[float, ...]) -> dict[str, torch.Tensor]:
    return {name: torch.tensor(row) for name, row in rows.items()}


# --- Case A: three concepts × two images ------------------------------------------------------------------------
#
# Pool order (candidate order, then stored order): d0 d1 | c0 c1 | b0 b1.
# Activations: d0 .9, d1 .2, c0 .8, c1 .7, b0 .1, b1 0  →  sorted: d0 c0 c1 d1 b0 b1 at positions 0 1 2 3 4 5.
#   r_dogs = [0, 3] (d0, d1)   r_cats = [1, 2] (c0, c1)   r_birds = [4, 5] (b0, b1)
# TopKSq, β = 5: dogs (0² + 3²)/2 = 4.5, cats (1² + 2²)/2 = 2.5, birds (4² + 5²)/2 = 20.5 → idx cats 0, dogs 1, birds 2
# TopKSq, β = 1: dogs 0²/1 = 0, cats 1²/1 = 1, birds 4²/1 = 16                          → idx dogs 0, cats 1, birds 2
# Mean ranks: dogs 1.5, cats 1.5 (a tie), birds 4.5.
# top_pool = 3: positions 0–2 are d0, c0, c1; birds has none there → Image Products −1.
# Exemplars e1 = (1,0,0), e2 = (0,1,0); d0 = (1,0,0), c0 = (0,1,0), c1 = (0,0,1) (d1, b0, b1 are never read).
#   IP(dogs) = (e1·d0 + e2·d0)/2 = (1 + 0)/2 = 0.5
#   IP(cats) = (e1·c0 + e2·c0 + e1·c1 + e2·c1)/4 = (0 + 1 + 0 + 0)/4 = 0.25
# Final score (N = 3), β = 5: cats (3−0)·0.25 = 0.75, dogs (3−1)·0.5 = 1.0, birds (3−2)·(−1) = −1  → dogs, cats, birds
# Final score (N = 3), β = 1: dogs (3−0)·0.5 = 1.5, cats (3−1)·0.25 = 0.5, birds (3−2)·(−1) = −1 → dogs, cats, birds

CONCEPTS_A = ["dogs", "cats", "birds"]
IMAGES_A = [["d0", "d1"], ["c0", "c1"], ["b0", "b1"]]
ACTIVATION_A = {"d0": 0.9, "d1": 0.2, "c0": 0.8, "c1": 0.7, "b0": 0.1, "b1": 0.0}
EMBEDDINGS_A = vectors(d0=(1.0, 0.0, 0.0), c0=(0.0, 1.0, 0.0), c1=(0.0, 0.0, 1.0))
EXEMPLARS_A = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def settings(**fields: object) -> ScoreConfig:
    return ScoreConfig(**{"top_pool": 3, **fields})


def test_pool_ranks_case_a():
    ranked = rank_pool(IMAGES_A, ACTIVATION_A)
    assert ranked == [
        RankedImages(["d0", "d1"], [0, 3]),
        RankedImages(["c0", "c1"], [1, 2]),
        RankedImages(["b0", "b1"], [4, 5]),
    ]
    assert [placed.within(3) for placed in ranked] == [["d0"], ["c0", "c1"], []]


def test_topk_squared_case_a():
    assert [topk_squared(r, beta=5, n_concepts=3) for r in ([0, 3], [1, 2], [4, 5])] == [4.5, 2.5, 20.5]
    assert [topk_squared(r, beta=1, n_concepts=3) for r in ([0, 3], [1, 2], [4, 5])] == [0.0, 1.0, 16.0]
    # β cuts the sum and the divisor: r = [1, 2, 6], β = 2 → (1 + 4)/2 = 2.5; β = 5 → (1 + 4 + 36)/3 = 41/3.
    assert topk_squared([1, 2, 6], beta=2, n_concepts=3) == 2.5
    assert topk_squared([1, 2, 6], beta=5, n_concepts=3) == pytest.approx(41 / 3)
    assert topk_order([4.5, 2.5, 20.5]) == [1, 0, 2]
    assert topk_order([0.0, 1.0, 16.0]) == [0, 1, 2]


def test_image_products_case_a():
    assert image_products(EXEMPLARS_A, torch.tensor([[1.0, 0.0, 0.0]])) == pytest.approx(0.5)
    assert image_products(EXEMPLARS_A, torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])) == pytest.approx(0.25)
    assert image_products(EXEMPLARS_A, torch.empty(0, 3)) == -1.0
    # Cosine, not dot product: (2,0,0) and (0,3,0) are e1 and e2 scaled; (3,4,0)/5 = (0.6,0.8,0) → (0.6 + 0.8)/2.
    assert image_products(torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0]]), torch.tensor([[3.0, 4.0, 0.0]])) == (
        pytest.approx(0.7)
    )
    with pytest.raises(ValueError, match="at least one exemplar"):
        image_products(torch.empty(0, 3), torch.tensor([[1.0, 0.0, 0.0]]))


@pytest.mark.parametrize(
    ("beta", "expected_order", "expected_scores"),
    [
        (5, ["dogs", "cats", "birds"], {"dogs": 1.0, "cats": 0.75, "birds": -1.0}),
        (1, ["dogs", "cats", "birds"], {"dogs": 1.5, "cats": 0.5, "birds": -1.0}),
    ],
)
def test_final_score_case_a(beta, expected_order, expected_scores):
    ranked = rank_pool(IMAGES_A, ACTIVATION_A)
    scores = score_concepts(CONCEPTS_A, ranked, EMBEDDINGS_A, EXEMPLARS_A, settings(beta=beta))
    assert [s.concept for s in scores] == expected_order
    assert {s.concept: s.score for s in scores} == pytest.approx(expected_scores)


def test_every_field_of_a_concept_score_case_a():
    scores = score_concepts(CONCEPTS_A, rank_pool(IMAGES_A, ACTIVATION_A), EMBEDDINGS_A, EXEMPLARS_A, settings())
    cats = next(s for s in scores if s.concept == "cats")
    assert (cats.ranks, cats.image_ids, cats.mean_rank, cats.topk_squared) == ([1, 2], ["c0", "c1"], 1.5, 2.5)
    assert cats.image_products == pytest.approx(0.25)
    birds = next(s for s in scores if s.concept == "birds")
    assert (birds.ranks, birds.mean_rank, birds.topk_squared, birds.image_products) == ([4, 5], 4.5, 20.5, -1.0)


@pytest.mark.parametrize(
    ("function", "expected_order", "expected_scores"),
    [
        # −mean(r_c): dogs −1.5 and cats −1.5 tie; the TopK-Squared order (cats idx 0, dogs idx 1) breaks it.
        ("mean_rank", ["cats", "dogs", "birds"], {"dogs": -1.5, "cats": -1.5, "birds": -4.5}),
        ("topk_squared", ["cats", "dogs", "birds"], {"dogs": -4.5, "cats": -2.5, "birds": -20.5}),
        ("image_products", ["dogs", "cats", "birds"], {"dogs": 0.5, "cats": 0.25, "birds": -1.0}),
        ("topk_squared_image_products", ["dogs", "cats", "birds"], {"dogs": 1.0, "cats": 0.75, "birds": -1.0}),
    ],
)
def test_each_scoring_function_case_a(function, expected_order, expected_scores):
    scores = score_concepts(
        CONCEPTS_A, rank_pool(IMAGES_A, ACTIVATION_A), EMBEDDINGS_A, EXEMPLARS_A, settings(function=function)
    )
    assert [s.concept for s in scores] == expected_order
    assert {s.concept: s.score for s in scores} == pytest.approx(expected_scores)


# --- Concepts without images, and ties -------------------------------------------------------------------------


def test_a_concept_with_no_images():
    # Candidates top: t0 t1 | r2: u0 | none: (no images); N = 3.
    # Activations t0 .9, t1 .8, u0 .1 → positions t0 0, t1 1, u0 2.
    # TopKSq (β = 5): top (0 + 1)/2 = 0.5, r2 2²/1 = 4, none N + 1 = 4 → r2 and none tie at 4.
    # Candidate order breaks the tie: r2 (listed first) idx 1, none idx 2.
    # top_pool = 2: t0, t1 only. Exemplar (1,0); t0 = (1,0), t1 = (0,1) → IP(top) = (1 + 0)/2 = 0.5; r2, none: −1.
    # Final: top (3−0)·0.5 = 1.5, r2 (3−1)·(−1) = −2, none (3−2)·(−1) = −1 → top, none, r2.
    concepts, images = ["top", "r2", "none"], [["t0", "t1"], ["u0"], []]
    activation = {"t0": 0.9, "t1": 0.8, "u0": 0.1}
    embeddings = vectors(t0=(1.0, 0.0), t1=(0.0, 1.0))
    exemplars = torch.tensor([[1.0, 0.0]])
    ranked = rank_pool(images, activation)
    assert ranked[2] == RankedImages([], [])
    assert topk_squared([], beta=5, n_concepts=3) == 4.0
    assert mean_rank([]) is None
    scores = score_concepts(concepts, ranked, embeddings, exemplars, settings(top_pool=2))
    assert [(s.concept, s.topk_squared, s.score) for s in scores] == [
        ("top", 0.5, pytest.approx(1.5)),
        ("none", 4.0, -1.0),
        ("r2", 4.0, -2.0),
    ]
    # Listed the other way round, "none" takes idx 1: none (3−1)·(−1) = −2, r2 (3−2)·(−1) = −1 → top, r2, none.
    swapped = score_concepts(
        ["top", "none", "r2"],
        rank_pool([images[0], [], ["u0"]], activation),
        embeddings,
        exemplars,
        settings(top_pool=2),
    )
    assert [(s.concept, s.score) for s in swapped] == [("top", pytest.approx(1.5)), ("r2", -1.0), ("none", -2.0)]
    # mean_rank: "none" has no mean; it counts as the pool size P = 3 → −3, after r2's −2 and top's −0.5.
    by_mean = score_concepts(concepts, ranked, embeddings, exemplars, settings(top_pool=2, function="mean_rank"))
    assert [(s.concept, s.mean_rank, s.score) for s in by_mean] == [
        ("top", 0.5, -0.5),
        ("r2", 2.0, -2.0),
        ("none", None, -3.0),
    ]


def test_equal_activations_keep_pool_order():
    # All activations 1.0: positions follow pool order. Candidates a: a0 a1 | b: b0 → r_a = [0, 1], r_b = [2];
    # candidates b | a → b0 0, a0 1, a1 2.
    activation = {"a0": 1.0, "a1": 1.0, "b0": 1.0}
    assert rank_pool([["a0", "a1"], ["b0"]], activation) == [
        RankedImages(["a0", "a1"], [0, 1]),
        RankedImages(["b0"], [2]),
    ]
    assert rank_pool([["b0"], ["a0", "a1"]], activation) == [
        RankedImages(["b0"], [0]),
        RankedImages(["a0", "a1"], [1, 2]),
    ]
    # A NaN activation sorts after every number: a0 NaN, a1 0.0, b0 −5 → a1 0, b0 1, a0 2.
    nan = {"a0": math.nan, "a1": 0.0, "b0": -5.0}
    assert rank_pool([["a0", "a1"], ["b0"]], nan) == [RankedImages(["a1", "a0"], [0, 2]), RankedImages(["b0"], [1])]


def test_equal_scores_keep_the_topk_squared_order():
    # Candidates b: b0 | a: a0 (b listed first). Activations a0 1.0, b0 0.5 → a0 0, b0 1.
    # TopKSq: a 0, b 1 → idx a 0, b 1. top_pool = 2; exemplar (1,0,0); a0 = (0,1,0), b0 = (0,0,1) → IP 0 for both.
    # Final: a (2−0)·0 = 0, b (2−1)·0 = 0: a tie, broken by idx → a first although b is listed first.
    # image_products alone: 0 and 0 → a first too. topk_squared alone: −0 vs −1 → a first.
    concepts, images = ["b", "a"], [["b0"], ["a0"]]
    ranked = rank_pool(images, {"a0": 1.0, "b0": 0.5})
    embeddings = vectors(a0=(0.0, 1.0, 0.0), b0=(0.0, 0.0, 1.0))
    exemplars = torch.tensor([[1.0, 0.0, 0.0]])
    for function in ("topk_squared_image_products", "image_products", "topk_squared"):
        scores = score_concepts(concepts, ranked, embeddings, exemplars, settings(top_pool=2, function=function))
        assert [s.concept for s in scores] == ["a", "b"], function
    # Several concepts with no image in the top pool all get −1: idx decides among them (c0 at 0, then b, then a).
    concepts, images = ["a", "b", "c"], [["a0"], ["b0"], ["c0"]]
    ranked = rank_pool(images, {"a0": 0.1, "b0": 0.2, "c0": 0.3})  # c0 0, b0 1, a0 2 → idx c 0, b 1, a 2
    scores = score_concepts(
        concepts, ranked, vectors(c0=(1.0, 0.0, 0.0)), exemplars, settings(top_pool=1, function="image_products")
    )
    assert [(s.concept, s.score) for s in scores] == [("c", 1.0), ("b", -1.0), ("a", -1.0)]


# --- Multi-label variant and interpretability -------------------------------------------------------------------


def test_multi_labels_drop_near_duplicates_of_kept_labels():
    # Normalised: stripes = (0.9, 0.1, 0)/√0.82 = (0.99388, 0.11043, 0); lines = (0.8, 0.6, 0); dots = (0, 1, 0).
    # striped: kept.
    # stripes: cos(striped) = 0.99388 > 0.81 → dropped.
    # lines:   cos(striped) = 0.8 ≤ 0.81 → kept (its 0.99388·0.8 + 0.11043·0.6 = 0.8614 with the dropped "stripes"
    #          does not count: only kept labels do).
    # dots:    cos(striped) = 0, cos(lines) = 0.6 → kept; that is 3 labels, so "spots" is never reached.
    embeddings = vectors(
        striped=(1.0, 0.0, 0.0), stripes=(0.9, 0.1, 0.0), lines=(0.8, 0.6, 0.0), dots=(0.0, 1.0, 0.0), spots=(0, 0, 1)
    )
    ordered = ["striped", "stripes", "lines", "dots", "spots"]
    assert multi_labels(ordered, embeddings, threshold=0.81, n_labels=3) == ["striped", "lines", "dots"]
    assert multi_labels(ordered, embeddings, threshold=0.81, n_labels=5) == ["striped", "lines", "dots", "spots"]
    # Exactly at the threshold is kept ("exceeds" is strict): (1,0,0,0)·(½,½,½,½) = 0.5 exactly.
    edge = vectors(x=(1.0, 0.0, 0.0, 0.0), y=(0.5, 0.5, 0.5, 0.5))
    assert multi_labels(["x", "y"], edge, threshold=0.5, n_labels=3) == ["x", "y"]
    assert multi_labels(["x", "y"], edge, threshold=0.49, n_labels=3) == ["x"]


def test_interpretability():
    # Pairs of (1,0,0), (0,1,0), (0.6,0.8,0): 0, 0.6, 0.8 → mean 1.4/3. Scaling an exemplar changes nothing.
    exemplars = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.6, 0.8, 0.0]])
    assert interpretability(exemplars) == pytest.approx(1.4 / 3)
    assert interpretability(torch.tensor([[1.0, 0.0], [1.0, 0.0]])) == pytest.approx(1.0)
    assert interpretability(torch.tensor([[1.0, 0.0]])) is None


def test_label_neuron_case_a():
    # Case A with the default function: order dogs (1.0), cats (0.75), birds (−1).
    # Texts: dogs (1,0), cats (0.9,0.1) (cos with dogs 0.9939 > 0.81 → dropped), birds (0,1) → multi: dogs, birds.
    # Interpretability of e1, e2: cos 0 → 0.
    texts = vectors(dogs=(1.0, 0.0), cats=(0.9, 0.1), birds=(0.0, 1.0))
    labels = label_neuron(
        7,
        CONCEPTS_A,
        rank_pool(IMAGES_A, ACTIVATION_A),
        EMBEDDINGS_A,
        ["img1.png", "img2.png"],
        EXEMPLARS_A,
        texts,
        settings(n_labels=2),
    )
    assert labels.neuron == 7 and labels.failed is None
    assert labels.labels == ["dogs", "cats"]
    assert labels.multi_labels == ["dogs", "birds"]
    assert [s.concept for s in labels.scores] == ["dogs", "cats", "birds"]  # every candidate, not only n_labels
    assert labels.interpretability == 0.0
    assert labels.exemplar_ids == ["img1.png", "img2.png"]
