"""Community detectors: connected components against union-find, Louvain/Leiden against a
modularity computed here, the size cap against a loop, and the optional GPU backends."""

from __future__ import annotations

import builtins
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from simdiff_oracles import UnionFind

import tokenreduce as tr
from tokenreduce.errors import MissingDependencyError
from tokenreduce.graph import SpatioTemporalGraphBuilder, TokenGraph, component_roots
from tokenreduce.graph.segments import canonical_labels, split_oversized, sqrt_sizes

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
has_cuda = torch.cuda.is_available()


def make_graph(n: int, edges: list[tuple[int, int]], weights: list[float] | None = None, b: int = 1) -> TokenGraph:
    """A hand-made TokenGraph of ``b`` samples with ``n`` nodes each (edges given as flat ids)."""
    src = torch.tensor([min(e) for e in edges], dtype=torch.long)
    dst = torch.tensor([max(e) for e in edges], dtype=torch.long)
    weight = torch.tensor(weights if weights is not None else [1.0] * len(edges), dtype=torch.float32)
    return TokenGraph(src=src, dst=dst, weight=weight, kind=torch.zeros_like(src),
                      features=torch.ones(b * n, 1), inverse_norm=torch.ones(b * n), batch_size=b,
                      num_nodes=n, grid=(1, 1, n))


@SETTINGS
@given(n=st.integers(1, 40), data=st.data())
def test_connected_components_match_union_find(n, data):
    pairs = data.draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=3 * n))
    pairs = [(a, b) for a, b in pairs if a != b]
    roots = component_roots(n, torch.tensor([p[0] for p in pairs], dtype=torch.long),
                            torch.tensor([p[1] for p in pairs], dtype=torch.long))
    uf = UnionFind(range(n))
    for a, b in pairs:
        uf.union(a, b)
    assert roots.tolist() == [uf.find(v) for v in range(n)]  # both name a component by its minimum


def test_connected_components_long_path_converges():
    n = 5000
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    roots = component_roots(n, order[:-1], order[1:])
    assert bool((roots == 0).all())


def test_detector_respects_edge_mask_and_batches():
    graph = make_graph(4, [(0, 1), (2, 3), (4, 5), (6, 7)], b=2)
    labels = tr.build_component("community", "connected_components").detect(
        graph, torch.tensor([True, False, True, True]))
    assert labels.tolist() == [[0, 0, 2, 3], [0, 0, 2, 2]]


@pytest.mark.skipif(not has_cuda, reason="needs a CUDA device")
def test_connected_components_on_cuda_equal_cpu():
    g = torch.Generator().manual_seed(0)
    src = torch.randint(0, 300, (400,), generator=g)
    dst = torch.randint(0, 300, (400,), generator=g)
    assert torch.equal(component_roots(300, src.cuda(), dst.cuda()).cpu(), component_roots(300, src, dst))


# ----- modularity -----------------------------------------------------------------------------
def modularity(n: int, edges, weights, labels, resolution: float = 1.0) -> float:
    """Newman's weighted modularity, by definition (loops over node pairs)."""
    adjacency = [[0.0] * n for _ in range(n)]
    for (a, b), w in zip(edges, weights):
        adjacency[a][b] += w
        adjacency[b][a] += w
    degree = [sum(row) for row in adjacency]
    two_m = sum(degree)
    return sum(adjacency[i][j] - resolution * degree[i] * degree[j] / two_m
               for i in range(n) for j in range(n) if labels[i] == labels[j]) / two_m


def planted_graph(seed: int):
    """Three 6-cliques (strong weights) joined in a ring by single weak edges."""
    g = torch.Generator().manual_seed(seed)
    edges, weights = [], []
    for block in range(3):
        members = range(block * 6, block * 6 + 6)
        for a in members:
            for b in members:
                if a < b:
                    edges.append((a, b))
                    weights.append(0.9 + 0.1 * float(torch.rand(1, generator=g)))
    for block in range(3):
        edges.append((block * 6, ((block + 1) % 3) * 6 + 3))
        weights.append(0.1)
    return 18, edges, weights


