"""ST-SimDiff against slow pure-Python oracles (tests/simdiff_oracles.py) and hand-built videos."""

from __future__ import annotations

import math
import re
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from simdiff_oracles import (
    paper_select,
    reference_stage1,
    reference_stage2,
    structured_features,
    trim,
)

import tokenreduce as tr
from tokenreduce.budget import cost_prune_ratio
from tokenreduce.errors import ConfigError, ConfigTypeError, MissingSignalError

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

grids = st.tuples(st.integers(1, 2), st.integers(1, 4), st.integers(1, 4), st.integers(1, 4),
                  st.integers(3, 8))


def random_valid(b, t, h, w, seed, padded):
    if not padded:
        return None
    g = torch.Generator().manual_seed(seed + 7)
    valid = torch.rand(b, t, h, w, generator=g) < 0.8
    valid.view(b, -1)[:, 0] = True
    return valid


def kept_sets(reduction):
    return [set(reduction.keep_indices(i).tolist()) for i in range(reduction.batch_size)]


# ----- paper variant ---------------------------------------------------------------------------
@SETTINGS
@given(grid=grids, seed=st.integers(0, 10**6), ratio=st.sampled_from([0.1, 0.3, 0.5, 0.7, 1.0]),
       tau_sim=st.sampled_from([0.5, 0.8, 0.9]), switches=st.tuples(*[st.booleans()] * 5),
       padded=st.booleans(), max_size=st.sampled_from([None, 2, 3]))
def test_select_matches_oracle(grid, seed, ratio, tau_sim, switches, padded, max_size):
    b, t, h, w, d = grid
    spatial, temporal, right, bottom, events = switches
    x = structured_features(b, t, h, w, d, seed=seed)
    valid = random_valid(b, t, h, w, seed, padded)
    tokens = tr.VisualTokens(x, valid)
    reducer = tr.build("st_simdiff_select", retention=ratio, tau_sim=tau_sim, spatial=spatial,
                       temporal=temporal, right=right, bottom=bottom, events=events,
                       max_community_size=max_size)
    got = reducer(tokens)
    flat_valid = tokens.flat_valid()
    for i in range(b):
        reps, evs = paper_select(x[i].reshape(-1, d), flat_valid[i].tolist(), (t, h, w), ratio=ratio,
                                 tau_sim=tau_sim, spatial=spatial, temporal=temporal, right=right,
                                 bottom=bottom, events=events, max_size=max_size)
        assert kept_sets(got)[i] == reps | evs
        event_role = ((got.roles[i] & int(tr.Role.EVENT)) != 0).nonzero().flatten().tolist()
        assert set(event_role) == evs


@SETTINGS
@given(grid=grids, seed=st.integers(0, 10**6), ratio=st.sampled_from([0.1, 0.3, 0.5, 0.77]),
       padded=st.booleans())
def test_paper_variant_matches_oracle_with_importance(grid, seed, ratio, padded):
    b, t, h, w, d = grid
    x = structured_features(b, t, h, w, d, seed=seed)
    valid = random_valid(b, t, h, w, seed, padded)
    importance = torch.rand(b, t, h, w, generator=torch.Generator().manual_seed(seed))
    tokens = tr.VisualTokens(x, valid, importance)
    reducer = tr.build("st_simdiff", ratio=ratio)
    got = reducer(tokens)
    flat_valid = tokens.flat_valid()
    for i in range(b):
        v = flat_valid[i].tolist()
        reps, evs = paper_select(x[i].reshape(-1, d), v, (t, h, w), ratio=ratio)
        target = max(1, math.ceil(Fraction(repr(ratio)) * sum(v)))
        expected = trim(reps | evs, v, importance[i].flatten().tolist(), target)
        assert kept_sets(got)[i] == expected
    assert got.kept_counts().tolist() == reducer.planned_counts(tokens).tolist()


def test_paper_variant_uses_embeddings_for_the_graph():
    x = structured_features(1, 3, 3, 3, 6, seed=4)
    noise = torch.randn(1, 3, 3, 3, 6, generator=torch.Generator().manual_seed(1))
    importance = torch.rand(1, 3, 3, 3, generator=torch.Generator().manual_seed(2))
    reducer = tr.build("st_simdiff", ratio=0.3)
    with_embeddings = reducer(tr.VisualTokens(noise, importance=importance, signals={"embeddings": x}))
    direct = reducer(tr.VisualTokens(x, importance=importance))
    assert torch.equal(with_embeddings.keep_mask, direct.keep_mask)


