"""``st_simdiff_select``: ST-SimDiff's dual selection T_rep ∪ T_event (paper §4.2-4.4), no trim.

Graph (eq. 1-3) -> edges with similarity ``> tau_sim`` -> communities (any registered detector,
optionally capped at ``max_community_size``) -> the ``ceil(|c| r)`` most central tokens of every
community (eq. 4-5) = T_rep, plus the event tokens (eq. 6) = T_event. The kept count depends on
the content; ``st_simdiff`` trims the union to an exact budget.
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from typing import ClassVar, Literal

import torch

from tokenreduce.budget import check_ratio
from tokenreduce.config import Config, check_in_range, component_field
from tokenreduce.errors import ConfigError
from tokenreduce.graph.centrality import centrality, community_sums
from tokenreduce.graph.events import TemporalDifference
from tokenreduce.graph.segments import (
    community_keep_counts,
    rank_in_community,
    split_oversized,
    sqrt_sizes,
)
from tokenreduce.graph.token_graph import EdgeKind, SpatioTemporalGraphBuilder, TokenGraph
from tokenreduce.interfaces import Reducer, Signal, Stage
from tokenreduce.registry import register_strategy
from tokenreduce.tokens import Reduction, Role, VisualTokens


@dataclasses.dataclass
class GraphFields(Config):
    """The graph settings shared by every ST-SimDiff step (names as in the paper)."""

    tau_sim: float = 0.8
    spatial: bool = True
    temporal: bool = True
    right: bool = True
    bottom: bool = True

    def validate(self) -> None:
        super().validate()
        check_in_range(f"{self.name}.tau_sim", self.tau_sim, -1.0, 1.0, "a cosine similarity ")


@dataclasses.dataclass
class SelectionFields(GraphFields):
    """Graph settings plus the community and event settings of the dual selection."""

    tau_diff: float = 0.2
    events: bool = True
    event_percentile: float | None = None
    community: Config = component_field("community", "connected_components")
    max_community_size: int | Literal["sqrt"] | None = None

    def validate(self) -> None:
        super().validate()
        check_in_range(f"{self.name}.tau_diff", self.tau_diff, -1.0, 1.0, "a cosine similarity ")
        if isinstance(self.max_community_size, int) and self.max_community_size < 1:
            raise ConfigError(f"{self.name}.max_community_size must be >= 1, 'sqrt' or None, "
                              f"got {self.max_community_size}")
        if self.event_percentile is not None and not 0.0 <= self.event_percentile <= 100.0:
            raise ConfigError(f"{self.name}.event_percentile must be in [0, 100], got {self.event_percentile}")


def build_graph(tokens: VisualTokens, cfg: GraphFields, *, temporal: bool) -> TokenGraph:
    """The token graph on the LLM input embeddings (``signals["embeddings"]``) when given, else on
    the features; temporal edges are built when ``temporal`` (community or event use)."""
    builder = SpatioTemporalGraphBuilder(spatial=cfg.spatial, temporal=temporal, right=cfg.right,
                                         bottom=cfg.bottom)
    source = tokens.signals.get(Signal.EMBEDDINGS.value)
    if source is None or source.ndim != 5 or not source.is_floating_point():
        source = tokens.features
    return builder.graph_of(source, tokens.flat_valid())


@dataclasses.dataclass(frozen=True)
class Candidates:
    """Result of the dual selection: bool ``[B, N]`` masks, labels and centrality."""

    representatives: torch.Tensor
    events: torch.Tensor
    labels: torch.Tensor
    sizes: torch.Tensor
    centrality: torch.Tensor

    def roles(self) -> torch.Tensor:
        roles = torch.zeros_like(self.labels, dtype=torch.int32)
        roles |= torch.where(self.representatives & (self.sizes >= 2), int(Role.REPRESENTATIVE), 0).int()
        roles |= torch.where(self.sizes == 1, int(Role.UNGROUPED), 0).int()
        roles |= torch.where(self.events, int(Role.EVENT), 0).int()
        return roles


def select_candidates(tokens: VisualTokens, cfg: SelectionFields,
                      ratios: list[Fraction | float]) -> Candidates:
    """T_rep (with per-sample retention rates ``ratios``) and T_event of every sample."""
    valid = tokens.flat_valid()
    graph = build_graph(tokens, cfg, temporal=cfg.temporal or cfg.events)
    kind_ok = torch.zeros_like(graph.src, dtype=torch.bool)
    if cfg.spatial:
        kind_ok |= graph.of_kind(EdgeKind.SPATIAL)
    if cfg.temporal:
        kind_ok |= graph.of_kind(EdgeKind.TEMPORAL)
    labels = cfg.community.build().detect(graph, kind_ok & (graph.weight > cfg.tau_sim))
    if cfg.max_community_size is not None:
        limit = (sqrt_sizes(tokens.valid_counts()) if cfg.max_community_size == "sqrt"
                 else torch.full((tokens.batch_size,), cfg.max_community_size, dtype=torch.long))
        labels = split_oversized(labels, valid, limit)
    sums = community_sums(graph, labels, valid)
    score = centrality(graph, sums)
    keep = community_keep_counts(sums.sizes, ratios)
    representatives = valid & (rank_in_community(labels, score, valid) < keep)
    if cfg.events:
        detector = TemporalDifference(tau_diff=cfg.tau_diff, percentile=cfg.event_percentile)
        events = detector.detect(tokens, graph)
    else:
        events = torch.zeros_like(valid)
    return Candidates(representatives, events, labels, sums.sizes, score)


@register_strategy("st_simdiff_select")
class STSimDiffSelect(Reducer):
    """ST-SimDiff's dual selection without the final trim: T_rep ∪ T_event (count set by content).

    ``events=False`` gives T_rep alone (the paper's "+Sim" ablation rows); ``spatial`` /
    ``temporal`` choose the edge types the communities are built from.
    """

    stage: ClassVar[Stage] = Stage.PRE_LLM
    optional: ClassVar[frozenset[Signal]] = frozenset({Signal.EMBEDDINGS})

    @dataclasses.dataclass
    class Config(SelectionFields):
        ratio: float = 0.3

        def validate(self) -> None:
            super().validate()
            check_ratio(self.ratio, f"{self.name}.ratio")

    def reduce(self, tokens: VisualTokens) -> Reduction:
        found = select_candidates(tokens, self.config, [self.config.ratio] * tokens.batch_size)
        keep = found.representatives | found.events
        return Reduction(keep, found.roles(), grid=tokens.grid, valid=tokens.flat_valid())
