"""fit_budget: a content-driven strategy trimmed or filled to an exact count, against a slow oracle."""

from __future__ import annotations

import math

import pytest
import torch
from factories import make_features, make_tokens, make_valid
from hypothesis import given, settings
from hypothesis import strategies as st

import tokenreduce as tr


def slow_fit(chosen: list[int], others: list[int], count: int) -> list[int]:
    """Evenly spaced picks (slice centres) among ``chosen`` when it is too large, else all of it plus
    evenly spaced picks among ``others``."""
    def spaced(items: list[int], k: int) -> list[int]:
        return [items[math.floor((i + 0.5) * len(items) / k)] for i in range(k)]

    if len(chosen) >= count:
        return spaced(chosen, count)
    return sorted(chosen + spaced(others, min(count - len(chosen), len(others))))


@settings(max_examples=40, deadline=None)
@given(t=st.integers(1, 4), h=st.integers(1, 4), w=st.integers(1, 4), static=st.sampled_from([0.0, 0.9, 1.0]),
       padded=st.booleans(), seed=st.integers(0, 2**16), data=st.data())
def test_matches_the_slow_oracle_around_the_inner_kept_set(t, h, w, static, padded, seed, data):
    features = make_features(1, t, h, w, 6, seed=seed, static=static)
    valid = make_valid(1, t, h, w, seed=seed) if padded else None
    tokens = tr.VisualTokens(features, valid)
    inner = tr.build("st_simdiff_select", tau_sim=0.5)(tokens)
    count = data.draw(st.integers(1, int(tokens.valid_counts()[0])))
    fitted = tr.build({"name": "fit_budget", "count": count,
                       "strategy": {"name": "st_simdiff_select", "tau_sim": 0.5}})(tokens)
    chosen = inner.keep_indices(0).tolist()
    others = [int(i) for i in tokens.flat_valid()[0].nonzero().flatten() if int(i) not in set(chosen)]
    assert fitted.keep_indices(0).tolist() == slow_fit(chosen, others, count)
    filled = ((fitted.roles[0] & int(tr.Role.FILLED)) != 0).nonzero().flatten().tolist()
    assert filled == sorted(set(fitted.keep_indices(0).tolist()) - set(chosen))


def test_hand_computed_trim_and_fill():
    tokens = tr.VisualTokens(torch.randn(1, 1, 1, 10, 3))  # keep_all keeps 0..9
    trim = tr.build({"name": "fit_budget", "count": 3, "strategy": "keep_all"})(tokens)
    assert trim.keep_indices(0).tolist() == [1, 5, 8]  # centres of 3 slices of 10
    uniform = tr.build({"name": "fit_budget", "count": 4, "strategy": {"name": "uniform", "count": 2}})(tokens)
    # uniform keeps 2, 7; the others 0 1 3 4 5 6 8 9 give their slice centres 3 (rank 2) and 8 (rank 6)
    assert uniform.keep_indices(0).tolist() == [2, 3, 7, 8]


def test_ratio_budget_and_batches():
    features = make_features(3, 2, 3, 3, 4, seed=1, static=0.9)
    valid = make_valid(3, 2, 3, 3, seed=1)
    reducer = tr.build({"name": "fit_budget", "ratio": 0.4})
    batch = reducer(tr.VisualTokens(features, valid))
    assert batch.kept_counts().tolist() == [math.ceil(0.4 * int(v)) for v in valid.reshape(3, -1).sum(1)]
    for b in range(3):
        alone = reducer(tr.VisualTokens(features[b:b + 1], valid[b:b + 1]))
        assert torch.equal(alone.keep_mask[0], batch.keep_mask[b])


def test_runs_where_the_wrapped_strategy_runs():
    fitted = tr.build({"name": "fit_budget", "count": 5, "strategy": {"name": "fastv", "layer": 3}})
    assert fitted.stage is tr.Stage.IN_LLM and fitted.layer == 3
    assert fitted.requires == tr.build("fastv").requires
    assert tr.build("fit_budget").stage is tr.Stage.PRE_LLM


@pytest.mark.parametrize("inner", [{"name": "st_simdiff", "variant": "reference"}, "framefusion"])
def test_a_strategy_running_at_several_places_is_refused(inner):
    with pytest.raises(tr.ConfigError, match="fit_budget.strategy must run at one place"):
        tr.build({"name": "fit_budget", "strategy": inner})


def test_new_tokens_cannot_be_fitted():
    reducer = tr.build({"name": "fit_budget", "count": 4, "strategy": "visionzip"})
    tokens = make_tokens(reducer, make_features(1, 2, 4, 4, 8))
    with pytest.raises(tr.ConfigError, match="adds new tokens"):
        reducer(tokens)


def test_config_round_trips():
    reducer = tr.build({"name": "fit_budget", "count": 7, "strategy": {"name": "st_simdiff_select", "retention": 0.5}})
    again = tr.build(reducer.config.to_dict())
    assert again.config == reducer.config
    assert again.inner.config.retention == 0.5