def test_fallback_without_importance_keeps_events_first():
    video = object_video()
    got = tr.build("st_simdiff", ratio=0.3)(tr.VisualTokens(video))
    kept = kept_sets(got)[0]
    assert len(kept) == math.ceil(0.3 * 64)
    assert OBJECT_FRAME2 <= kept


# ----- hand-built video -----------------------------------------------------------------------
OBJECT = [(r, c) for r in (1, 2) for c in (1, 2)]
OBJECT_FRAME2 = {2 * 16 + r * 4 + c for r, c in OBJECT}
OBJECT_FRAME3 = {3 * 16 + r * 4 + c for r, c in OBJECT}


def object_video() -> torch.Tensor:
    """4 frames of a uniform 4x4 background; a 2x2 object appears in frame 2 and stays."""
    background = torch.tensor([1.0, 0, 0, 0, 0, 0, 0, 0])
    obj = torch.tensor([0, 1.0, 0, 0, 0, 0, 0, 0])
    x = background.expand(1, 4, 4, 4, 8).clone()
    for f in (2, 3):
        for r, c in OBJECT:
            x[0, f, r, c] = obj
    return x


def test_object_appearing_is_an_event_and_background_collapses():
    got = tr.build("st_simdiff_select", retention=0.3)(tr.VisualTokens(object_video()))
    kept = kept_sets(got)[0]
    events = set(((got.roles[0] & int(tr.Role.EVENT)) != 0).nonzero().flatten().tolist())
    assert events == OBJECT_FRAME2  # changed in frame 2; frame 3 equals frame 2
    background = [n for n in range(64) if n not in OBJECT_FRAME2 | OBJECT_FRAME3]
    # 56 identical background tokens: one community, ceil(0.3*56) = 17 representatives, ties -> lowest
    assert kept & set(background) == set(background[:17])
    # the object's community of 8 keeps ceil(0.3*8) = 3 (lowest indices, all in frame 2) + the events
    assert kept - set(background) == OBJECT_FRAME2


# ----- reference variant ------------------------------------------------------------------------
@SETTINGS
@given(grid=grids, seed=st.integers(0, 10**6), cost=st.sampled_from([0.1, 0.3, 0.5, 0.6, 0.7, 0.9]),
       tau_sim=st.sampled_from([0.5, 0.8]), tau_diff=st.sampled_from([0.2, 0.6]),
       switches=st.tuples(*[st.booleans()] * 4), strategy=st.sampled_from([1, 2, 3]),
       padded=st.booleans(), layers=st.sampled_from([4, 28]))
def test_reference_matches_oracle(grid, seed, cost, tau_sim, tau_diff, switches, strategy, padded, layers):
    b, t, h, w, d = grid
    spatial, temporal, right, bottom = switches
    x = structured_features(b, t, h, w, d, seed=seed)
    valid = random_valid(b, t, h, w, seed, padded)
    importance = torch.rand(b, t, h, w, generator=torch.Generator().manual_seed(seed))
    tokens = tr.VisualTokens(x, valid, importance, num_layers=layers)
    options = {"cost": cost, "tau_sim": tau_sim, "spatial": spatial, "temporal": temporal,
               "right": right, "bottom": bottom}
    stage1 = tr.build("st_simdiff_reference_stage1", tau_diff=tau_diff, score=strategy, **options)
    full = tr.build("st_simdiff", variant="reference", tau_diff=tau_diff, score=strategy, **options)
    flat_valid = tokens.flat_valid()
    first = stage1(tokens)
    try:
        both = full(tokens)
    except ConfigError as error:  # the official formula rejects costs too small for the layers
        assert "too small" in str(error)
        return
    for i in range(b):
        v = flat_valid[i].tolist()
        dropped, sparsity = reference_stage1(x[i].reshape(-1, d), v, (t, h, w), cost=cost,
                                             num_layers=layers, tau_sim=tau_sim, tau_diff=tau_diff,
                                             strategy=strategy, **{k: options[k] for k in
                                                                    ("spatial", "temporal", "right", "bottom")})
        survivors = [ok and n not in dropped for n, ok in enumerate(v)]
        assert kept_sets(first)[i] == {n for n, ok in enumerate(survivors) if ok}
        expected = reference_stage2(survivors, importance[i].flatten().tolist(), sparsity, cost=cost,
                                    num_layers=layers)
        assert kept_sets(both)[i] == expected


