"""DART against the slow oracle of the official code (``dart_official``) on structured videos and
random grids; hand-computed cases; bad input."""

from __future__ import annotations

import pytest
import torch
from dart_official import official_retained
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structured_videos import structured_video

import tokenreduce as tr

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def ours(normed, keys, grid, *, context_len, **options) -> set[int]:
    t, h, w = grid
    n = t * h * w
    tokens = tr.VisualTokens(torch.zeros(1, t, h, w, 1),
                             signals={"keys": keys[:n].reshape(1, t, h, w, -1), "normed": normed[:n].reshape(1, t, h, w, -1)},
                             context={"valid": torch.ones(1, context_len, dtype=torch.bool), "keys": keys[None, n:],
                                      "normed": normed[None, n:]})
    reducer = tr.build("dart", **options)
    reduction = reducer(tokens)
    assert reduction.kept_counts().tolist() == reducer.planned_counts(tokens).tolist()
    return set(reduction.keep_indices(0).tolist())


@pytest.mark.parametrize("reduction_ratio", [0.778, 0.5, 0.9, 0.3])
@pytest.mark.parametrize("seed", [0, 1])
def test_equals_official_on_structured_videos(reduction_ratio, seed):
    video = structured_video(6, 4, 6, 24, seed=seed, noise=0.3)[0].reshape(144, 24)
    g = torch.Generator().manual_seed(seed)
    sequence = torch.cat([video, torch.randn(7, 24, generator=g)])
    keys = sequence @ torch.randn(24, 16, generator=g)  # keys are a projection of the states
    assert ours(sequence, keys, (6, 4, 6), context_len=7, reduction_ratio=reduction_ratio) == official_retained(
        sequence, keys, 144, reduction_ratio=reduction_ratio)


@SETTINGS
@given(shape=st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(2, 5)), text=st.integers(4, 9),
       seed=st.integers(0, 2**16), reduction_ratio=st.sampled_from([0.0, 0.5, 0.778, 0.95]),
       pivots=st.tuples(st.integers(1, 4), st.integers(0, 4)))
def test_equals_official_on_random_grids(shape, text, seed, reduction_ratio, pivots):
    t, h, w = shape
    n = t * h * w
    pivot_image, pivot_text = pivots
    g = torch.Generator().manual_seed(seed)
    normed = torch.randn(n + text, 8, generator=g)
    keys = torch.randn(n + text, 6, generator=g)
    quota = int(n * (1 - reduction_ratio) / (pivot_image + pivot_text))
    if n < pivot_image + (pivot_image + pivot_text) * quota:
        return  # upstream's topk asks for more tokens than are left and fails (tested below)
    expected = official_retained(normed, keys, n, reduction_ratio=reduction_ratio, pivot_image=pivot_image,
                                 pivot_text=pivot_text)
    if reduction_ratio == 0.0:  # a budget that covers the video keeps every token (docs/strategies.md, dart)
        expected = set(range(n))
    assert ours(normed, keys, shape, context_len=text, reduction_ratio=reduction_ratio, pivot_image=pivot_image,
                pivot_text=pivot_text) == expected


def test_quota_beyond_the_tokens_left_keeps_everything():
    # 12 tokens, 8 pivots, quota int(12 / 8) = 1: upstream's last topk(1) finds no token left and fails
    g = torch.Generator().manual_seed(0)
    keys = {"keys": torch.randn(1, 1, 3, 4, 5, generator=g)}
    context = {"valid": torch.ones(1, 4, dtype=torch.bool), "keys": torch.randn(1, 4, 5, generator=g),
               "features": torch.randn(1, 4, 6, generator=g)}
    tokens = tr.VisualTokens(torch.randn(1, 1, 3, 4, 6, generator=g), signals=keys, context=context)
    reduction = tr.build("dart", reduction_ratio=0.0)(tokens)
    assert bool(reduction.keep_mask.all())


