"""Centrality (paper eq. 4) and the official code's component scores, in O(|c|·d) per community.

With ``x̂`` the L2-normalised features and ``S_c = Σ_{j∈c} x̂_j`` the sum over a community,
``Σ_{j∈c} cos(i, j) = x̂_i · S_c`` and ``Σ_{i,j∈c} cos(i, j) = ||S_c||²``: every quantity below
comes from one ``index_add_`` of the normalised features and one dot product per token, never
from an all-pairs matrix. Sums and dots are fp32.

Exact ties: in a community of two, both members' centrality is mathematically the similarity of
the pair, but ``x̂_1·S`` and ``x̂_2·S`` differ in the last bits; both get their mean, so the
selection's tie rule (lower flat index first) decides, not rounding.
"""

from __future__ import annotations

import dataclasses

import torch

from tokenreduce.graph.blocked import dots_with_segment_sums, segment_sums
from tokenreduce.graph.segments import community_sizes, global_labels
from tokenreduce.graph.token_graph import TokenGraph


@dataclasses.dataclass(frozen=True)
class CommunitySums:
    """Per-community sums of normalised features, for the communities with two or more members.

    ``rows``: flat node ids of those members (ascending); ``segment``: their community's index
    in ``0..S-1``; ``sums`` fp32 ``[S, D]``; ``size`` long ``[S]``; ``label``: the global label
    (``b*N`` + smallest member) of each community; ``similarity``: fp32 ``[R]``, ``x̂_r · S_c``.
    ``sizes``: long ``[B, N]`` community size of every token (0 at padding).
    """

    rows: torch.Tensor
    segment: torch.Tensor
    sums: torch.Tensor
    size: torch.Tensor
    label: torch.Tensor
    similarity: torch.Tensor
    sizes: torch.Tensor

    def spread(self, values: torch.Tensor, fill: float, shape: tuple[int, int]) -> torch.Tensor:
        """``[B, N]`` fp32 with ``values`` (per row) at the rows and ``fill`` elsewhere."""
        out = torch.full((shape[0] * shape[1],), fill, dtype=torch.float32, device=values.device)
        out[self.rows] = values
        return out.reshape(shape)

    def pair_mean(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` with the two members of every 2-token community set to their mean."""
        total = torch.zeros(self.size.shape[0], dtype=torch.float32, device=values.device)
        total.index_add_(0, self.segment, values)
        return torch.where(self.size[self.segment] == 2, total[self.segment] / 2, values)


def community_sums(graph: TokenGraph, labels: torch.Tensor, valid: torch.Tensor) -> CommunitySums:
    """Sums of normalised features of every community of two or more valid tokens."""
    sizes = community_sizes(labels, valid)
    flat_label = global_labels(labels)
    rows = (sizes.reshape(-1) >= 2).nonzero().flatten()
    label, segment = torch.unique(flat_label[rows], return_inverse=True)
    size = torch.zeros(label.shape[0], dtype=torch.long, device=labels.device)
    size.index_add_(0, segment, torch.ones_like(segment))
    sums = segment_sums(graph.features, graph.inverse_norm, rows, segment, label.shape[0])
    similarity = dots_with_segment_sums(graph.features, graph.inverse_norm, rows, segment, sums)
    return CommunitySums(rows, segment, sums, size, label, similarity, sizes)


def centrality(graph: TokenGraph, sums: CommunitySums) -> torch.Tensor:
    """fp32 ``[B, N]``: eq. 4, a token's mean cosine similarity to the other members.

    A nonzero vector's similarity to itself is taken as exactly 1 (a zero vector's as 0).
    Tokens alone in their community get 1 (they represent themselves perfectly).
    """
    self_similarity = (graph.inverse_norm[sums.rows] > 0).float()
    others = (sums.similarity - self_similarity) / (sums.size[sums.segment] - 1).float()
    return sums.spread(sums.pair_mean(others), 1.0, (graph.batch_size, graph.num_nodes))


def mean_member_similarity(graph: TokenGraph, sums: CommunitySums) -> torch.Tensor:
    """fp32 ``[B, N]``: mean cosine to every member, itself included (the official code's token
    weight, ``cos_sim.mean(dim=-1)``); 1 outside communities of two or more."""
    weight = sums.similarity / sums.size[sums.segment].float()
    return sums.spread(sums.pair_mean(weight), 1.0, (graph.batch_size, graph.num_nodes))


def component_scores(sums: CommunitySums, strategy: int, num_nodes: int) -> torch.Tensor:
    """fp32 ``[S]``: the official code's score of each community (components visited high first).

    1: sum of the members' flat indices within the sample; 2: ``Σ_ij cos / (2(n-1))``;
    3: mean off-diagonal cosine ``(Σ_ij cos - n) / (n-1) / n``.
    """
    n = sums.size.float()
    if strategy == 1:
        index_sum = torch.zeros(sums.size.shape[0], dtype=torch.long, device=n.device)
        index_sum.index_add_(0, sums.segment, sums.rows % num_nodes)
        return index_sum.float()
    total = torch.linalg.vector_norm(sums.sums, dim=1).square()
    if strategy == 2:
        return total / 2 / (n - 1)
    return (total - n) / (n - 1) / n