def test_reference_steps_are_the_two_stages():
    reducer = tr.build("st_simdiff", variant="reference", cost=0.3)
    first, second = reducer.steps()
    assert first.registered_name == "st_simdiff_reference_stage1" and first.stage is tr.Stage.PRE_LLM
    assert second.registered_name == "st_simdiff_reference_stage2" and second.stage is tr.Stage.IN_LLM
    assert second.layer == 2
    assert reducer.stage is tr.Stage.PRE_LLM
    assert tr.Signal.IMPORTANCE in reducer.requires
    paper = tr.build("st_simdiff", ratio=0.3)
    assert paper.steps() == [paper] and paper.stage is tr.Stage.IN_LLM and paper.layer == 2
    assert paper.requires == frozenset()
    assert {tr.Signal.IMPORTANCE, tr.Signal.EMBEDDINGS} <= paper.optional


def test_reference_static_video_breaks_on_its_only_component():
    """All 27 tokens identical: one component, m = ceil(27 s_max) = 19 > 0.7 * 27 -> nothing is
    dropped, but a ratio is recorded (0.0), which changes stage 2 from formula([]) to formula([0])."""
    x = torch.ones(1, 3, 3, 3, 8)
    importance = torch.arange(27.0).reshape(1, 3, 3, 3)
    tokens = tr.VisualTokens(x, importance=importance, num_layers=28)
    stage1 = tr.build("st_simdiff_reference_stage1", cost=0.3)(tokens)
    assert stage1.kept_counts().tolist() == [27]
    assert stage1.info["recorded"] == [True] and stage1.info["merge_ratio"] == [0.0]
    with_zero = round(27 * (1 - cost_prune_ratio([0.0], 0.3, 28)))
    without = round(27 * (1 - cost_prune_ratio([], 0.3, 28)))
    assert with_zero != without
    full = tr.build("st_simdiff", variant="reference", cost=0.3)(tokens)
    assert full.kept_counts().tolist() == [with_zero]
    assert kept_sets(full)[0] == set(range(27 - with_zero, 27))  # highest importance


def test_reference_no_edges_records_nothing():
    x = torch.eye(8).reshape(1, 2, 2, 2, 8)  # orthogonal tokens: no edge at all
    tokens = tr.VisualTokens(x, importance=torch.rand(1, 2, 2, 2), num_layers=28)
    stage1 = tr.build("st_simdiff_reference_stage1", cost=0.3)(tokens)
    assert stage1.info["recorded"] == [False]
    full = tr.build("st_simdiff", variant="reference", cost=0.3)(tokens)
    assert full.kept_counts().tolist() == [round(8 * (1 - cost_prune_ratio([], 0.3, 28)))]


def test_reference_double_precision_s_max():
    """cost 0.7 with 28 layers: s_max = 1 - 19.6/28 is 0.30000000000000004, so a component of
    10 drops ceil(10 s_max) = 4 tokens, not 3."""
    s_max = cost_prune_ratio([], 0.7, 28)
    assert math.ceil(10 * s_max) == 4
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(1, 1, 2, 10, 16)
    x[0, 0, 0] = torch.eye(16)[0] + 0.01 * torch.randn(10, 16, generator=g)  # one component of 10
    x[0, 0, 1] = torch.eye(16)[1:11] * 5  # orthogonal tokens: no edges
    tokens = tr.VisualTokens(x, num_layers=28)
    stage1 = tr.build("st_simdiff_reference_stage1", cost=0.7)(tokens)
    assert stage1.kept_counts().tolist() == [20 - 4]


def test_reference_events_are_exempt_and_not_replaced():
    """A component of 4 over 2 frames (cost 0.3 -> m = 3); the tokens of frame 1 are events
    (their temporal similarity is below tau_diff, but spatial edges join them)."""
    a = torch.tensor([1.0, 0, 0, 0])
    bvec = torch.tensor([0.0, 1, 0, 0])
    x = torch.stack([torch.stack([a, a]), torch.stack([bvec, bvec])]).reshape(1, 2, 1, 2, 4)
    # frame 0: a a ; frame 1: b b -> two components {0,1} and {2,3}; tokens 2, 3 are events
    tokens = tr.VisualTokens(x, num_layers=28)
    got = tr.build("st_simdiff_reference_stage1", cost=0.3)(tokens)
    # s_max 0.7: component {0,1} m=2 -> (0+2)/4 <= 0.7, dropped; component {2,3} m=2 ->
    # (2+2)/4 > 0.7 -> break. Only 2 and 3 stay.
    assert kept_sets(got)[0] == {2, 3}


