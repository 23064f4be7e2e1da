"""``st_simdiff_select``: ST-SimDiff's dual selection T_rep ∪ T_event (paper §4.2-4.4) before the LLM.

Graph (eq. 1-3) -> edges with similarity ``> tau_sim`` -> communities (any registered detector,
optionally capped at ``max_community_size``) -> the ``ceil(|c| r)`` most central tokens of every
community (eq. 4-5, ``r`` = ``retention``) = T_rep, plus the event tokens (eq. 6) = T_event.
Without a budget the kept count depends on the content (the union, untrimmed); with ``ratio`` or
``count`` the union is trimmed (events first, then by centrality) or filled up to exactly that
budget, as ``st_simdiff`` does with attention inside the LLM.
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from typing import Any, ClassVar, Literal

import torch

from tokenreduce.budget import check_ratio
from tokenreduce.config import Config, check_in_range, component_field
from tokenreduce.errors import ConfigError
from tokenreduce.graph.centrality import centrality, community_sums
from tokenreduce.graph.events import TemporalDifference
from tokenreduce.graph.pruning import trim_or_fill
from tokenreduce.graph.segments import (
    community_keep_counts,
    rank_in_community,
    split_oversized,
    sqrt_sizes,
)
from tokenreduce.graph.token_graph import EdgeKind, SpatioTemporalGraphBuilder, TokenGraph
from tokenreduce.interfaces import BudgetConfig, BudgetedReducer, Signal, Stage
from tokenreduce.registry import register_strategy
from tokenreduce.tokens import Reduction, Role, VisualTokens

DEFAULT_RETENTION = 0.3  # the paper's r when nothing else sets it


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
        if not self.events:
            unused = [f for f in ("tau_diff", "event_percentile") if changed(self, f)]
            if unused:
                raise ConfigError(f"{self.name}: {', '.join(unused)} set with events=False has no effect "
                                  "(no event tokens are detected)")


def changed(config: Config, name: str) -> bool:
    """The field ``name`` of ``config`` differs from its declared default."""
    field = next(f for f in dataclasses.fields(config) if f.name == name)
    default = field.default_factory() if field.default is dataclasses.MISSING else field.default  # type: ignore[misc]
    return getattr(config, name) != default


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


def trim_to_budget(tokens: VisualTokens, found: Candidates, counts: torch.Tensor,
                   importance: torch.Tensor | None = None) -> Reduction:
    """T_rep ∪ T_event trimmed (or filled) to exactly ``counts[b]`` tokens: by ``importance``
    ``[B, N]`` when given, else events first, then by centrality (a token alone in its community
    counts 1); lower flat index first on ties. Tokens added to the union are ``FILLED``."""
    valid = tokens.flat_valid()
    candidates = found.representatives | found.events
    scores = importance if importance is not None else found.centrality + 4.0 * found.events.float()
    keep = trim_or_fill(scores, valid, candidates, counts)
    roles = found.roles() | torch.where(keep & ~candidates, int(Role.FILLED), 0).int()
    if importance is not None:
        roles |= torch.where(keep, int(Role.IMPORTANT), 0).int()
    return Reduction(keep, roles, grid=tokens.grid, valid=valid)


@register_strategy("st_simdiff_select")
class STSimDiffSelect(BudgetedReducer):
    """ST-SimDiff's dual selection T_rep ∪ T_event, before the LLM (no attention needed).

    ``retention`` is the paper's per-community rate r (eq. 5; default: ``ratio``, else 0.3).
    Without ``ratio``/``count`` the union is kept whole (count set by the content); with one it is
    trimmed or filled to exactly that budget. ``events=False`` gives T_rep alone (the paper's
    "+Sim" ablation rows); ``spatial`` / ``temporal`` choose the edge types of the communities.
    """

    stage: ClassVar[Stage] = Stage.PRE_LLM
    optional: ClassVar[frozenset[Signal]] = frozenset({Signal.EMBEDDINGS})

    @dataclasses.dataclass
    class Config(SelectionFields, BudgetConfig):
        retention: float | None = None

        default_ratio: ClassVar[float | None] = None

        def validate(self) -> None:
            super().validate()
            if self.retention is not None:
                check_ratio(self.retention, f"{self.name}.retention")

    @classmethod
    def examples(cls) -> list[dict[str, Any]]:
        return [{"ratio": 0.3}, {"retention": 0.3, "tau_sim": 0.5}, {"count": 4, "events": False},
                {"retention": 0.5, "max_community_size": "sqrt", "event_percentile": 90.0}]

    def retention_rates(self, tokens: VisualTokens) -> list[Fraction | float]:
        """The per-community retention rate r of eq. 5, per sample."""
        cfg = self.config
        if cfg.retention is not None or cfg.count is None:
            rate = next(v for v in (cfg.retention, cfg.ratio, DEFAULT_RETENTION) if v is not None)
            return [rate] * tokens.batch_size
        return [Fraction(cfg.count, max(int(n), 1)) for n in tokens.budget_counts().tolist()]

    def planned_counts(self, tokens: VisualTokens) -> torch.Tensor | None:
        return None if self.config.given_budget() is None else self.keep_counts(tokens)

    def reduce(self, tokens: VisualTokens) -> Reduction:
        found = select_candidates(tokens, self.config, self.retention_rates(tokens))
        if self.config.given_budget() is not None:
            return trim_to_budget(tokens, found, self.keep_counts(tokens))
        keep = found.representatives | found.events
        return Reduction(keep, found.roles(), grid=tokens.grid, valid=tokens.flat_valid())
