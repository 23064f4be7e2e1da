"""Louvain / Leiden on the ST-SimDiff token graph: igraph + leidenalg (the library's backend)
against networkit, on the same thresholded graph, with the modularity each partition reaches.

    python benchmarks/compare_graph_libraries.py [--frames 64] [--side 13] [--dim 3584] [--repeats 5]

Needs `pip install 'tokenreduce[graph]' networkit`. Prints the best wall time of each library call
(graph construction included) and the partition's modularity (igraph's formula, same weights).
"""

from __future__ import annotations

import argparse
import time

import torch

import tokenreduce as tr


def best_of(repeats: int, run):
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--side", type=int, default=13)
    parser.add_argument("--dim", type=int, default=3584)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tau-sim", type=float, default=0.8)
    args = parser.parse_args()

    import igraph
    import leidenalg
    import networkit as nk

    torch.manual_seed(0)  # a mostly static scene of 4x4-token regions, with per-token noise
    rows = torch.arange(args.side) // 4
    region = (rows[:, None] * (args.side // 4 + 1) + rows[None, :]).reshape(-1)
    prototypes = torch.randn(int(region.max()) + 1, args.dim)
    scene = prototypes[region].reshape(1, 1, args.side, args.side, args.dim)
    features = scene + 0.35 * torch.randn(1, args.frames, args.side, args.side, args.dim)
    tokens = tr.VisualTokens(features)
    graph = tr.build_component("graph", "spatio_temporal").build_graph(tokens)
    keep = graph.weight > args.tau_sim
    src, dst, weight = graph.src[keep].tolist(), graph.dst[keep].tolist(), graph.weight[keep].double()
    n = graph.num_nodes
    print(f"graph: {n} nodes, {len(src)} edges above tau_sim={args.tau_sim}")

    def igraph_louvain():
        g = igraph.Graph(n=n, edges=list(zip(src, dst)))
        return g.community_multilevel(weights=weight.tolist()).membership

    def leidenalg_leiden():
        g = igraph.Graph(n=n, edges=list(zip(src, dst)))
        part = leidenalg.find_partition(g, leidenalg.ModularityVertexPartition, weights=weight.tolist(), seed=0)
        return part.membership

    def networkit_graph():
        g = nk.Graph(n, weighted=True)
        for a, b, w in zip(src, dst, weight.tolist()):
            g.addEdge(a, b, w)
        return g

    def networkit_plm():
        return networkit_graph_detect(nk.community.PLM)

    def networkit_leiden():
        return networkit_graph_detect(nk.community.ParallelLeiden)

    def networkit_graph_detect(algorithm):
        g = networkit_graph()
        detector = algorithm(g)
        detector.run()
        return detector.getPartition().getVector()

    nk.setNumberOfThreads(torch.get_num_threads())
    rows = [("igraph community_multilevel (Louvain)", igraph_louvain),
            ("leidenalg find_partition (Leiden)", leidenalg_leiden),
            ("networkit PLM (Louvain)", networkit_plm),
            ("networkit ParallelLeiden", networkit_leiden)]
    scorer = igraph.Graph(n=n, edges=list(zip(src, dst)))  # one modularity for every backend
    print(f"{'backend':40} {'best ms':>8} {'communities':>12} {'modularity':>11}")
    for name, run in rows:
        seconds, membership = best_of(args.repeats, run)
        membership = [int(m) for m in membership]
        q = scorer.modularity(membership, weights=weight.tolist())
        print(f"{name:40} {seconds * 1000:8.1f} {len(set(membership)):12d} {q:11.4f}")


if __name__ == "__main__":
    main()