def test_pivots_and_non_duplicates_by_hand():
    # six tokens in a row: keys make token 0 the only image pivot; states: tokens 1, 2 equal to the
    # pivot (duplicates), 3 orthogonal, 4 opposite, 5 in between; a quota of 2 takes 4 then 3
    states = torch.tensor([[1.0, 0.0], [1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 1.0]])
    keys = torch.tensor([[9.0], [1.0], [1.0], [1.0], [1.0], [1.0]])
    tokens = tr.VisualTokens(states.reshape(1, 1, 1, 6, 2), signals={"keys": keys.reshape(1, 1, 1, 6, 1)})
    reduction = tr.build("dart", count=2, pivot_image=1, pivot_text=0)(tokens)
    assert reduction.keep_indices(0).tolist() == [0, 3, 4]
    assert bool(reduction.roles[0, 0] & int(tr.Role.REPRESENTATIVE))


def test_budget_mapping_and_ratio_one():
    g = torch.Generator().manual_seed(1)
    tokens = tr.VisualTokens(torch.randn(1, 8, 6, 6, 8, generator=g), signals={"keys": torch.randn(1, 8, 6, 6, 4, generator=g)})
    # no context: the 4 image pivots share the budget; 288 tokens at r = 0.3: quota int(86.4 / 4) = 21
    assert tr.build("dart", ratio=0.3)(tokens).kept_counts().tolist() == [4 + 4 * 21]
    assert tr.build("dart", count=50)(tokens).kept_counts().tolist() == [4 + 4 * 12]
    assert tr.build("dart")(tokens).kept_counts().tolist() == [4 + 4 * int(288 * (1 - 0.778) / 4)]
    assert bool(tr.build("dart", ratio=1.0)(tokens).keep_mask.all())


def test_without_normed_states_the_features_are_compared():
    g = torch.Generator().manual_seed(2)
    x, keys = torch.randn(1, 2, 3, 3, 5, generator=g), torch.randn(1, 2, 3, 3, 4, generator=g)
    plain = tr.build("dart", ratio=0.5)(tr.VisualTokens(x, signals={"keys": keys}))
    same = tr.build("dart", ratio=0.5)(tr.VisualTokens(torch.zeros_like(x), signals={"keys": keys, "normed": x}))
    assert torch.equal(plain.keep_mask, same.keep_mask)


def test_batch_with_padding_equals_each_sample_alone():
    g = torch.Generator().manual_seed(3)
    x, keys = torch.randn(2, 3, 4, 4, 6, generator=g), torch.randn(2, 3, 4, 4, 5, generator=g)
    valid = torch.rand(2, 3, 4, 4, generator=g) < 0.7
    context = {"valid": torch.tensor([[True] * 5, [True, True, False, False, False]]),
               "keys": torch.randn(2, 5, 5, generator=g), "features": torch.randn(2, 5, 6, generator=g)}
    tokens = tr.VisualTokens(x, valid, signals={"keys": keys}, context=context)
    reducer = tr.build("dart", ratio=0.4)
    batch = reducer(tokens)
    for b in range(2):
        assert torch.equal(batch.keep_mask[b], reducer(tokens.sample(b)).keep_mask[0])


@pytest.mark.parametrize("options,field", [
    ({"ratio": 0.3, "count": 3}, "one budget: ratio, count or reduction_ratio"), ({"reduction_ratio": 1.0}, "reduction_ratio"),
    ({"ratio": 1.5}, "ratio"), ({"layer": 0}, "layer"), ({"pivot_image": 0}, "pivot_image"),
    ({"pivot_text": -1}, "pivot_text"),
])
def test_bad_config_names_the_field(options, field):
    with pytest.raises(tr.ConfigError, match=field):
        tr.build("dart", **options)


def test_bad_context_is_a_clear_error():
    with pytest.raises(ValueError, match="context"):
        tr.VisualTokens(torch.randn(1, 2, 2, 2, 4), context={"keys": torch.randn(1, 3, 2)})
    with pytest.raises(ValueError, match=r"context\['keys'\]"):
        tr.VisualTokens(torch.randn(1, 2, 2, 2, 4), context={"valid": torch.ones(1, 3, dtype=torch.bool),
                                                             "keys": torch.randn(1, 4, 2)})
