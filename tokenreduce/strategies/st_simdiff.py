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
layer 2. It uses a cost budget: ``cost`` (< 1), or ``ratio`` read as the cost (the paper reports
its runs at cost 0.3 as "r = 30 %"), or ``count`` read as the cost ``count / N``. Only the
official code's connected components, events and score exist there: choosing another community
detector, switching events off, an event percentile or a community-size cap is a ``ConfigError``.
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from typing import Any, ClassVar, Literal

import torch

from tokenreduce.budget import Budget, check_ratio, cost_prune_ratio
from tokenreduce.errors import ConfigError
from tokenreduce.interfaces import BudgetConfig, BudgetedReducer, InLLMConfig, Reducer, Signal, Stage
from tokenreduce.pipeline import Pipeline
from tokenreduce.registry import register_strategy
from tokenreduce.strategies.st_simdiff_reference import (
    STSimDiffReferenceStage1,
    STSimDiffReferenceStage2,
    check_reference_tau_sim,
)
from tokenreduce.strategies.st_simdiff_select import (
    SelectionFields,
    changed,
    select_candidates,
    trim_to_budget,
)
from tokenreduce.tokens import Reduction, VisualTokens

DEFAULT_RATIO = 0.3
#: Settings the official code does not have: with variant="reference" they must keep their defaults.
PAPER_ONLY = ("community", "events", "event_percentile", "max_community_size")


@register_strategy("st_simdiff")
class STSimDiff(BudgetedReducer):
    """ST-SimDiff: similarity communities keep representatives, temporal differences keep events."""

    optional: ClassVar[frozenset[Signal]] = frozenset({Signal.IMPORTANCE, Signal.EMBEDDINGS})

    @dataclasses.dataclass
    class Config(SelectionFields, BudgetConfig, InLLMConfig):
        cost: float | None = None
        variant: Literal["paper", "reference"] = "paper"
        score: Literal[1, 2, 3] = 3
        num_layers: int | None = None

        default_ratio: ClassVar[float | None] = DEFAULT_RATIO
        alternative_budgets: ClassVar[tuple[str, ...]] = ("cost",)

        def validate(self) -> None:
            super().validate()
            if self.cost is not None:
                check_ratio(self.cost, f"{self.name}.cost")
            if self.variant == "reference":
                unused = [f for f in PAPER_ONLY if changed(self, f)]
                if unused:
                    raise ConfigError(f"{self.name}: {', '.join(unused)} cannot take effect with variant='reference' "
                                      "(the official code uses connected components, always detects events and "
                                      "caps no community); use variant='paper'")
                check_reference_tau_sim(self.tau_sim, self.name)
                if self.cost is not None and self.cost >= 1:
                    raise ConfigError(f"{self.name}: variant='reference' needs cost < 1 (the official "
                                      f"code fails at cost >= 1), got {self.cost}")
            elif changed(self, "score"):
                raise ConfigError(f"{self.name}.score orders the components of variant='reference' only; the "
                                  "paper variant ranks tokens by centrality")
            if self.num_layers is not None and self.num_layers < 2:
                raise ConfigError(f"{self.name}.num_layers must be >= 2, got {self.num_layers}")

        def budget(self) -> Budget:
            if self.cost is not None:
                return Budget(cost=self.cost, rounding="round")
            return super().budget()

    @classmethod
    def examples(cls) -> list[dict[str, Any]]:
        return [{"ratio": 0.3, "layer": 1}, {"variant": "reference", "ratio": 0.3, "tau_sim": 0.5},
                {"count": 5, "community": "louvain", "tau_sim": 0.5},
                {"cost": 0.4, "max_community_size": "sqrt", "num_layers": 8},
                {"variant": "reference", "count": 6, "score": 2, "position": "after_attention"}]

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
        budget = {k: getattr(cfg, k) for k in cfg.budget_fields() if getattr(cfg, k) is not None}
        shared = {"tau_sim": cfg.tau_sim, "spatial": cfg.spatial, "temporal": cfg.temporal,
                  "right": cfg.right, "bottom": cfg.bottom, "num_layers": cfg.num_layers, **budget}
        return [STSimDiffReferenceStage1(tau_diff=cfg.tau_diff, score=cfg.score, **shared),
                STSimDiffReferenceStage2(layer=cfg.layer, position=cfg.position, **shared)]

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
        return [cfg.ratio] * tokens.batch_size

    def _reduce_paper(self, tokens: VisualTokens) -> Reduction:
        found = select_candidates(tokens, self.config, self.retention_rates(tokens))
        importance = tokens.flat_importance() if tokens.importance is not None else None
        return trim_to_budget(tokens, found, self.keep_counts(tokens), importance)

    def _reduce_reference(self, tokens: VisualTokens) -> Reduction:
        return Pipeline(self.steps()).reduce(tokens)
