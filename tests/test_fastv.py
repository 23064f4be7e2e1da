"""FastV: top-k by the last query's attention before layer K, with FastV's rounding."""

from __future__ import annotations

import pytest
import torch

import tokenreduce as tr
from tokenreduce.strategies.attention_prune import AttentionPrune


def oracle_keep(importance, valid, k):
    """Slow reference: sort valid tokens by (-score, index) and keep the first k."""
    candidates = [i for i in range(len(importance)) if valid[i]]
    ranked = sorted(candidates, key=lambda i: (-importance[i], i))
    return sorted(ranked[:k])


def test_build_and_placement():
    reducer = tr.build("fastv", layer=2, ratio=0.5)
    assert isinstance(reducer, AttentionPrune)
    assert reducer.stage is tr.Stage.IN_LLM and reducer.layer == 2
    assert tr.Signal.IMPORTANCE in reducer.requires
    assert tr.build(reducer.config.to_dict()).config == reducer.config


@pytest.mark.parametrize("n,prune_ratio,expected", [
    (5, 0.5, 2),    # round(2.5) = 2: Python rounds half to even (ceil would give 3)
    (7, 0.5, 4),    # round(3.5) = 4
    (10, 0.7, 3),   # 10 * (1 - 0.7) = 3.0000000000000004 -> 3
    (576, 0.75, 144),
    (9, 0.0, 9),
])
def test_keep_count_is_python_round_of_n_times_one_minus_r(n, prune_ratio, expected):
    assert round(n * (1 - prune_ratio)) == expected  # the official expression
    reducer = tr.build("fastv", prune_ratio=prune_ratio)
    tokens = tr.VisualTokens(torch.randn(1, 1, 1, n, 2), importance=torch.rand(1, 1, 1, n))
    assert reducer(tokens).kept_counts().tolist() == [expected]
    assert reducer.planned_counts(tokens).tolist() == [expected]


def test_keep_ratio_uses_round_too():
    tokens = tr.VisualTokens(torch.randn(1, 1, 1, 5, 2), importance=torch.rand(1, 1, 1, 5))
    assert tr.build("fastv", ratio=0.5)(tokens).kept_counts().tolist() == [2]
    assert tr.build("attention_prune", ratio=0.5)(tokens).kept_counts().tolist() == [3]


def test_absolute_count_and_hand_case():
    importance = torch.tensor([0.1, 0.9, 0.3, 0.9, 0.5, 0.0]).reshape(1, 1, 2, 3)
    tokens = tr.VisualTokens(torch.randn(1, 1, 2, 3, 4), importance=importance)
    red = tr.build("fastv", count=3)(tokens)
    assert red.keep_indices(0).tolist() == [1, 3, 4]  # the tie 0.9/0.9 is within the count
    red = tr.build("fastv", count=1)(tokens)
    assert red.keep_indices(0).tolist() == [1]  # equal scores: the lower flat index wins
    assert (red.roles[0, 1] & int(tr.Role.IMPORTANT))


def test_matches_slow_oracle_on_random_batches():
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        b, t, h, w = 3, 1 + trial % 3, 2, 1 + trial % 4
        n = t * h * w
        importance = torch.randint(0, 4, (b, t, h, w), generator=g).float()  # many ties
        valid = torch.rand(b, t, h, w, generator=g) > 0.3
        valid[:, 0, 0, 0] = True
        prune_ratio = [0.1, 0.25, 0.5, 0.75, 0.9][trial % 5]
        red = tr.build("fastv", prune_ratio=prune_ratio)(tr.VisualTokens(torch.randn(b, t, h, w, 2, generator=g),
                                                                       valid, importance))
        for s in range(b):
            v = valid[s].flatten().tolist()
            k = max(1, round(sum(v) * (1 - prune_ratio)))
            assert red.keep_indices(s).tolist() == oracle_keep(importance[s].flatten().tolist(), v, k), n


def test_bad_configs_name_the_field():
    with pytest.raises(tr.ConfigError, match="prune_ratio"):
        tr.build("fastv", prune_ratio=1.0)
    with pytest.raises(tr.ConfigError, match="one budget: ratio, count or prune_ratio"):
        tr.build("fastv", prune_ratio=0.5, count=3)
    with pytest.raises(tr.ConfigError, match="ratio=0.5, prune_ratio=0.5"):
        tr.build("fastv", prune_ratio=0.5, ratio=0.5)
    with pytest.raises(tr.ConfigError, match="layer"):
        tr.build("fastv", layer=0)
    with pytest.raises(tr.MissingSignalError, match="importance"):
        tr.build("fastv")(tr.VisualTokens(torch.randn(1, 1, 2, 2, 3)))


def test_float64_scores_rank_in_their_own_precision():
    # upstream's topk ranks the attention in its own dtype: 1 + 1e-12 beats 1.0 in float64,
    # although both are 1.0 in float32 (where the lower index would win the tie)
    importance = torch.tensor([1.0, 1.0 + 1e-12, 0.5], dtype=torch.float64).reshape(1, 1, 1, 3)
    tokens = tr.VisualTokens(torch.randn(1, 1, 1, 3, 2, dtype=torch.float64), importance=importance)
    assert tr.build("fastv", count=1)(tokens).keep_indices(0).tolist() == [1]
    assert importance.flatten().topk(1).indices.tolist() == [1]
