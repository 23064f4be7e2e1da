"""Budgets: exact ratio counts, absolute counts, and the FrameFusion/ST-SimDiff cost formula."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import tokenreduce as tr
from tokenreduce.budget import scaled_count


def test_ratio_is_read_as_a_decimal():
    assert 0.28 * 100 > 28  # binary floating point would give ceil = 29
    assert tr.Budget(ratio=0.28).keep_count(100) == 28
    assert tr.Budget(ratio=0.3).keep_count(10) == 3
    assert tr.Budget(ratio=0.3).keep_count(11) == 4
    assert tr.Budget(ratio=1.0).keep_count(7) == 7


@given(n=st.integers(1, 100_000), ratio=st.floats(1e-6, 1.0))
def test_ceil_matches_exact_rational(n, ratio):
    expected = max(1, math.ceil(Fraction(repr(ratio)) * n))
    assert tr.Budget(ratio=ratio).keep_count(n) == expected


def test_round_reproduces_python_round():
    # Python rounds half to even on the float product, as the official FastV/FrameFusion code does
    assert scaled_count(5, 0.5, "round") == round(5 * 0.5) == 2
    assert scaled_count(7, 0.5, "round") == 4
    assert tr.Budget(ratio=0.5, rounding="round").keep_count(5) == 2


def test_count_and_clipping():
    assert tr.Budget(count=10).keep_count(100) == 10
    assert tr.Budget(count=10).keep_count(100, available=4) == 4
    assert tr.Budget(ratio=0.01).keep_count(5) == 1  # never zero when tokens are available
    counts = tr.Budget(ratio=0.5).keep_counts(torch.tensor([10, 9]), torch.tensor([3, 9]))
    assert counts.tolist() == [3, 5]


@pytest.mark.parametrize("kwargs, words", [
    ({"ratio": 0.0}, "ratio must be in (0, 1]"),
    ({"ratio": 1.5}, "ratio must be in (0, 1]"),
    ({"ratio": -0.1}, "ratio must be in (0, 1]"),
    ({"ratio": float("nan")}, "ratio must be in (0, 1]"),
    ({"ratio": "0.3"}, "ratio must be a number"),
    ({"count": 0}, "count must be >= 1"),
    ({"count": 2.5}, "count must be an int"),
    ({"cost": 0.0}, "cost must be in (0, 1]"),
    ({}, "exactly one of ratio, count or cost"),
    ({"ratio": 0.3, "count": 3}, "exactly one of ratio, count or cost"),
    ({"ratio": 0.3, "rounding": "up"}, "rounding must be"),
])
def test_bad_budgets(kwargs, words):
    with pytest.raises(tr.ConfigError) as info:
        tr.Budget(**kwargs)
    assert words in str(info.value)


def slow_cost_formula(sparsity, cost, layers):
    """The formula as REFERENCE.md states it, written independently."""
    s = 1.0
    for x in sparsity:
        s *= 1 - x
    total = sum(math.prod(1 - x for x in sparsity[: j + 1]) for j in range(len(sparsity)))
    remain = layers * cost - total
    assert remain >= 0
    fraction = remain / ((layers - len(sparsity)) * s)
    return 0.0 if fraction > 1 else 1 - fraction


def test_cost_formula_hand_values():
    # no merging yet: keep `cost` of the tokens in every layer -> prune 1 - cost
    assert tr.cost_prune_ratio([], 0.3, 28) == pytest.approx(0.7)
    # one layer at full cost then 0.5: 28*0.3 = 8.4, 0.5 spent, 7.9 left for 27 layers on 0.5
    assert tr.cost_prune_ratio([0.5], 0.3, 28) == pytest.approx(1 - 7.9 / (27 * 0.5))
    assert tr.cost_prune_ratio([0.9], 1.0, 4) == 0.0  # budget exceeds what is left


@given(sparsity=st.lists(st.floats(0, 0.9), max_size=3), cost=st.floats(0.2, 1.0), layers=st.integers(4, 40))
def test_cost_formula_matches_slow_version(sparsity, cost, layers):
    s, total = 1.0, 0.0
    for x in sparsity:
        s *= 1 - x
        total += s
    if layers * cost - total < 0:
        with pytest.raises(tr.ConfigError, match="too small"):
            tr.cost_prune_ratio(sparsity, cost, layers)
    else:
        assert tr.cost_prune_ratio(sparsity, cost, layers) == pytest.approx(slow_cost_formula(sparsity, cost, layers))


def test_cost_budget_needs_layers():
    with pytest.raises(tr.ConfigError, match="num_layers"):
        tr.Budget(cost=0.3).keep_count(100)
    assert tr.Budget(cost=0.3).keep_count(100, num_layers=28) == round(100 * (1 - tr.cost_prune_ratio([], 0.3, 28)))