@pytest.mark.parametrize("name", ["louvain", "leiden"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_modularity_detectors_find_planted_communities(name, seed):
    pytest.importorskip("igraph")
    pytest.importorskip("leidenalg")
    n, edges, weights = planted_graph(seed)
    detector = tr.build_component("community", {"name": name, "seed": seed})
    labels = detector.detect(make_graph(n, edges, weights))[0].tolist()
    assert labels == [0] * 6 + [6] * 6 + [12] * 6
    q = modularity(n, edges, weights, labels)
    import igraph
    g = igraph.Graph(n=n, edges=edges)
    assert q == pytest.approx(g.modularity(labels, weights=weights), abs=1e-9)
    assert q > modularity(n, edges, weights, list(range(n)))
    assert q > modularity(n, edges, weights, [0] * n)


@pytest.mark.parametrize("name", ["louvain", "leiden"])
def test_modularity_detectors_on_token_graphs(name):
    pytest.importorskip("leidenalg")
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 4, 4, 6, generator=g).abs()
    tokens = tr.VisualTokens(x)
    graph = SpatioTemporalGraphBuilder().build_graph(tokens)
    mask = graph.weight > 0.5
    detector = tr.build_component("community", {"name": name, "seed": 1})
    labels = detector.detect(graph, mask)
    assert torch.equal(labels, detector.detect(graph, mask))  # seeded: deterministic
    n = graph.num_nodes
    for b in range(2):
        keep = mask & (graph.edge_sample() == b)
        edges = list(zip((graph.src[keep] % n).tolist(), (graph.dst[keep] % n).tolist()))
        weights = graph.weight[keep].tolist()
        found = labels[b].tolist()
        q = modularity(n, edges, weights, found)
        assert q >= modularity(n, edges, weights, list(range(n))) - 1e-9
        # every label names its smallest member; a sample alone gives the same partition
        assert all(found[v] <= v and found[found[v]] == found[v] for v in range(n))
        single = detector.detect(SpatioTemporalGraphBuilder().build_graph(tokens.sample(b)),
                                 (graph.weight > 0.5)[graph.edge_sample() == b])
        assert single[0].tolist() == found


def test_concurrent_louvain_calls_each_get_their_own_seeds_partition(monkeypatch):
    # igraph's random generator is process-global: another thread must not reseed it between a
    # call's seeding and its run. Reseeding yields the GIL (sleep), as a thread switch would.
    igraph = pytest.importorskip("igraph")
    g = torch.Generator().manual_seed(0)
    graph = SpatioTemporalGraphBuilder().build_graph(tr.VisualTokens(torch.randn(1, 6, 8, 8, 4, generator=g)))
    mask = graph.weight > 0
    detectors = [tr.build_component("community", {"name": "louvain", "seed": s}) for s in range(12)]
    alone = [d.detect(graph, mask) for d in detectors]
    assert len({tuple(p.flatten().tolist()) for p in alone}) >= 3  # seeds matter on this graph
    seed_rng = igraph.set_random_number_generator

    def reseed_then_yield(generator):
        seed_rng(generator)
        time.sleep(0.001)

    monkeypatch.setattr(igraph, "set_random_number_generator", reseed_then_yield)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        with ThreadPoolExecutor(max_workers=len(detectors)) as pool:
            runs = [pool.submit(lambda i=i: [detectors[i].detect(graph, mask) for _ in range(4)])
                    for i in range(len(detectors))]
            results = [run.result(timeout=120) for run in runs]
    finally:
        sys.setswitchinterval(interval)
    wrong = [i for i, partitions in enumerate(results) if any(not torch.equal(p, alone[i]) for p in partitions)]
    assert not wrong, f"seeds {wrong} got another seed's partition"


def test_modularity_rejects_negative_weights():
    pytest.importorskip("leidenalg")
    with pytest.raises(ValueError, match="non-negative"):
        tr.build_component("community", "leiden").detect(make_graph(2, [(0, 1)], [-0.5]))


def test_missing_graph_library_names_the_extra(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name in ("igraph", "leidenalg"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(MissingDependencyError, match=r"tokenreduce\[graph\]"):
        tr.build_component("community", "louvain").detect(make_graph(2, [(0, 1)]))


def test_cugraph_backend_without_cugraph_names_the_extra():
    try:
        import cugraph  # noqa: F401
        pytest.skip("cuGraph is installed")
    except ImportError:
        pass
    with pytest.raises(MissingDependencyError, match=r"tokenreduce\[cugraph\]"):
        tr.build_component("community", {"name": "leiden", "backend": "cugraph"}).detect(
            make_graph(2, [(0, 1)]))


@pytest.mark.skipif(not has_cuda, reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["louvain", "leiden"])
def test_cugraph_finds_planted_communities(name):
    pytest.importorskip("cugraph")
    n, edges, weights = planted_graph(0)
    graph = make_graph(n, edges, weights)
    graph = TokenGraph(**{f: (getattr(graph, f).cuda() if isinstance(getattr(graph, f), torch.Tensor)
                              else getattr(graph, f)) for f in graph.__dataclass_fields__})
    labels = tr.build_component("community", name).detect(graph)[0].cpu().tolist()
    assert labels == [0] * 6 + [6] * 6 + [12] * 6


# ----- size cap ---------------------------------------------------------------------------------
@SETTINGS
@given(n=st.integers(1, 30), limit=st.integers(1, 8), data=st.data())
def test_split_oversized_matches_loop(n, limit, data):
    raw = data.draw(st.lists(st.integers(0, 4), min_size=n, max_size=n))
    valid_list = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    valid_list[0] = True
    valid = torch.tensor([valid_list])
    labels = canonical_labels(torch.tensor([raw]), valid)
    got = split_oversized(labels, valid, torch.tensor([limit]))[0].tolist()
    groups: dict[int, list[int]] = {}
    for v in range(n):
        if valid_list[v]:
            groups.setdefault(raw[v], []).append(v)
    expected = list(range(n))
    for members in groups.values():
        k = math.ceil(len(members) / limit)
        pieces: dict[int, list[int]] = {}
        for r, v in enumerate(members):
            pieces.setdefault(r * k // len(members), []).append(v)
        for piece in pieces.values():
            assert len(piece) <= limit
            for v in piece:
                expected[v] = piece[0]
    assert got == expected


def test_sqrt_rule():
    assert sqrt_sizes(torch.tensor([1, 15, 16, 10816])).tolist() == [1, 3, 4, 104]
