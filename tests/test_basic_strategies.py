"""keep_all, random, uniform and attention_prune against hand-computed cases and slow oracles."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from factories import make_features, make_valid
from hypothesis import given, settings
from hypothesis import strategies as st

import tokenreduce as tr
from tokenreduce.selection import even_spacing_mask, proportional_counts, top_k_mask


def test_keep_all_is_identity():
    valid = make_valid(2, 3, 2, 2)
    red = tr.build("keep_all")(tr.VisualTokens(make_features(2, 3, 2, 2, 4), valid))
    assert torch.equal(red.keep_mask, valid.reshape(2, -1))
    assert red.features is None and red.extra is None


def test_random_is_seeded_and_exact():
    x = tr.VisualTokens(make_features(2, 4, 5, 5, 3))
    a = tr.build("random", ratio=0.3, seed=1)(x)
    b = tr.build("random", ratio=0.3, seed=1)(x)
    c = tr.build("random", ratio=0.3, seed=2)(x)
    assert torch.equal(a.keep_mask, b.keep_mask) and not torch.equal(a.keep_mask, c.keep_mask)
    assert a.kept_counts().tolist() == [30, 30]
    assert bool((a.roles[a.keep_mask] & tr.Role.SAMPLED).all())
    assert tr.build("random", count=7)(x).kept_counts().tolist() == [7, 7]


def test_random_is_roughly_uniform():
    """Over many seeds every position is kept about ratio of the time (a chi-square-free sanity bound)."""
    x = tr.VisualTokens(make_features(1, 1, 4, 5, 2))
    hits = torch.zeros(20)
    for seed in range(400):
        hits += tr.build("random", ratio=0.25, seed=seed)(x).keep_mask[0].float()
    assert hits.sum() == 400 * 5
    assert float(hits.min()) > 60 and float(hits.max()) < 140  # mean 100


def slow_even_spacing(v: int, k: int) -> list[int]:
    """Ranks nearest to the centres of k equal slices of v items (ties to the upper one)."""
    return [math.floor((i + 0.5) * v / k) for i in range(k)]


@given(v=st.integers(1, 60), data=st.data())
def test_even_spacing_matches_slice_centres(v, data):
    k = data.draw(st.integers(0, v))
    mask = even_spacing_mask(torch.ones(1, v, dtype=torch.bool), torch.tensor([k]))
    assert mask[0].nonzero().flatten().tolist() == slow_even_spacing(v, k)


def test_uniform_hand_computed():
    x = tr.VisualTokens(make_features(1, 1, 1, 10, 2))
    assert tr.build("uniform", ratio=0.2)(x).keep_indices(0).tolist() == [2, 7]
    assert tr.build("uniform", ratio=0.5)(x).keep_indices(0).tolist() == [1, 3, 5, 7, 9]
    assert tr.build("uniform", count=1)(x).keep_indices(0).tolist() == [5]


def test_uniform_skips_padding_in_rank_order():
    valid = torch.tensor([True, False, True, True, False, True, True, True]).reshape(1, 1, 2, 4)
    red = tr.build("uniform", count=2)(tr.VisualTokens(make_features(1, 1, 2, 4, 2), valid))
    # valid flat indices [0, 2, 3, 5, 6, 7]; ranks 1 and 4 -> flat 2 and 6
    assert red.keep_indices(0).tolist() == [2, 6]


@settings(max_examples=40, deadline=None)
@given(t=st.integers(1, 6), hw=st.integers(1, 12), ratio=st.floats(0.01, 1.0), seed=st.integers(0, 999))
def test_uniform_per_frame_split_is_proportional_and_exact(t, hw, ratio, seed):
    valid = make_valid(1, t, 1, hw, seed=seed)
    red = tr.build("uniform", ratio=ratio, per_frame=True)(tr.VisualTokens(make_features(1, t, 1, hw, 2), valid))
    per_frame_valid = valid.reshape(t, hw).sum(1)
    n = int(per_frame_valid.sum())
    k = max(1, math.ceil(Fraction(repr(ratio)) * n))
    kept = red.keep_mask.reshape(t, hw).sum(1)
    assert int(kept.sum()) == k
    # cumulative flooring: frame s gets floor(k*C_s/n) - floor(k*C_{s-1}/n)
    cumulative = per_frame_valid.cumsum(0).tolist()
    expected = [k * c // n - (k * cumulative[i - 1] // n if i else 0) for i, c in enumerate(cumulative)]
    assert kept.tolist() == expected
    assert bool((kept <= per_frame_valid).all())


def test_proportional_counts_sum_exactly():
    sizes = torch.tensor([[3, 0, 5, 2], [1, 1, 1, 1]])
    counts = proportional_counts(sizes, torch.tensor([5, 3]))
    assert counts.sum(1).tolist() == [5, 3]
    assert bool((counts <= sizes).all())


def slow_top_k(scores: list[float], eligible: list[bool], k: int) -> list[int]:
    order = sorted((i for i in range(len(scores)) if eligible[i]), key=lambda i: (-scores[i], i))
    return sorted(order[:k])


@given(data=st.data(), n=st.integers(1, 40))
def test_top_k_matches_oracle_with_ties(data, n):
    scores = data.draw(st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0]), min_size=n, max_size=n))
    eligible = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    k = data.draw(st.integers(0, n))
    mask = top_k_mask(torch.tensor([scores]), torch.tensor([k]), torch.tensor([eligible]))
    assert mask[0].nonzero().flatten().tolist() == slow_top_k(scores, eligible, k)


def test_attention_prune_keeps_most_attended():
    importance = torch.tensor([0.1, 0.9, 0.3, 0.9, 0.0, 0.5]).reshape(1, 1, 2, 3)
    tokens = tr.VisualTokens(make_features(1, 1, 2, 3, 2), importance=importance)
    red = tr.build("attention_prune", count=3, layer=2)(tokens)
    assert red.keep_indices(0).tolist() == [1, 3, 5]
    assert bool((red.roles[red.keep_mask] & tr.Role.IMPORTANT).all())
    reducer = tr.build("attention_prune", layer=3)
    assert reducer.stage is tr.Stage.IN_LLM and reducer.layer == 3
    with pytest.raises(tr.ConfigError, match="layer must be >= 1"):
        tr.build("attention_prune", layer=0)
    with pytest.raises(tr.MissingSignalError, match="importance"):
        reducer(tr.VisualTokens(make_features(1, 1, 2, 3, 2)))


def test_reducer_rejects_non_tokens():
    with pytest.raises(TypeError, match="expects tr.VisualTokens"):
        tr.build("random")(torch.randn(1, 2, 2, 2, 3))
