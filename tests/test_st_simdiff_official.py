"""``st_simdiff`` with ``variant="reference"`` against the second, tensor-literal oracle of the
official code (tests/simdiff_official.py), including inputs with exact ties."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from simdiff_official import official_pruning_ratio, official_run
from simdiff_oracles import structured_features

import tokenreduce as tr
from tokenreduce.budget import cost_prune_ratio

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
COSTS = [0.2, 0.3, 0.5, 0.6, 0.7, 0.9]


def tied_video(t: int, h: int, w: int, d: int, seed: int) -> torch.Tensor:
    """Frames that repeat one noisy pattern every other frame (identical components, so equal
    component scores), with exact duplicate tokens inside regions (equal member weights); the
    frames in between are fresh noise (events, no temporal edges to the pattern)."""
    g = torch.Generator().manual_seed(seed)
    pattern = structured_features(1, 1, h, w, d, seed=seed, noise=0.2)[0, 0]
    copy = torch.rand(h, w, generator=g) < 0.4
    shifted = torch.cat([pattern[:, :1], pattern[:, :-1]], dim=1)
    pattern = torch.where(copy.unsqueeze(-1), shifted, pattern)  # duplicates of the left neighbour
    frames = [pattern if f % 2 == 0 else torch.randn(h, w, d, generator=g) for f in range(t)]
    return torch.stack(frames)


def kept(reduction) -> set[int]:
    return set(reduction.keep_indices(0).tolist())


def run_ours(x, importance, *, strategy, **options):
    options["score"] = strategy
    tokens = tr.VisualTokens(x[None], importance=importance[None], num_layers=28)
    stage1 = tr.build("st_simdiff_reference_stage1", **options)(tokens)
    full = tr.build("st_simdiff", variant="reference", **options)(tokens)
    return stage1, full


def rounding_decides_order(x: torch.Tensor, components: list[list[int]], strategy: int) -> bool:
    """Whether two quantities are equal in exact arithmetic without being bit-identical inputs:
    two members of a component (of 3 or more) with equal weights that are not identical tokens
    (e.g. tokens a, a, b, b), or two components with equal scores that are not copies of each
    other (e.g. two uniform regions of different colours). Upstream's order between them comes
    from floating-point rounding in its BLAS alone, so no implementation can promise it."""
    flat = x.reshape(-1, x.shape[-1]).double()
    signatures, scores = [], []
    for members in components:
        normed = torch.nn.functional.normalize(flat[members], dim=1)
        cos = normed @ normed.T
        weight = cos.mean(-1)
        n = len(members)
        for i in range(n if n > 2 else 0):
            for j in range(i + 1, n):
                same = torch.equal(flat[members[i]], flat[members[j]])
                if not same and abs(float(weight[i] - weight[j])) < 1e-9:
                    return True
        total = float(cos.sum())
        scores.append(total / 2 / (n - 1) if strategy == 2 else (total - n) / (n - 1) / n)
        signatures.append(flat[members])
    for a in range(len(components)):
        for b in range(a + 1, len(components)):
            copies = signatures[a].shape == signatures[b].shape and torch.equal(signatures[a], signatures[b])
            if not copies and abs(scores[a] - scores[b]) < 1e-9:
                return True
    return False


def check_against_official(x, importance, *, in_property_test=True, exact_inputs=False, **options):
    """Our kept sets after stage 1 and stage 2 equal the official ones; inputs whose order only
    rounding decides are rejected (property tests) or must not be given (plain tests), unless
    every cosine is exact (``exact_inputs``: equal values are then bit-equal everywhere)."""
    found: dict = {}
    try:
        first, second, sparsity = official_run(x, importance, found=found, **options)
    except ValueError as error:  # "The cost is too small" upstream
        assert "too small" in str(error)
        with pytest.raises(tr.ConfigError, match="too small"):
            run_ours(x, importance, **options)
        return
    decidable = exact_inputs or not rounding_decides_order(x, found.get("components", []), options["strategy"])
    if in_property_test:
        assume(decidable)
    assert decidable
    stage1, full = run_ours(x, importance, **options)
    assert kept(stage1) == first
    assert stage1.info["merge_ratio"][0] == (sparsity[0] if sparsity else 0.0)
    assert stage1.info["recorded"] == [bool(sparsity)]
    if not second:  # upstream's round() may keep no visual token; tokenreduce keeps the best one
        flat = importance.reshape(-1).tolist()
        second = {min(first, key=lambda i: (-flat[i], i))}
    assert kept(full) == second


@SETTINGS
@given(shape=st.tuples(st.integers(2, 5), st.integers(1, 4), st.integers(1, 4), st.integers(3, 8)),
       seed=st.integers(0, 10**6), cost=st.sampled_from(COSTS), tau_sim=st.sampled_from([0.0, 0.5, 0.8]),
       tau_diff=st.sampled_from([0.2, 0.6]), switches=st.tuples(*[st.booleans()] * 4),
       strategy=st.sampled_from([2, 3]))
def test_reference_equals_official_code_on_random_videos(shape, seed, cost, tau_sim, tau_diff, switches,
                                                         strategy):
    t, h, w, d = shape
    spatial, temporal, right, bottom = switches
    x = structured_features(1, t, h, w, d, seed=seed)[0]
    importance = torch.rand(t, h, w, generator=torch.Generator().manual_seed(seed))
    check_against_official(x, importance, cost=cost, tau_sim=tau_sim, tau_diff=tau_diff, strategy=strategy,
                           spatial=spatial, temporal=temporal, right=right, bottom=bottom)


@SETTINGS
@given(shape=st.tuples(st.integers(3, 6), st.integers(2, 4), st.integers(2, 5), st.integers(4, 8)),
       seed=st.integers(0, 10**6), cost=st.sampled_from(COSTS), strategy=st.sampled_from([2, 3]),
       tau_sim=st.sampled_from([0.5, 0.8]))
def test_reference_equals_official_code_with_exact_ties(shape, seed, cost, strategy, tau_sim):
    t, h, w, d = shape
    x = tied_video(t, h, w, d, seed)
    g = torch.Generator().manual_seed(seed + 1)
    importance = torch.randint(0, 3, (t, h, w), generator=g).float()  # many equal attentions
    check_against_official(x, importance, cost=cost, strategy=strategy, tau_sim=tau_sim)


def test_tied_video_really_has_tied_components_and_members():
    """The tie generator is only useful if the official scores and weights really tie."""
    import torch.nn.functional as F

    x = tied_video(3, 3, 4, 6, seed=5).reshape(-1, 6)
    assert torch.equal(x[:12], x[24:])  # frames 0 and 2: identical components, equal scores
    duplicates = [(i, i + 1) for i in range(35) if (i + 1) % 4 and torch.equal(x[i], x[i + 1])]
    assert duplicates  # identical neighbours: equal rows of the cosine matrix
    normed = F.normalize(x[:12], dim=1)
    weight = (normed @ normed.T).mean(-1)
    assert all(weight[i] == weight[j] for i, j in duplicates if j < 12)


@pytest.mark.parametrize("cost", [0.05, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99])
@pytest.mark.parametrize("sparsity", [[], [0.0], [0.25], [0.7], [2 / 3]])
def test_cost_formula_equals_official(cost, sparsity):
    try:
        expected = official_pruning_ratio(sparsity, cost)
    except ValueError:
        with pytest.raises(tr.ConfigError):
            cost_prune_ratio(sparsity, cost, 28)
        return
    assert cost_prune_ratio(sparsity, cost, 28) == expected


def test_reference_rejects_negative_tau_sim():
    """Upstream pads the similarity of the last column / row with 0, so a negative tau_sim joins
    (h, W-1) to (h+1, 0) and the last row to the next frame (or to the text after the video):
    edges the grid does not have. The reference variant refuses such thresholds."""
    x = torch.eye(8)[:8].reshape(2, 2, 2, 8)  # orthogonal tokens: every cosine is 0
    found: dict = {}
    official_run(x, torch.rand(2, 2, 2), cost=0.3, tau_sim=-0.5, spatial=True, temporal=False,
                 right=False, bottom=False, found=found)
    assert any(1 in c and 2 in c for c in found["components"])  # (0, 1) -> (1, 0): a wrapped edge
    with pytest.raises(tr.ConfigError, match="tau_sim"):
        tr.build("st_simdiff", variant="reference", cost=0.3, tau_sim=-0.5)
    with pytest.raises(tr.ConfigError, match="tau_sim"):
        tr.build("st_simdiff_reference_stage1", cost=0.3, tau_sim=-0.5)
    with pytest.raises(tr.ConfigError, match="tau_sim"):
        tr.build("st_simdiff_reference_stage2", cost=0.3, tau_sim=-0.5)
    tr.build("st_simdiff", tau_sim=-0.5)  # the paper variant has no such padding


@pytest.mark.parametrize("cost", [0.3, 0.6])
def test_reference_equals_official_code_with_zero_vectors(cost):
    """Zero tokens: NaN temporal cosine upstream (no edge, no event), 0 spatial cosine."""
    x = structured_features(1, 4, 3, 4, 6, seed=17)[0]
    x[1, 0, :2] = 0  # a zero token after a normal one, and two zero neighbours
    x[2, 0, 0] = 0  # zero in two consecutive frames
    x[3, 2, 3] = 0
    importance = torch.rand(4, 3, 4, generator=torch.Generator().manual_seed(3))
    check_against_official(x, importance, cost=cost, strategy=3, in_property_test=False)


@pytest.mark.parametrize("seed", [0, 1])
def test_reference_equals_official_code_on_a_larger_video(seed):
    """Components of more than 32 members (beyond the sizes where upstream's sort may reorder)."""
    x = tied_video(8, 6, 7, 16, seed)
    x[1::2] = x[0::2] + 0.05 * torch.randn(4, 6, 7, 16, generator=torch.Generator().manual_seed(seed))
    importance = torch.rand(8, 6, 7, generator=torch.Generator().manual_seed(seed))
    found: dict = {}
    official_run(x, importance, cost=0.3, found=found)
    assert max(len(c) for c in found["components"]) > 32
    check_against_official(x, importance, cost=0.3, strategy=3, in_property_test=False)


@pytest.mark.parametrize("tau_diff", [0.0, 0.2])
def test_reference_equals_official_code_at_exact_thresholds(tau_diff):
    """One-hot tokens have cosines of exactly 0 or 1: at tau_sim = 0 a temporal cosine of 0 is an
    edge (>=) but a spatial one is not (>); at tau_diff = 0 it is no event (<). Uniform components
    of different one-hot colours score exactly the same, so the component tie rule decides."""
    g = torch.Generator().manual_seed(8)
    x = torch.eye(4)[torch.randint(0, 4, (4, 3, 3), generator=g)]
    importance = torch.rand(4, 3, 3, generator=g)
    for tau_sim in (0.0, 1.0):
        check_against_official(x, importance, cost=0.3, strategy=3, tau_sim=tau_sim, tau_diff=tau_diff,
                               in_property_test=False, exact_inputs=True)


@pytest.mark.parametrize("block_rows", [7, 128])
def test_reference_equals_official_code_on_large_static_components(monkeypatch, block_rows):
    """The selection's fast kernels (row blocks, community sums, sampled dots) on components of
    hundreds of members that span many row blocks, with duplicate tokens (equal weights) and a
    scene cut; the static regions repeat exactly from frame to frame."""
    from tokenreduce.graph import blocked

    monkeypatch.setattr(blocked, "BLOCK_ROWS", block_rows)
    g = torch.Generator().manual_seed(block_rows)
    t, h, w, d = 12, 5, 6, 8
    palette = torch.randn(4, d, generator=g)
    layout = torch.zeros(2, h, w, dtype=torch.long)
    layout[0, :, 3:] = 1
    layout[1, 2:] = 2 + (torch.arange(w) >= 2).long()
    scenes = palette[layout] + 0.05 * torch.randn(2, h, w, d, generator=g)  # distinct tokens in a frame
    x = scenes[(torch.arange(t) >= t // 2).long()].clone()  # static: frames repeat their scene exactly; a cut at 6
    x[3, 1:3, 1:4] = torch.randn(2, 3, d, generator=g)  # a change (events)
    importance = torch.rand(t, h, w, generator=g)
    found: dict = {}
    official_run(x, importance, cost=0.3, found=found)
    assert max(len(c) for c in found["components"]) > 100
    check_against_official(x, importance, cost=0.3, strategy=3, in_property_test=False)
