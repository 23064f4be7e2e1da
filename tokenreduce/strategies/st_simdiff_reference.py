"""The two stages of the official ST-SimDiff code (bingjunluo/ST-SimDiff, simdiff/new_topk.py).

Stage 1 (``st_simdiff_reference_stage1``, before the first LLM layer, on the input embeddings):
connected components of the edges ``temporal cos >= tau_sim`` / ``spatial cos > tau_sim``; the
components are visited by descending score (``score`` 1/2/3); each drops the
``m = ceil(n * s_max)`` members with the lowest mean cosine to the component, except event tokens
(temporal cos < tau_diff), which stay and are not replaced; the visit stops at the first component
with ``(dropped + m) / N > s_max`` (``s_max = 1 - (L*cost)/L`` in double). Tokens without an edge
are never dropped. Stage 2 (``st_simdiff_reference_stage2``, before layer 2 with layer 1's
last-query attention): keep ``round(n_left * (1 - p))`` tokens by importance, with
``p = cost_prune_ratio([merge_ratio], cost, L)`` (``[]`` when stage 1 found no edge at all).

Everything is vectorised over tokens and components (sorts, cumulative sums). Ties: equal token
weights drop the higher flat index first; equal component scores visit the component with the
smaller smallest member first; the two members of a 2-token component always tie (their weights
are equal in exact arithmetic). See docs/st-simdiff.md for the full list of reproduced quirks.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal

import torch

from tokenreduce.budget import Budget, check_ratio, cost_prune_ratio
from tokenreduce.config import check_in_range
from tokenreduce.errors import ConfigError
from tokenreduce.graph.centrality import (
    CommunitySums,
    community_sums,
    component_scores,
    mean_member_similarity,
)
from tokenreduce.graph.components import ConnectedComponents
from tokenreduce.graph.events import TemporalDifference
from tokenreduce.graph.segments import rank_in_community
from tokenreduce.graph.token_graph import EdgeKind, TokenGraph
from tokenreduce.interfaces import BudgetConfig, InLLMConfig, Reducer, Signal, Stage
from tokenreduce.registry import register_strategy
from tokenreduce.selection import top_k_mask
from tokenreduce.strategies.st_simdiff_select import GraphFields, build_graph
from tokenreduce.tokens import Reduction, Role, VisualTokens

DEFAULT_COST = 0.3  # the official default


@dataclasses.dataclass
class ReferenceFields(GraphFields, BudgetConfig):
    """Settings of the official code: a cost budget and the LLM's layer count.

    ``cost`` is the official budget (< 1: the official code fails at cost >= 1). ``ratio`` is read
    as the cost (the paper reports its cost-0.3 runs as "r = 30 %"), ``count`` as the cost
    ``count / N`` of a video of ``N`` tokens; a ratio or count that covers the whole video keeps it
    whole. Default: cost 0.3.
    """

    cost: float | None = None
    num_layers: int | None = None

    default_ratio: ClassVar[float | None] = None
    alternative_budgets: ClassVar[tuple[str, ...]] = ("cost",)

    def validate(self) -> None:
        super().validate()
        if self.cost is not None:
            check_ratio(self.cost, f"{self.name}.cost")
            if self.cost >= 1:
                raise ConfigError(f"{self.name}.cost must be < 1 for the reference variant (the official "
                                  f"code fails at cost >= 1), got {self.cost}")
        if self.num_layers is not None and self.num_layers < 2:
            raise ConfigError(f"{self.name}.num_layers must be >= 2, got {self.num_layers}")
        check_reference_tau_sim(self.tau_sim, self.name)

    def costs(self, tokens: VisualTokens) -> list[float]:
        """The cost of every sample (``count / N`` for a count budget, at most 1)."""
        if self.count is not None:
            return [min(1.0, self.count / max(n, 1)) for n in tokens.budget_counts().tolist()]
        value = next((v for v in (self.cost, self.ratio) if v is not None), DEFAULT_COST)
        return [value] * tokens.batch_size

    def layers(self, tokens: VisualTokens) -> int:
        """``num_layers`` from the config, else from the tokens; a clear error when neither has it."""
        layers = self.num_layers if self.num_layers is not None else tokens.num_layers
        if layers is None:
            raise ConfigError(f"{self.name} needs the LLM's layer count for its cost budget: set "
                              "num_layers in the config or VisualTokens(num_layers=...) (tr.apply does)")
        return layers


def check_reference_tau_sim(tau_sim: float, name: str) -> None:
    """The official code pads the similarity of a row's last token and a frame's last row with 0,
    so a negative threshold would join them to the next row / frame (edges the grid does not
    have): the reference variant needs ``tau_sim >= 0``."""
    if tau_sim < 0:
        raise ConfigError(f"{name}.tau_sim must be >= 0 for the reference variant (the official "
                          f"code would add wrap-around edges), got {tau_sim}")


def reference_edges(graph: TokenGraph, cfg: GraphFields) -> torch.Tensor:
    """Bool ``[E]``: the official code's edges (temporal ``>=``, spatial ``>``; the temporal
    cosine of a zero vector is NaN there, so such edges never count)."""
    temporal = graph.of_kind(EdgeKind.TEMPORAL) & (graph.weight >= cfg.tau_sim) & ~graph.degenerate
    spatial = graph.of_kind(EdgeKind.SPATIAL) & (graph.weight > cfg.tau_sim)
    return (temporal if cfg.temporal else torch.zeros_like(temporal)) | (spatial if cfg.spatial else
                                                                           torch.zeros_like(spatial))


def has_edges(graph: TokenGraph, edges: torch.Tensor) -> torch.Tensor:
    """Bool ``[B]``: the sample has at least one kept edge."""
    found = torch.zeros(graph.batch_size, dtype=torch.bool, device=graph.device)
    found[graph.edge_sample()[edges]] = True
    return found


@dataclasses.dataclass(frozen=True)
class StageOneResult:
    """Stage 1 of every sample: dropped tokens, events, components, and the recorded ratio."""

    dropped: torch.Tensor  # bool [B, N]
    events: torch.Tensor  # bool [B, N]
    in_component: torch.Tensor  # bool [B, N]
    merge_ratio: list[float]
    recorded: list[bool]  # False when the sample had no edge (nothing recorded upstream)


def stage_one(tokens: VisualTokens, cfg: ReferenceFields, tau_diff: float, score: int) -> StageOneResult:
    """The official stage 1 on every sample at once."""
    valid = tokens.flat_valid()
    b, n = valid.shape
    graph = build_graph(tokens, cfg, temporal=True)  # events need temporal pairs even if temporal=False
    edges = reference_edges(graph, cfg)
    labels = ConnectedComponents().detect(graph, edges)
    events = TemporalDifference(tau_diff=tau_diff, ignore_zero_vectors=True).detect(tokens, graph)
    sums = community_sums(graph, labels, valid)
    weight = mean_member_similarity(graph, sums)
    in_component = sums.sizes >= 2
    # token ranking inside its component: weight descending, lower index first on ties
    position = rank_in_community(labels, weight, in_component)
    size = sums.sizes
    counts = valid.sum(dim=1)
    layers = cfg.layers(tokens)
    s_max = torch.tensor([cost_prune_ratio([], cost, layers) for cost in cfg.costs(tokens)],  # 1 - (L*cost)/L
                         dtype=torch.float64, device=valid.device)
    # per component: m = ceil(n * s_max) (double), events inside its drop window
    component_sample = torch.div(sums.label, n, rounding_mode="floor")
    m = torch.ceil(sums.size.double() * s_max[component_sample]).long()
    window = in_component & (position >= (size - m_per_token(sums, m, b, n)))
    flat_rows = sums.rows
    window_events = (window & events).reshape(-1)[flat_rows].long()
    events_in = torch.zeros_like(m).index_add_(0, sums.segment, window_events)
    # visit order: sample, score descending, smallest member ascending (labels are sorted already)
    scores = component_scores(sums, score, n)
    order = torch.sort(scores, descending=True, stable=True).indices
    order = order[torch.sort(component_sample[order], stable=True).indices]
    m_o, e_o, sample_o = m[order], events_in[order], component_sample[order]
    dropped_o = m_o - e_o  # >= 0, so the running totals below never decrease
    before = within_sample_exclusive(dropped_o.cumsum(0) - dropped_o, sample_o, b)
    stops = (before + m_o).double() / counts[sample_o].double() > s_max[sample_o]
    stop_total = stops.long().cumsum(0)
    stops_so_far = within_sample_exclusive(stop_total - stops.long(), sample_o, b) + stops.long()
    visited = torch.zeros_like(m, dtype=torch.bool)
    visited[order] = stops_so_far == 0  # nothing stopped the visit up to and including it
    visited_token = torch.zeros(b * n, dtype=torch.bool, device=valid.device)
    visited_token[flat_rows] = visited[sums.segment]
    dropped = window & ~events & visited_token.reshape(b, n)
    total = dropped.sum(dim=1)
    recorded = has_edges(graph, edges)
    merge_ratio = [int(d) / int(c) for d, c in zip(total.tolist(), counts.tolist())]
    return StageOneResult(dropped, events, in_component, merge_ratio, recorded.tolist())


def within_sample_exclusive(running: torch.Tensor, sample: torch.Tensor, b: int) -> torch.Tensor:
    """``running`` (a non-decreasing running total over components grouped by sample) minus its
    value at the first component of each one's sample: the total within the sample."""
    first = torch.zeros(b, dtype=running.dtype, device=running.device)
    first.scatter_reduce_(0, sample, running, reduce="amin", include_self=False)
    return running - first[sample]


