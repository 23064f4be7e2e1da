"""``temporal_difference``: event tokens where a position's content changes between frames (eq. 6)."""

from __future__ import annotations

import dataclasses

import torch

from tokenreduce.config import check_in_range
from tokenreduce.errors import ConfigError
from tokenreduce.graph.token_graph import EdgeKind, TokenGraph
from tokenreduce.tokens import VisualTokens


@dataclasses.dataclass(frozen=True)
class TemporalDifference:
    """The later token of every temporal edge whose similarity is below a threshold is an event.

    Fixed threshold (eq. 6): similarity ``< tau_diff``. Dynamic threshold (``percentile`` set,
    the paper's alternative): with the difference ``1 - similarity`` of every temporal edge of a
    sample, the events are the edges whose difference exceeds that sample's ``percentile``-th
    percentile (linear interpolation), e.g. 95 marks about the 5 % most changed positions.
    ``ignore_zero_vectors`` skips edges touching a zero vector (the official code's NaN cosine
    is neither below nor above any threshold); by default a zero vector has similarity 0.
    Only temporal edges of the graph count, so the graph must be built with temporal edges.
    (The strategies' configs carry ``tau_diff`` and the percentile; the detector is not chosen by
    name.)
    """

    tau_diff: float = 0.2
    percentile: float | None = None
    ignore_zero_vectors: bool = False

    def __post_init__(self) -> None:
        check_in_range("temporal_difference.tau_diff", self.tau_diff, -1.0, 1.0, "a cosine similarity ")
        if self.percentile is not None and not 0.0 <= self.percentile <= 100.0:
            raise ConfigError(f"temporal_difference.percentile must be in [0, 100], got {self.percentile}")

    def detect(self, tokens: VisualTokens, graph: TokenGraph) -> torch.Tensor:
        """Bool ``[B, N]``: the event tokens (always within ``tokens.valid``)."""
        temporal = graph.of_kind(EdgeKind.TEMPORAL)
        if self.ignore_zero_vectors:
            temporal &= ~graph.degenerate
        weight = graph.weight
        if self.percentile is None:
            is_event = temporal & (weight < self.tau_diff)
        else:
            is_event = temporal & ((1.0 - weight) > self._thresholds(graph, temporal))
        events = torch.zeros(graph.total_nodes, dtype=torch.bool, device=graph.device)
        events[graph.dst[is_event]] = True
        return events.reshape(graph.batch_size, graph.num_nodes) & tokens.flat_valid()

    def _thresholds(self, graph: TokenGraph, temporal: torch.Tensor) -> torch.Tensor:
        """fp32 ``[E]``: the percentile of the temporal differences of each edge's sample."""
        sample = graph.edge_sample()
        per_sample = torch.zeros(graph.batch_size, dtype=torch.long, device=graph.device)
        per_sample.index_add_(0, sample[temporal], torch.ones_like(sample[temporal]))
        width = int(per_sample.max()) if graph.batch_size and per_sample.numel() else 0
        table = torch.full((graph.batch_size, max(width, 1)), float("nan"), device=graph.device)
        if width:
            order = torch.argsort(sample[temporal], stable=True)
            rows = sample[temporal][order]
            starts = per_sample.cumsum(0) - per_sample
            columns = torch.arange(rows.shape[0], device=graph.device) - starts[rows]
            table[rows, columns] = (1.0 - graph.weight[temporal])[order]
        quantiles = torch.nanquantile(table, self.percentile / 100.0, dim=1)
        return quantiles[sample]
