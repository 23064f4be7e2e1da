"""The spatio-temporal token graph against an all-pairs, loop-based construction."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from simdiff_oracles import cosine, grid_pairs

import tokenreduce as tr
from tokenreduce.graph import EdgeKind, SpatioTemporalGraphBuilder, blocked

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def edge_dict(graph):
    out = {}
    for s, d, w, k in zip(graph.src.tolist(), graph.dst.tolist(), graph.weight.tolist(), graph.kind.tolist()):
        out[s, d] = (w, k)
    return out


@SETTINGS
@given(shape=st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 4), st.integers(1, 4),
                       st.integers(1, 6)),
       seed=st.integers(0, 10**6), switches=st.tuples(*[st.booleans()] * 4), padded=st.booleans())
def test_edges_and_weights_match_loops(shape, seed, switches, padded):
    b, t, h, w, d = shape
    spatial, temporal, right, bottom = switches
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, h, w, d, generator=g)
    valid = (torch.rand(b, t, h, w, generator=g) < 0.7) if padded else torch.ones(b, t, h, w, dtype=torch.bool)
    valid.view(b, -1)[:, 0] = True
    graph = SpatioTemporalGraphBuilder(spatial=spatial, temporal=temporal, right=right, bottom=bottom
                                       ).build_graph(tr.VisualTokens(x, valid))
    assert graph.weight.dtype == torch.float32
    n = t * h * w
    expected = {}
    for i in range(b):
        flat, ok = x[i].reshape(n, d), valid[i].reshape(n)
        for a, c, kind, direction in grid_pairs(t, h, w):
            wanted = temporal if kind == "temporal" else spatial and (right if direction == "right" else bottom)
            if wanted and ok[a] and ok[c]:
                expected[i * n + a, i * n + c] = (cosine(flat[a], flat[c]),
                                                  int(EdgeKind.TEMPORAL if kind == "temporal" else EdgeKind.SPATIAL))
    got = edge_dict(graph)
    assert set(got) == set(expected)
    for key, (weight, kind) in expected.items():
        assert got[key][1] == kind
        assert got[key][0] == pytest.approx(weight, abs=1e-5)
    assert bool((graph.src < graph.dst).all())


def test_zero_vectors_have_similarity_zero_and_are_flagged():
    x = torch.randn(1, 2, 1, 2, 4)
    x[0, 1, 0, 0] = 0
    graph = SpatioTemporalGraphBuilder().build_graph(tr.VisualTokens(x))
    edges = edge_dict(graph)
    assert edges[0, 2][0] == 0.0 and edges[2, 3][0] == 0.0
    assert not bool(torch.isnan(graph.weight).any())
    flagged = {(s, d) for s, d, f in zip(graph.src.tolist(), graph.dst.tolist(), graph.degenerate.tolist()) if f}
    assert flagged == {(0, 2), (2, 3)}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_input_accumulates_in_fp32(dtype):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(1, 2, 2, 2, 4096, generator=g) * 3).to(dtype)
    graph = SpatioTemporalGraphBuilder().build_graph(tr.VisualTokens(x))
    exact = SpatioTemporalGraphBuilder().build_graph(tr.VisualTokens(x.double()))
    assert graph.weight.dtype == torch.float32
    torch.testing.assert_close(graph.weight, exact.weight.float(), atol=1e-5, rtol=0)
    # accumulating in the input dtype would be far off
    low = torch.nn.functional.cosine_similarity(x[0, 0, 0, 0], x[0, 0, 0, 1], dim=0)
    assert low.dtype == dtype


def test_blocked_kernels_across_block_boundaries(monkeypatch):
    monkeypatch.setattr(blocked, "BLOCK_ROWS", 7)
    g = torch.Generator().manual_seed(1)
    flat = torch.randn(50, 5, generator=g)
    flat[13] = 0
    inverse, dots = blocked.norms_and_shifted_dots(flat, [1, 6, 49, 60])
    for k in (1, 6, 49):
        torch.testing.assert_close(dots[k], (flat[:-k] * flat[k:]).sum(1))
    assert dots[60].numel() == 0
    assert inverse[13] == 0
    torch.testing.assert_close(inverse[:13], 1 / flat[:13].norm(dim=1))
    segment = torch.randint(0, 4, (50,), generator=g)
    segment[7:21] = 3  # two whole blocks without members
    rows = (segment < 3).nonzero().flatten()  # 3 = in no segment
    normalised = flat * inverse[:, None]
    for dtype in (torch.float32, torch.bfloat16, torch.float64):  # one sampled product or blocks
        features = flat.to(dtype)
        sums = blocked.segment_sums(features, inverse, rows, segment[rows], 3)
        assert sums.shape == (3, 5) and sums.dtype == torch.float32
        tolerance = {"atol": 0.05, "rtol": 0.02} if dtype == torch.bfloat16 else {}
        for s in range(3):
            torch.testing.assert_close(sums[s], normalised[segment == s].sum(0), **tolerance)
        dots_s = blocked.dots_with_segment_sums(features, inverse, rows, segment[rows], sums)
        assert dots_s.shape == rows.shape and dots_s.dtype == torch.float32
        torch.testing.assert_close(dots_s, (normalised[rows] * sums[segment[rows]]).sum(1), **tolerance)
    assert blocked.segment_sums(flat, inverse, rows[:0], segment[:0], 2).tolist() == [[0.0] * 5] * 2
    assert blocked.dots_with_segment_sums(flat, inverse, rows[:0], segment[:0], sums).numel() == 0


def test_graph_of_degenerate_grids_has_no_edges():
    graph = SpatioTemporalGraphBuilder().build_graph(tr.VisualTokens(torch.randn(2, 1, 1, 1, 3)))
    assert graph.num_edges == 0 and graph.total_nodes == 2


def test_edge_kinds_are_switched_off():
    builder = SpatioTemporalGraphBuilder(temporal=False)
    graph = builder.build_graph(tr.VisualTokens(torch.randn(1, 3, 2, 2, 4)))
    assert not bool(graph.of_kind(EdgeKind.TEMPORAL).any())


def test_identical_tokens_get_bit_identical_dots_in_any_block(monkeypatch):
    """Ties between identical tokens survive the fast kernels: a row's dot products do not depend
    on where it sits in a block or in the pattern of the sampled product."""
    monkeypatch.setattr(blocked, "BLOCK_ROWS", 5)
    g = torch.Generator().manual_seed(3)
    flat = torch.randn(40, 37, generator=g)
    copies = [0, 6, 13, 22, 39]  # in different blocks, at different offsets
    flat[copies] = flat[0].clone()
    flat[[1, 7, 14, 23]] = flat[1].clone()  # their right neighbours too: equal shifted dots
    inverse, dots = blocked.norms_and_shifted_dots(flat, [1, 5])
    assert len(set(inverse[copies].tolist())) == 1
    assert len(set(dots[1][[0, 6, 13, 22]].tolist())) == 1
    segment = torch.zeros(40, dtype=torch.long)
    segment[20:] = 1
    rows = torch.arange(40)
    sums = blocked.segment_sums(flat, inverse, rows, segment, 2)
    similarity = blocked.dots_with_segment_sums(flat, inverse, rows, segment, sums)
    assert len(set(similarity[[0, 6, 13]].tolist())) == 1 and len(set(similarity[[22, 39]].tolist())) == 1
