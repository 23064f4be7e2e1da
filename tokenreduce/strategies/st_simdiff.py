"""``st_simdiff``: ST-SimDiff, as the paper describes it (default) or as its official code runs.

``variant="paper"`` (§4.5): T_rep ∪ T_event (``st_simdiff_select``), then trimmed to exactly the
budget (``ceil(r N)`` for a ratio) by importance, or filled up by importance when the union is
smaller. It is one in-LLM step before decoder layer ``layer`` (default 2, FastV's position): the
graph is built on the LLM input embeddings (``signals["embeddings"]``, else the features) and the
importance is the layer-``layer - 1`` last-query attention the adapter passes as
``VisualTokens.importance``. Without importance the trim ranks events first, then by centrality
(eq. 4; a token alone in its community counts 1), lower flat index first on ties.

``variant="reference"``: the two stages of the official code (see ``st_simdiff_reference``);
``steps()`` returns them so that an adapter runs stage 1 before the LLM and stage 2 before
layer 2. It uses a cost budget: ``cost`` (or ``ratio``, read as the cost: the paper reports its
runs at cost 0.3 as "r = 30 %"), which must be < 1.
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from typing import ClassVar, Literal

import torch

from tokenreduce.budget import Budget, check_count, check_ratio, cost_prune_ratio
from tokenreduce.errors import ConfigError
from tokenreduce.graph.pruning import ImportancePruner
from tokenreduce.interfaces import BudgetedReducer, Reducer, Signal, Stage
from tokenreduce.pipeline import Pipeline
from tokenreduce.registry import register_strategy
from tokenreduce.strategies.st_simdiff_reference import (
    STSimDiffReferenceStage1,
    STSimDiffReferenceStage2,
    check_reference_tau_sim,
)
from tokenreduce.strategies.st_simdiff_select import SelectionFields, select_candidates
from tokenreduce.tokens import Reduction, Role, VisualTokens

DEFAULT_RATIO = 0.3


@register_strategy("st_simdiff")
class STSimDiff(BudgetedReducer):
    """ST-SimDiff: similarity communities keep representatives, temporal differences keep events."""

    optional: ClassVar[frozenset[Signal]] = frozenset({Signal.IMPORTANCE, Signal.EMBEDDINGS})

    @dataclasses.dataclass
    class Config(SelectionFields):
        ratio: float | None = None
        count: int | None = None
        cost: float | None = None
        variant: Literal["paper", "reference"] = "paper"
        score: Literal[1, 2, 3] = 3
        layer: int = 2
        num_layers: int | None = None

        def validate(self) -> None:
            super().validate()
            given = [k for k in ("ratio", "count", "cost") if getattr(self, k) is not None]
            if len(given) > 1:
                raise ConfigError(f"{self.name}: give one of ratio, count or cost, got {given}")
            if self.ratio is not None:
                check_ratio(self.ratio, f"{self.name}.ratio")
            if self.count is not None:
                check_count(self.count, f"{self.name}.count")
            if self.cost is not None:
                check_ratio(self.cost, f"{self.name}.cost")
            if self.variant == "reference":
                if self.count is not None:
                    raise ConfigError(f"{self.name}: variant='reference' uses a cost budget; give cost "
                                      "(or ratio, read as the cost), not count")
                check_reference_tau_sim(self.tau_sim, self.name)
                if self.reference_cost() >= 1:
                    raise ConfigError(f"{self.name}: variant='reference' needs cost < 1 (the official "
                                      f"code fails at cost >= 1), got {self.reference_cost()}")
            if self.layer < 1:
                raise ConfigError(f"{self.name}.layer must be >= 1, got {self.layer}")
            if self.num_layers is not None and self.num_layers < 2:
                raise ConfigError(f"{self.name}.num_layers must be >= 2, got {self.num_layers}")

        def reference_cost(self) -> float:
            for value in (self.cost, self.ratio):
                if value is not None:
                    return value
            return DEFAULT_RATIO

        def budget(self) -> Budget:
            if self.cost is not None:
                return Budget(cost=self.cost, rounding="round")
            if self.count is not None:
                return Budget(count=self.count)
            return Budget(ratio=self.ratio if self.ratio is not None else DEFAULT_RATIO)

    # ----- shape of the run ------------------------------------------------------------------
    @property
    def stage(self) -> Stage:  # type: ignore[override]
        return Stage.PRE_LLM if self.config.variant == "reference" else Stage.IN_LLM

    @property
    def requires(self) -> frozenset[Signal]:  # type: ignore[override]
        return frozenset({Signal.IMPORTANCE}) if self.config.variant == "reference" else frozenset()

    def steps(self) -> list[Reducer]:
        if self.config.variant == "paper":
            return [self]
        cfg = self.config
        shared = {"tau_sim": cfg.tau_sim, "spatial": cfg.spatial, "temporal": cfg.temporal,
                  "right": cfg.right, "bottom": cfg.bottom, "cost": cfg.reference_cost(),
                  "num_layers": cfg.num_layers}
        return [STSimDiffReferenceStage1(tau_diff=cfg.tau_diff, score=cfg.score, **shared),
                STSimDiffReferenceStage2(layer=cfg.layer, **shared)]

    def _num_layers(self, tokens: VisualTokens) -> int | None:
        return self.config.num_layers if self.config.num_layers is not None else tokens.num_layers

    def keep_counts(self, tokens: VisualTokens) -> torch.Tensor:
        return self.config.budget().keep_counts(tokens.budget_counts(), tokens.valid_counts(),
                                                num_layers=self._num_layers(tokens))

    def planned_counts(self, tokens: VisualTokens) -> torch.Tensor | None:
        return self.keep_counts(tokens) if self.config.variant == "paper" else None

    # ----- reduction -------------------------------------------------------------------------
    def reduce(self, tokens: VisualTokens) -> Reduction:
        if self.config.variant == "reference":
            return self._reduce_reference(tokens)
        return self._reduce_paper(tokens)

    def retention_rates(self, tokens: VisualTokens) -> list[Fraction | float]:
        """The per-community retention rate r of eq. 5, per sample."""
        cfg = self.config
        if cfg.cost is not None:
            layers = self._num_layers(tokens)
            if layers is None:
                raise ConfigError(f"{cfg.name}: a cost budget needs the LLM's layer count: set num_layers "
                                  "in the config or VisualTokens(num_layers=...) (tr.apply does)")
            return [1 - cost_prune_ratio([], cfg.cost, layers)] * tokens.batch_size
        if cfg.count is not None:
            return [Fraction(cfg.count, max(int(n), 1)) for n in tokens.budget_counts().tolist()]
        return [cfg.ratio if cfg.ratio is not None else DEFAULT_RATIO] * tokens.batch_size

    def _reduce_paper(self, tokens: VisualTokens) -> Reduction:
        valid = tokens.flat_valid()
        found = select_candidates(tokens, self.config, self.retention_rates(tokens))
        candidates = found.representatives | found.events
        if tokens.importance is not None:
            importance = tokens.flat_importance()
        else:  # documented fallback: events first, then centrality
            importance = found.centrality + 4.0 * found.events.float()
        keep = ImportancePruner().prune_scores(importance, valid, candidates, self.keep_counts(tokens))
        roles = found.roles() | torch.where(keep & ~candidates, int(Role.FILLED), 0).int()
        if tokens.importance is not None:
            roles |= torch.where(keep, int(Role.IMPORTANT), 0).int()
        return Reduction(keep, roles, grid=tokens.grid, valid=valid)

    def _reduce_reference(self, tokens: VisualTokens) -> Reduction:
        return Pipeline(self.steps()).reduce(tokens)
