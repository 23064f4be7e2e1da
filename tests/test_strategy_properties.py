"""The property suite every registered strategy must pass (new strategies join by registering).

Each strategy is built with its default config (``ratio`` set when the config has one) and fed
random grids with the signals it declares. Checked: kept indices are sorted, unique, in range and
never padding; the kept count equals ``planned_counts`` (the exact budget) when the strategy
plans one; a ratio-1 budget keeps everything; same input gives the same kept set; T = 1 and
H = W = 1 work; a batch equals running its samples one by one.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from factories import build_with_ratio, has_field, make_features, make_tokens, make_valid
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tokenreduce as tr

STRATEGY_NAMES = tr.STRATEGIES.names()

shapes = st.tuples(
    st.integers(1, 3),  # B
    st.integers(1, 4),  # T
    st.integers(1, 4),  # H
    st.integers(1, 4),  # W
    st.integers(1, 8),  # D
)
ratios = st.sampled_from([0.05, 0.1, 0.3, 0.5, 0.7, 1.0]) | st.floats(0.01, 1.0)
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check_reduction(reducer: tr.Reducer, tokens: tr.VisualTokens, reduction: tr.Reduction) -> None:
    """Invariants of any reduction of ``tokens``."""
    b, n = tokens.batch_size, tokens.num_tokens
    assert reduction.keep_mask.shape == (b, n)
    assert reduction.roles.shape == (b, n)
    assert reduction.grid == tokens.grid
    valid = tokens.flat_valid()
    assert not bool((reduction.keep_mask & ~valid).any()), "kept padding"
    assert torch.equal((reduction.roles & int(tr.Role.KEPT)) != 0, reduction.keep_mask)
    for i in range(b):
        kept = reduction.keep_indices(i)
        assert kept.dtype == torch.long
        assert torch.equal(kept, torch.unique(kept)), "kept indices must be sorted and unique"
        if kept.numel():
            assert 0 <= int(kept.min()) and int(kept.max()) < n
        assert kept.numel() + (0 if reduction.extra is None else reduction.extra.shape[1]) >= 1
    planned = reducer.planned_counts(tokens)
    if planned is not None:
        assert reduction.kept_counts().tolist() == planned.tolist(), "exact budget violated"
    if reduction.features is not None:
        assert reduction.features.shape[:2] == (b, n)
        assert bool(torch.isfinite(reduction.features[reduction.keep_mask]).all())


def random_case(name, shape, ratio, seed, static, padded):
    """The strategy ``name`` at ``ratio`` and a seeded random grid of ``shape`` with its signals."""
    b, t, h, w, d = shape
    reducer = build_with_ratio(name, ratio)
    features = make_features(b, t, h, w, d, seed=seed, static=static)
    valid = make_valid(b, t, h, w, seed=seed) if padded else None
    return reducer, make_tokens(reducer, features, valid=valid, seed=seed)


@pytest.mark.parametrize("name", STRATEGY_NAMES)
@SETTINGS
@given(shape=shapes, ratio=ratios, seed=st.integers(0, 2**16), static=st.sampled_from([0.0, 0.9, 1.0]),
       padded=st.booleans())
def test_invariants_and_determinism(name, shape, ratio, seed, static, padded):
    reducer, tokens = random_case(name, shape, ratio, seed, static, padded)
    first = reducer(tokens)
    check_reduction(reducer, tokens, first)
    rebuilt, again = random_case(name, shape, ratio, seed, static, padded)  # a fresh reducer and input
    second = rebuilt(again)
    assert torch.equal(first.keep_mask, second.keep_mask), "not deterministic"
    assert torch.equal(first.roles, second.roles)


@pytest.mark.parametrize("name", STRATEGY_NAMES)
@SETTINGS
@given(shape=shapes, ratio=ratios, seed=st.integers(0, 2**16), static=st.sampled_from([0.0, 0.9]),
       padded=st.booleans())
def test_batch_equals_samples_one_by_one(name, shape, ratio, seed, static, padded):
    reducer, tokens = random_case(name, shape, ratio, seed, static, padded)
    batched = reducer(tokens)
    for i in range(tokens.batch_size):
        alone = reducer(tokens.sample(i))
        assert torch.equal(batched.keep_mask[i], alone.keep_mask[0]), f"sample {i} differs"
        assert torch.equal(batched.roles[i], alone.roles[0])
        if batched.features is not None:
            kept = batched.keep_mask[i]
            torch.testing.assert_close(batched.features[i][kept], alone.features[0][kept])
        if batched.extra is not None:
            torch.testing.assert_close(batched.extra[i], alone.extra[0])


@pytest.mark.parametrize("name", STRATEGY_NAMES)
@pytest.mark.parametrize("shape", [(2, 1, 3, 4, 5), (2, 5, 1, 1, 3), (1, 1, 1, 1, 1)], ids=["T=1", "H=W=1", "one"])
def test_degenerate_grids(name, shape):
    reducer = build_with_ratio(name, 0.3)
    tokens = make_tokens(reducer, make_features(*shape, seed=3))
    check_reduction(reducer, tokens, reducer(tokens))


@pytest.mark.parametrize("name", [n for n in STRATEGY_NAMES if has_field(tr.STRATEGIES.get(n), "ratio")])
@SETTINGS
@given(shape=shapes, seed=st.integers(0, 2**16), padded=st.booleans())
def test_ratio_one_keeps_everything(name, shape, seed, padded):
    b, t, h, w, d = shape
    reducer = build_with_ratio(name, 1.0)
    valid = make_valid(b, t, h, w, seed=seed) if padded else None
    tokens = make_tokens(reducer, make_features(*shape, seed=seed), valid=valid, seed=seed)
    reduction = reducer(tokens)
    assert torch.equal(reduction.keep_mask, tokens.flat_valid())


CEIL_BUDGETED = [
    n for n in STRATEGY_NAMES
    if issubclass(tr.STRATEGIES.get(n), tr.BudgetedReducer)
    and issubclass(tr.STRATEGIES.get(n).Config, tr.BudgetConfig)
    and tr.STRATEGIES.get(n).Config.rounding == "ceil"
]


@pytest.mark.parametrize("name", CEIL_BUDGETED)
@SETTINGS
@given(shape=shapes, ratio=ratios, seed=st.integers(0, 2**16), padded=st.booleans())
def test_ratio_budget_is_ceil_of_decimal_ratio(name, shape, ratio, seed, padded):
    """A ratio r over n valid tokens keeps exactly ceil(r * n), r read as the decimal it prints as."""
    b, t, h, w, d = shape
    reducer = build_with_ratio(name, ratio)
    valid = make_valid(b, t, h, w, seed=seed) if padded else None
    tokens = make_tokens(reducer, make_features(*shape, seed=seed), valid=valid, seed=seed)
    kept = reducer(tokens).kept_counts().tolist()
    expected = [max(1, math.ceil(Fraction(repr(ratio)) * n)) for n in tokens.valid_counts().tolist()]
    assert kept == expected


REQUIRING = [n for n in STRATEGY_NAMES if build_with_ratio(n, 0.3).requires - {tr.Signal.FEATURES}]


@pytest.mark.parametrize("name", REQUIRING)
def test_missing_required_signals_are_named(name):
    """Without a signal it requires, a strategy raises MissingSignalError naming itself and the signal."""
    reducer = build_with_ratio(name, 0.3)
    with pytest.raises(tr.MissingSignalError, match=name) as error:
        reducer(tr.VisualTokens(make_features(1, 2, 2, 2, 4)))
    assert all(signal.value in str(error.value) for signal in reducer.requires)


def test_every_strategy_is_listed():
    """The suite really covers the built-in strategies (guards against an empty parametrisation)."""
    assert {"keep_all", "random", "uniform", "attention_prune", "pipeline"} <= set(STRATEGY_NAMES)
