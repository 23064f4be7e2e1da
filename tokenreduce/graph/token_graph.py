"""The spatio-temporal token graph of ST-SimDiff (paper eq. 1-3) and its builder.

Nodes are the tokens of every sample with the flat id ``b*N + n`` (``n = t*H*W + h*W + w``).
Edges join valid grid neighbours: the right and bottom neighbour in the same frame (spatial,
eq. 1; no diagonals) and the same position in the next frame (temporal, eq. 2). An edge is stored
once, from the earlier token (``src``) to the later one (``dst``), weighted by the cosine
similarity of the two feature vectors (eq. 3).

Cosines are accumulated in fp32 whatever the feature dtype; norms are computed once. A zero
vector has similarity 0 with every token (as if normalised with ``F.normalize``): it is neither
similar (no edge above a positive threshold) nor undefined (never NaN). Edges touching a zero
vector are flagged in ``TokenGraph.degenerate`` for code that must treat them differently (the
official ST-SimDiff code divides by the norm there and gets NaN).
"""

from __future__ import annotations

import dataclasses
import enum

import torch

from tokenreduce.graph.blocked import norms_and_shifted_dots
from tokenreduce.tokens import VisualTokens


class EdgeKind(enum.IntEnum):
    """What an edge joins: neighbours in one frame, or one position in adjacent frames."""

    SPATIAL = 0
    TEMPORAL = 1


@dataclasses.dataclass(frozen=True)
class TokenGraph:
    """A batch of token graphs as one edge list over flat node ids ``b*N + n``.

    Attributes:
        src, dst: long ``[E]``; ``src < dst`` (the earlier and the later token).
        weight: fp32 ``[E]`` cosine similarity.
        kind: long ``[E]`` ``EdgeKind``.
        features: ``[B*N, D]`` the node features the weights were computed from (input dtype).
        inverse_norm: fp32 ``[B*N]``: ``1/||x||``, 0 for zero vectors (reused by centrality).
        batch_size, num_nodes: ``B`` and ``N`` (nodes per sample, padding included).
        grid: ``(T, H, W)``.
    """

    src: torch.Tensor
    dst: torch.Tensor
    weight: torch.Tensor
    kind: torch.Tensor
    features: torch.Tensor
    inverse_norm: torch.Tensor
    batch_size: int
    num_nodes: int
    grid: tuple[int, int, int]

    @property
    def num_edges(self) -> int:
        return int(self.src.shape[0])

    @property
    def device(self) -> torch.device:
        return self.src.device

    @property
    def total_nodes(self) -> int:
        """``B * N``."""
        return self.batch_size * self.num_nodes

    @property
    def degenerate(self) -> torch.Tensor:
        """Bool ``[E]``: the edge touches a zero vector (its weight is 0 by convention)."""
        zero = self.inverse_norm == 0
        return zero[self.src] | zero[self.dst]

    def edge_sample(self) -> torch.Tensor:
        """Long ``[E]``: the sample each edge belongs to."""
        return torch.div(self.src, self.num_nodes, rounding_mode="floor")

    def of_kind(self, kind: EdgeKind) -> torch.Tensor:
        """Bool ``[E]``: edges of ``kind``."""
        return self.kind == int(kind)


@dataclasses.dataclass(frozen=True)
class SpatioTemporalGraphBuilder:
    """Spatial (right/bottom neighbour) and temporal (same position, next frame) cosine edges.

    ``spatial=False`` drops both spatial directions; ``right``/``bottom`` switch one of them;
    ``temporal=False`` drops the temporal edges. Only pairs of valid tokens become edges. (The
    strategies' configs carry these switches; the builder is not chosen by name.)
    """

    spatial: bool = True
    temporal: bool = True
    right: bool = True
    bottom: bool = True

    def build_graph(self, tokens: VisualTokens) -> TokenGraph:
        return self.graph_of(tokens.features, tokens.flat_valid())

    def graph_of(self, features: torch.Tensor, valid: torch.Tensor) -> TokenGraph:
        """The graph of ``features`` ``[B, T, H, W, D]`` (already validated) and ``valid`` ``[B, N]``."""
        cfg = self
        b, t, h, w, d = features.shape
        n = t * h * w
        device = features.device
        flat = features.reshape(b * n, d)
        valid = valid.reshape(-1)
        position = torch.arange(b * n, device=device) % n
        column, row, frame = position % w, (position // w) % h, position // (h * w)
        # (shift, kind, "has a neighbour at +shift" for each node)
        wanted = []
        if cfg.spatial and cfg.right and w > 1:
            wanted.append((1, EdgeKind.SPATIAL, column < w - 1))
        if cfg.spatial and cfg.bottom and h > 1:
            wanted.append((w, EdgeKind.SPATIAL, row < h - 1))
        if cfg.temporal and t > 1:
            wanted.append((h * w, EdgeKind.TEMPORAL, frame < t - 1))
        inverse, dots = norms_and_shifted_dots(flat, sorted({shift for shift, _, _ in wanted}))
        srcs, dsts, weights, kinds = [], [], [], []
        for shift, kind, has_neighbour in wanted:
            m = b * n - shift
            ok = has_neighbour[:m] & valid[:m] & valid[shift:]
            src = ok.nonzero().flatten()
            dst = src + shift
            srcs.append(src)
            dsts.append(dst)
            weights.append(dots[shift][src] * inverse[src] * inverse[dst])
            kinds.append(torch.full_like(src, int(kind)))
        empty = torch.empty(0, dtype=torch.long, device=device)
        return TokenGraph(
            src=torch.cat(srcs) if srcs else empty,
            dst=torch.cat(dsts) if dsts else empty,
            weight=torch.cat(weights) if weights else torch.empty(0, dtype=torch.float32, device=device),
            kind=torch.cat(kinds) if kinds else empty,
            features=flat,
            inverse_norm=inverse,
            batch_size=b,
            num_nodes=n,
            grid=(t, h, w),
        )