def m_per_token(sums: CommunitySums, m: torch.Tensor, b: int, n: int) -> torch.Tensor:
    """Long ``[B, N]``: each component member's ``m`` (0 elsewhere)."""
    out = torch.zeros(b * n, dtype=torch.long, device=m.device)
    out[sums.rows] = m[sums.segment]
    return out.reshape(b, n)


@register_strategy("st_simdiff_reference_stage1")
class STSimDiffReferenceStage1(Reducer):
    """Stage 1 of the official ST-SimDiff code: greedy component drop, events exempt (pre-LLM)."""

    stage: ClassVar[Stage] = Stage.PRE_LLM

    @dataclasses.dataclass
    class Config(ReferenceFields):
        tau_diff: float = 0.2
        score: Literal[1, 2, 3] = 3

        def validate(self) -> None:
            super().validate()
            check_in_range(f"{self.name}.tau_diff", self.tau_diff, -1.0, 1.0, "a cosine similarity ")

    @classmethod
    def examples(cls) -> list[dict[str, Any]]:
        return [{"ratio": 0.3, "tau_sim": 0.5}, {"cost": 0.5, "score": 2}, {"count": 4, "score": 1, "tau_sim": 0.3}]

    def reduce(self, tokens: VisualTokens) -> Reduction:
        result = stage_one(tokens, self.config, self.config.tau_diff, self.config.score)
        valid = tokens.flat_valid()
        keep = valid & ~result.dropped
        roles = torch.where(result.events, int(Role.EVENT), 0).int()
        roles |= torch.where(result.in_component, int(Role.REPRESENTATIVE), int(Role.UNGROUPED)).int()
        return Reduction(keep, roles, grid=tokens.grid, valid=valid,
                         info={"merge_ratio": result.merge_ratio, "recorded": result.recorded})


