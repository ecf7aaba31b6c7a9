"""Metrics shared by the evaluations."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from pydantic import BaseModel, Field

#: Bootstrap resamples behind the interval of a :class:`PairedDifference`.
BOOTSTRAP_RESAMPLES = 2000


def roc_auc(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """Exact ROC-AUC of the scores ``positive [..., m]`` (label 1) against ``negative [..., n]`` (label 0), per leading
    index.

    ``AUC = U / (m · n)`` with the Mann–Whitney count ``U = Σ_i Σ_j ([p_i > q_j] + ½ · [p_i = q_j])``: the chance that
    a random positive outscores a random negative, ties counted as half (what ``sklearn.metrics.roc_auc_score``
    computes). 1 when every positive score exceeds every negative one, 0 when none does, ½ when both come from one
    distribution. Per positive score, two binary searches in the sorted negative scores count those below it and those
    not above it, so the cost is ``O((m + n) log n)``, not ``O(m n)``. The leading dimensions of both inputs must match
    (``[n_neurons, m]`` against ``[n_neurons, n]`` scores every neuron at once); ``m, n ≥ 1``, values finite. Returns
    float64 ``[...]``.
    """
    ordered = negative.double().sort(dim=-1).values.contiguous()
    values = positive.double().contiguous()
    below = torch.searchsorted(ordered, values, side="left")  # [..., m]: negatives < p_i
    not_above = torch.searchsorted(ordered, values, side="right")  # [..., m]: negatives <= p_i
    # below + ½ · (not_above − below) per positive score; integers and halves, exact in float64.
    u = (below + not_above).double().sum(dim=-1) / 2
    return u / (positive.shape[-1] * negative.shape[-1])


class PairedDifference(BaseModel):
    """One label set's scores minus another's, item by item (a neuron, a class), with a 95 % bootstrap interval: how
    far apart two sets are and whether that is more than the spread of the items can explain."""

    items: int = Field(description="Items both sets score.")
    mean: float = Field(description="Mean over the items of (first set's score − the other's).")
    low: float = Field(description="2.5th percentile of that mean over bootstrap resamples of the items.")
    high: float = Field(description="97.5th percentile of that mean over bootstrap resamples of the items.")


def paired_difference(
    first: Mapping[Hashable, Sequence[float]], other: Mapping[Hashable, Sequence[float]], seed: int
) -> PairedDifference | None:
    """``first`` minus ``other``, paired by item, over the items both score; None when they share none.

    Each maps an item to its scores, one per draw of the set (a set of several draws, such as the shuffled baseline,
    counts each item's mean over them). The interval is the percentile bootstrap: :data:`BOOTSTRAP_RESAMPLES`
    resamples of the items with replacement, drawn from a generator seeded with ``seed``, so the same inputs always
    give the same interval. An interval that excludes 0 means the sets differ by more than the items' spread explains.
    """
    shared = [item for item in first if item in other]
    if not shared:
        return None
    differences = torch.tensor(
        [sum(first[item]) / len(first[item]) - sum(other[item]) / len(other[item]) for item in shared],
        dtype=torch.float64,
    )  # [items]
    picks = torch.randint(
        len(shared), (BOOTSTRAP_RESAMPLES, len(shared)), generator=torch.Generator().manual_seed(seed)
    )
    means = differences[picks].mean(dim=1)  # [resamples]
    low, high = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return PairedDifference(items=len(shared), mean=differences.mean().item(), low=low, high=high)


def scores_by_item(pairs: Sequence[tuple[Hashable, float]]) -> dict[Hashable, list[float]]:
    """``(item, score)`` pairs (one per item and draw) grouped as ``item → its scores``, in first-seen order."""
    grouped: dict[Hashable, list[float]] = {}
    for item, score in pairs:
        grouped.setdefault(item, []).append(score)
    return grouped