def test_reference_tie_rule_in_two_token_components():
    """cost 0.6 -> m = ceil(2 * 0.4) = 1: the higher flat index of the pair is dropped."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 1, 1, 2, 8, generator=g)
    x[0, 0, 0, 1] = x[0, 0, 0, 0] + 0.05 * torch.randn(8, generator=g)
    pad = torch.eye(8)[:3].reshape(1, 1, 1, 3, 8) * 3
    x = torch.cat([x, pad], dim=3)  # 5 tokens in a row; the last three orthogonal to each other
    tokens = tr.VisualTokens(x, num_layers=28)
    got = tr.build("st_simdiff_reference_stage1", cost=0.6)(tokens)
    assert kept_sets(got)[0] == {0, 2, 3, 4}


def test_reference_cost_must_be_below_one():
    with pytest.raises(ConfigError, match="cost"):
        tr.build("st_simdiff", variant="reference", cost=1.0)
    with pytest.raises(ConfigError, match="cost"):
        tr.build("st_simdiff_reference_stage1", cost=1.0)


def test_reference_needs_layer_count():
    tokens = tr.VisualTokens(torch.randn(1, 2, 2, 2, 4), importance=torch.rand(1, 2, 2, 2))
    with pytest.raises(ConfigError, match="num_layers"):
        tr.build("st_simdiff", variant="reference", cost=0.3)(tokens)
    assert tr.build("st_simdiff", variant="reference", cost=0.3, num_layers=28)(tokens).kept_counts()[0] >= 1


def test_reference_needs_importance():
    tokens = tr.VisualTokens(torch.randn(1, 2, 2, 2, 4), num_layers=28)
    with pytest.raises(MissingSignalError):
        tr.build("st_simdiff", variant="reference", cost=0.3)(tokens)


def test_ratio_is_the_cost_for_the_reference_variant():
    x = object_video()
    tokens = tr.VisualTokens(x, importance=torch.rand(x.shape[:4], generator=torch.Generator().manual_seed(0)),
                             num_layers=28)
    a = tr.build("st_simdiff", variant="reference", ratio=0.4)
    b = tr.build("st_simdiff", variant="reference", cost=0.4)
    assert [s.config.ratio for s in a.steps()] == [0.4, 0.4] and [s.config.cost for s in b.steps()] == [0.4, 0.4]
    assert torch.equal(a(tokens).keep_mask, b(tokens).keep_mask)
    # a count is the cost count / N of the video (N = 64 here)
    c = tr.build("st_simdiff", variant="reference", count=16)
    d = tr.build("st_simdiff", variant="reference", cost=0.25)
    assert torch.equal(c(tokens).keep_mask, d(tokens).keep_mask)


def test_reference_variant_refuses_settings_it_cannot_use():
    for setting in ({"community": "leiden"}, {"events": False}, {"event_percentile": 90.0},
                    {"max_community_size": "sqrt"}):
        with pytest.raises(ConfigError, match=f"{next(iter(setting))} cannot take effect with variant='reference'"):
            tr.build("st_simdiff", variant="reference", **setting)
    with pytest.raises(ConfigError, match="score orders the components of variant='reference' only"):
        tr.build("st_simdiff", score=2)
    with pytest.raises(ConfigError, match="tau_diff set with events=False has no effect"):
        tr.build("st_simdiff_select", events=False, tau_diff=0.1)


# ----- budgets, dtypes, configs -----------------------------------------------------------------
@pytest.mark.parametrize("budget", [{"ratio": 0.3}, {"count": 7}, {"cost": 0.5}])
def test_paper_budgets_are_exact(budget):
    x = structured_features(2, 4, 3, 3, 6, seed=9)
    tokens = tr.VisualTokens(x, importance=torch.rand(2, 4, 3, 3), num_layers=28)
    reducer = tr.build("st_simdiff", **budget)
    got = reducer(tokens)
    expected = tr.Budget(**budget, rounding="round" if "cost" in budget else "ceil").keep_counts(
        torch.tensor([36, 36]), num_layers=28)
    assert got.kept_counts().tolist() == expected.tolist()


def test_bf16_input_runs_and_matches_fp32_selection_of_the_same_values():
    x = structured_features(1, 4, 4, 4, 16, seed=5).bfloat16()
    importance = torch.rand(1, 4, 4, 4)
    low = tr.build("st_simdiff", ratio=0.3)(tr.VisualTokens(x, importance=importance))
    high = tr.build("st_simdiff", ratio=0.3)(tr.VisualTokens(x.float(), importance=importance))
    assert torch.equal(low.keep_mask, high.keep_mask)


def test_config_round_trip_and_errors():
    reducer = tr.build({"name": "st_simdiff", "ratio": 0.3, "community": {"name": "leiden", "seed": 3},
                        "max_community_size": "sqrt"})
    again = tr.build(reducer.config.to_dict())
    assert again.config == reducer.config
    with pytest.raises(ConfigError):
        tr.build("st_simdiff", ratio=0.3, cost=0.3)
    with pytest.raises(ConfigError):
        tr.build("st_simdiff", tau_sim=1.5)
    with pytest.raises(ConfigError):
        tr.build("st_simdiff", max_community_size=0)
    with pytest.raises(ConfigTypeError):
        tr.build("st_simdiff", max_community_size="half")
    with pytest.raises(ConfigError, match="needs cost < 1"):
        tr.build("st_simdiff", variant="reference", cost=1.0)


# ----- ablation rows (docs/st-simdiff.md) ----------------------------------------------------
ABLATION_ROWS = {
    "baseline": {"name": "attention_prune", "ratio": 0.3, "layer": 2},
    "sim_spatial": {"name": "pipeline", "steps": [
        {"name": "st_simdiff_select", "retention": 0.3, "temporal": False, "events": False},
        {"name": "attention_prune", "ratio": 0.3, "layer": 2}]},
    "sim_temporal": {"name": "pipeline", "steps": [
        {"name": "st_simdiff_select", "retention": 0.3, "spatial": False, "events": False},
        {"name": "attention_prune", "ratio": 0.3, "layer": 2}]},
    "sim_spatio_temporal": {"name": "pipeline", "steps": [
        {"name": "st_simdiff_select", "retention": 0.3, "events": False},
        {"name": "attention_prune", "ratio": 0.3, "layer": 2}]},
    "diff_full": {"name": "st_simdiff", "ratio": 0.3},
}


@pytest.mark.parametrize("row", sorted(ABLATION_ROWS))
def test_ablation_rows_build_and_run(row):
    reducer = tr.build(ABLATION_ROWS[row])
    x = structured_features(2, 4, 3, 3, 6, seed=11)
    tokens = tr.VisualTokens(x, importance=torch.rand(2, 4, 3, 3), num_layers=28)
    got = reducer(tokens)
    assert got.kept_counts().tolist() == [math.ceil(0.3 * 36)] * 2


def test_sim_rows_without_events_keep_no_event_role():
    pipe = tr.build(ABLATION_ROWS["sim_spatio_temporal"])
    got = pipe(tr.VisualTokens(object_video(), importance=torch.rand(1, 4, 4, 4)))
    assert not bool(((got.roles & int(tr.Role.EVENT)) != 0).any())


def test_docs_example_runs():
    path = Path(__file__).resolve().parent.parent / "docs" / "st-simdiff.md"
    block = re.findall(r"```python\n(.*?)```", path.read_text(), re.DOTALL)[0]
    namespace: dict = {}
    exec(compile(block, "st-simdiff.md", "exec"), namespace)
    assert namespace["red"].kept_counts().tolist()[0] >= 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("config", [{"name": "st_simdiff", "ratio": 0.3},
                                    {"name": "st_simdiff", "variant": "reference", "cost": 0.3},
                                    {"name": "st_simdiff", "ratio": 0.3, "max_community_size": "sqrt",
                                     "event_percentile": 90.0}])
def test_cuda_equals_cpu(config):
    x = structured_features(2, 6, 5, 5, 32, seed=13)
    importance = torch.rand(2, 6, 5, 5, generator=torch.Generator().manual_seed(0))
    reducer = tr.build(config)
    cpu = reducer(tr.VisualTokens(x, importance=importance, num_layers=28))
    gpu = reducer(tr.VisualTokens(x.cuda(), importance=importance.cuda(), num_layers=28))
    assert torch.equal(cpu.keep_mask, gpu.keep_mask.cpu())


@pytest.mark.parametrize("community", ["louvain", "leiden"])
def test_modularity_communities_give_ceil_representatives_per_community(community):
    pytest.importorskip("leidenalg")
    from tokenreduce.graph import SpatioTemporalGraphBuilder

    x = structured_features(1, 4, 4, 4, 8, seed=21)
    tokens = tr.VisualTokens(x)
    graph = SpatioTemporalGraphBuilder().build_graph(tokens)
    labels = tr.build_component("community", community).detect(graph, graph.weight > 0.8)[0].tolist()
    got = tr.build("st_simdiff_select", retention=0.3, events=False, community=community)(tokens)
    kept = kept_sets(got)[0]
    for label in set(labels):
        members = [n for n in range(64) if labels[n] == label]
        assert len(kept & set(members)) == math.ceil(Fraction(3, 10) * len(members))
    full = tr.build("st_simdiff", ratio=0.3, community=community, max_community_size="sqrt")
    assert full(tokens.replace(importance=torch.rand(1, 4, 4, 4))).kept_counts().tolist() == [20]