@register_strategy("st_simdiff_reference_stage2")
class STSimDiffReferenceStage2(Reducer):
    """Stage 2 of the official ST-SimDiff code: keep ``round(n (1 - p))`` tokens by attention.

    ``p`` follows from stage 1's drop ratio ``(base - n) / base`` (``base`` = the token count
    before stage 1, ``VisualTokens.budget_counts()``, which a pipeline or adapter sets). When
    stage 1 dropped nothing, whether it recorded a ratio (``[0.0]``) or not (``[]``, no edge at
    all) is decided by rebuilding the graph on the embeddings (or features).
    """

    stage: ClassVar[Stage] = Stage.IN_LLM
    requires: ClassVar[frozenset[Signal]] = frozenset({Signal.IMPORTANCE})
    optional: ClassVar[frozenset[Signal]] = frozenset({Signal.EMBEDDINGS})

    @dataclasses.dataclass
    class Config(ReferenceFields, InLLMConfig):
        pass

    @classmethod
    def examples(cls) -> list[dict[str, Any]]:
        return [{"ratio": 0.3, "layer": 1}, {"cost": 0.5, "num_layers": 28}, {"count": 5, "tau_sim": 0.5}]

    def sparsities(self, tokens: VisualTokens) -> list[list[float]]:
        """Per sample, the sparsity list stage 1 left for the cost formula."""
        base = tokens.budget_counts().tolist()
        left = tokens.valid_counts().tolist()
        lists: list[list[float] | None] = [
            [(bb - nn) / bb] if nn < bb else None for bb, nn in zip(base, left)]
        if any(s is None for s in lists):
            graph = build_graph(tokens, self.config, temporal=self.config.temporal)
            found = has_edges(graph, reference_edges(graph, self.config)).tolist()
            lists = [s if s is not None else ([0.0] if f else []) for s, f in zip(lists, found)]
        return lists  # type: ignore[return-value]

    def planned_counts(self, tokens: VisualTokens) -> torch.Tensor:
        layers = self.config.layers(tokens)
        read = self.config.cost is None  # a ratio / count read as the cost: a spent budget keeps one token
        counts = [Budget(cost=cost, rounding="round").keep_count(int(n), num_layers=layers, sparsity=s, clamp=read)
                  for n, s, cost in zip(tokens.valid_counts().tolist(), self.sparsities(tokens),
                                        self.config.costs(tokens))]
        return torch.tensor(counts, dtype=torch.long, device=tokens.device)

    def reduce(self, tokens: VisualTokens) -> Reduction:
        valid = tokens.flat_valid()
        keep = top_k_mask(tokens.flat_importance(), self.planned_counts(tokens), valid)
        roles = torch.full_like(keep, int(Role.IMPORTANT), dtype=torch.int32)
        return Reduction(keep, roles, grid=tokens.grid, valid=valid)
