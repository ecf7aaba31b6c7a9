"""The paired difference of two label sets' scores: its mean, its seeded bootstrap interval and how items pair up."""

from __future__ import annotations

import numpy as np
import pytest

from dnd.evaluate.metrics import paired_difference, scores_by_item


def test_the_mean_is_item_by_item_and_several_draws_count_as_their_mean():
    first = {0: [0.5], 1: [0.2], 2: [0.9]}
    other = {0: [0.1, 0.3], 1: [0.2, 0.2], 2: [0.0, 0.4]}  # means 0.2, 0.2, 0.2

    difference = paired_difference(first, other, seed=0)

    assert difference is not None and difference.items == 3
    assert difference.mean == pytest.approx((0.3 + 0.0 + 0.7) / 3)
    assert difference.low <= difference.mean <= difference.high
    assert difference.low >= 0.0 and difference.high <= 0.7  # resampled means stay within the items' differences


def test_only_shared_items_are_paired_and_none_shared_gives_none():
    difference = paired_difference({0: [1.0], 1: [0.0], 5: [9.0]}, {0: [0.5], 1: [0.5], 7: [9.0]}, seed=0)
    assert difference is not None and difference.items == 2 and difference.mean == pytest.approx(0.0)
    assert paired_difference({0: [1.0]}, {1: [1.0]}, seed=0) is None


def test_a_constant_difference_has_no_spread_and_the_interval_is_seeded():
    same = paired_difference({i: [i + 0.25] for i in range(10)}, {i: [float(i)] for i in range(10)}, seed=3)
    assert same is not None and (same.low, same.mean, same.high) == pytest.approx((0.25, 0.25, 0.25))
    rng = np.random.default_rng(0)
    first = {i: [float(v)] for i, v in enumerate(rng.normal(0.1, 1.0, 40))}
    other = {i: [0.0] for i in range(40)}
    assert paired_difference(first, other, seed=1) == paired_difference(first, other, seed=1)
    assert paired_difference(first, other, seed=1) != paired_difference(first, other, seed=2)


def test_the_interval_matches_the_normal_approximation_for_many_items():
    rng = np.random.default_rng(0)
    values = rng.normal(0.05, 0.2, 400)
    difference = paired_difference({i: [float(v)] for i, v in enumerate(values)}, {i: [0.0] for i in range(400)}, 0)
    half_width = 1.96 * values.std() / np.sqrt(len(values))
    assert difference is not None and difference.mean == pytest.approx(values.mean())
    assert difference.low == pytest.approx(values.mean() - half_width, abs=0.004)
    assert difference.high == pytest.approx(values.mean() + half_width, abs=0.004)
    assert difference.low > 0  # 0.05 over 400 items of spread 0.2 is well clear of zero


def test_scores_are_grouped_by_item_in_first_seen_order():
    assert scores_by_item([(3, 0.1), (1, 0.2), (3, 0.5)]) == {3: [0.1, 0.5], 1: [0.2]}
