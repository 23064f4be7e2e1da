"""Every registered strategy on single-frame grids (T = 1): how images reach a strategy.

An image is a grid with one frame. On it every strategy keeps the invariants and exact budget of the
property suite, and the temporal parts have nothing to act on: the spatio-temporal graph has no
temporal edge, no token is an event (there is no earlier frame to differ from), a strategy with a
``temporal`` switch reduces the frame the same way with it on or off, and FrameFusion merges nothing.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tokenreduce as tr
from tokenreduce.graph.token_graph import EdgeKind, SpatioTemporalGraphBuilder
from tokenreduce.testing import build_example, check_reduction, make_features, make_tokens, strategy_class

NAMES = tr.STRATEGIES.names()
SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
frames = st.tuples(st.integers(1, 3), st.just(1), st.integers(1, 5), st.integers(1, 5), st.integers(1, 8))


def build_at_ratio(name, ratio):
    """The strategy at its canonical example, its budget set to ``ratio`` by the shared rule when it
    has one (a strategy without a budget, such as ``keep_all``, runs at its example)."""
    cls = strategy_class(name)
    return build_example(cls, cls.examples()[0], ratio if cls.budgeted else None)


def _case(name, shape, ratio, seed):
    reducer = build_at_ratio(name, ratio)
    return reducer, make_tokens(reducer, make_features(*shape, seed=seed, static=0.5), seed=seed)


@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(shape=frames, ratio=st.sampled_from([0.1, 0.3, 0.5, 1.0]), seed=st.integers(0, 2**16))
def test_single_frame_grids_keep_the_invariants_and_have_no_events(name, shape, ratio, seed):
    reducer, tokens = _case(name, shape, ratio, seed)
    reduction = reducer(tokens)
    check_reduction(reducer, tokens, reduction)
    assert not bool((reduction.roles & int(tr.Role.EVENT)).any()), "an event needs an earlier frame"
    again = build_at_ratio(name, ratio)(tokens)
    assert torch.equal(again.keep_mask, reduction.keep_mask)


def test_every_strategy_is_checked_on_single_frames():
    assert {"st_simdiff", "framefusion", "fastv", "visionzip", "random"} <= set(NAMES)


@SETTINGS
@given(shape=frames, seed=st.integers(0, 2**16))
def test_the_graph_of_a_single_frame_has_no_temporal_edge(shape, seed):
    builder = SpatioTemporalGraphBuilder(temporal=True)
    graph = builder.build_graph(tr.VisualTokens(make_features(*shape, seed=seed)))
    assert not bool(graph.of_kind(EdgeKind.TEMPORAL).any())


TEMPORAL_SWITCH = [n for n in NAMES if "temporal" in {f.name for f in dataclasses.fields(tr.STRATEGIES.get(n).Config)}]


@pytest.mark.parametrize("name", TEMPORAL_SWITCH)
@SETTINGS
@given(shape=frames, seed=st.integers(0, 2**16))
def test_the_temporal_switch_changes_nothing_on_a_single_frame(name, shape, seed):
    reducer, tokens = _case(name, shape, 0.3, seed)
    spatial_only = tr.build({**reducer.config.to_dict(), "temporal": False})
    assert torch.equal(reducer(tokens).keep_mask, spatial_only(tokens).keep_mask)


def test_strategies_with_a_temporal_switch_are_found():
    assert "st_simdiff" in TEMPORAL_SWITCH


@SETTINGS
@given(shape=frames, seed=st.integers(0, 2**16))
def test_framefusion_merges_nothing_in_a_single_frame(shape, seed):
    reducer = tr.build("framefusion", cost=0.5, similarity_lower_bound=-1.0)  # any temporal pair would merge
    tokens = make_tokens(reducer, make_features(*shape, seed=seed, static=1.0), seed=seed)
    state = reducer.start(tokens)
    reduction = reducer.step(state, 0, tokens)
    assert reduction.features is None or torch.equal(reduction.features[reduction.keep_mask],
                                                     tokens.flat_features()[reduction.keep_mask])
    assert not bool((reduction.roles & int(tr.Role.MERGED | tr.Role.ABSORBED)).any())
