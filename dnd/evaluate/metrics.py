"""Metrics shared by the evaluations."""

from __future__ import annotations

import torch


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
