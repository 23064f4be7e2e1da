"""Connected components in pure torch (any device): min-label hooking with pointer jumping.

Every node starts as its own root. One round hooks, for every edge whose endpoints have
different roots, the larger root under the smaller one (``scatter_reduce`` with ``amin``), then
jumps pointers (``parent = parent[parent]``) until every node points at a root. Roots only ever
decrease, so there are no cycles; each round at least halves the number of trees in every
component that is not finished, so there are O(log N) rounds, each O(N + E) tensor work. The
final root of a component is its smallest node id.
"""

from __future__ import annotations

import dataclasses

import torch

from tokenreduce.config import Config
from tokenreduce.graph.community import CommunityDetector
from tokenreduce.graph.token_graph import TokenGraph
from tokenreduce.registry import register_community


def component_roots(num_nodes: int, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Long ``[num_nodes]``: the smallest node id of each node's connected component."""
    parent = torch.arange(num_nodes, device=src.device)
    if src.numel() == 0:
        return parent
    while True:
        root_src, root_dst = parent[src], parent[dst]
        crossing = root_src != root_dst
        if not bool(crossing.any()):
            return parent
        low = torch.minimum(root_src, root_dst)[crossing]
        high = torch.maximum(root_src, root_dst)[crossing]
        parent.scatter_reduce_(0, high, low, reduce="amin")
        while True:
            jumped = parent[parent]
            if torch.equal(jumped, parent):
                break
            parent = jumped


def labels_per_sample(graph: TokenGraph, roots: torch.Tensor) -> torch.Tensor:
    """``[B, N]`` labels from flat roots: the sample-local index of the community's smallest node."""
    return (roots % graph.num_nodes).reshape(graph.batch_size, graph.num_nodes)


@register_community("connected_components")
class ConnectedComponents(CommunityDetector):
    """Communities = connected components of the kept edges (what the official code uses)."""

    @dataclasses.dataclass
    class Config(Config):
        pass

    def detect(self, graph: TokenGraph, edge_mask: torch.Tensor | None = None) -> torch.Tensor:
        src, dst = graph.src, graph.dst
        if edge_mask is not None:
            src, dst = src[edge_mask], dst[edge_mask]
        return labels_per_sample(graph, component_roots(graph.total_nodes, src, dst))
