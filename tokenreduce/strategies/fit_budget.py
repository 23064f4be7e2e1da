"""``fit_budget``: run a strategy whose kept count depends on the content, then fit it to a budget.

Content-driven strategies (``st_simdiff_select``, ``keep_all``, pipelines of them) keep as many
tokens as the video calls for. Where a count is fixed from outside — a serving engine reserves the
prompt slots before the encoder runs — this wrapper makes them keep exactly the budget:

- more kept than the budget: the budgeted number of the kept tokens, evenly spaced in sequence
  order among them (``uniform``'s rule applied to the kept set);
- fewer: every kept token plus the missing number of the other valid tokens, evenly spaced among
  those (roles ``FILLED``).

Even spacing is content-free, exact and has no ties, so two engines that agree on the wrapped
strategy's kept set agree on the fitted one.
"""

from __future__ import annotations

import dataclasses
from typing import Any
import torch

from tokenreduce.config import Config, component_field
from tokenreduce.errors import ConfigError
from tokenreduce.interfaces import BudgetConfig, BudgetedReducer, LayerwiseReducer, Reducer, Signal, Stage
from tokenreduce.registry import register_strategy
from tokenreduce.selection import even_spacing_mask
from tokenreduce.tokens import Reduction, Role, VisualTokens


@register_strategy("fit_budget")
class FitBudget(BudgetedReducer):
    """A content-driven ``strategy``, trimmed or filled to exactly ``ratio`` / ``count`` by even spacing."""

    @dataclasses.dataclass
    class Config(BudgetConfig):
        strategy: Config = component_field("strategy", "st_simdiff_select")

    def __init__(self, config: Config | None = None, /, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self.inner: Reducer = self.config.strategy.build()
        steps = self.inner.steps()
        places = {(int(s.stage), s.layer) for s in steps}
        if len(places) != 1 or any(isinstance(s, LayerwiseReducer) for s in steps):
            raise ConfigError(f"fit_budget.strategy must run at one place (one stage, one layer); "
                              f"{self.config.strategy.name} runs at {len(places)} or is layer-wise")

    @property
    def stage(self) -> Stage:  # type: ignore[override]
        return self.inner.stage

    @property
    def layer(self) -> int | None:
        return self.inner.layer

    @property
    def requires(self) -> frozenset[Signal]:  # type: ignore[override]
        return self.inner.requires

    @property
    def optional(self) -> frozenset[Signal]:  # type: ignore[override]
        return self.inner.optional

    def reduce(self, tokens: VisualTokens) -> Reduction:
        inner = self.inner(tokens)
        if inner.extra is not None:
            raise ConfigError(f"fit_budget cannot fit {self.config.strategy.name}: it adds new tokens "
                              "(Reduction.extra), which a token count cannot place")
        valid = tokens.flat_valid()
        chosen = inner.keep_mask & valid
        counts = self.keep_counts(tokens)
        trimmed = even_spacing_mask(chosen, counts)
        missing = (counts - trimmed.sum(dim=1)).clamp(min=0)
        filled = even_spacing_mask(valid & ~chosen, missing)
        keep = trimmed | filled
        roles = inner.roles | torch.where(filled, int(Role.FILLED), 0).int()
        return Reduction(keep, roles, grid=tokens.grid, valid=valid, features=inner.features, info=inner.info)

