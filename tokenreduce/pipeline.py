"""``Pipeline``: several reducers applied one after another, in stage order.

A later step sees only the tokens earlier steps kept (they arrive as ``valid``), with the merged
features of earlier merging steps, and ratio budgets keep referring to the original token count
(``budget_base``), so ``[st_simdiff_select, attention_prune(ratio=0.3)]`` ends at 30 % of the video.
Roles carry through: a token kept at the end has the flags every step gave it. Extra tokens
(VisionZip's contextual tokens) are not on the grid, so later steps do not see them; they are
kept and appended in step order.

Budget: ``ratio`` / ``count`` on a pipeline is the budget of its last step with a budget (in stage
order): that step is rebuilt with it (``Reducer.at_budget``), so the pipeline ends at that share of
the video; earlier steps keep their own settings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from tokenreduce.config import Config, component_list_field
from tokenreduce.errors import ConfigError
from tokenreduce.interfaces import BudgetConfig, Reducer, Stage
from tokenreduce.registry import register_strategy
from tokenreduce.tokens import Reduction, Role, VisualTokens


def combine(previous: Reduction, latest: Reduction) -> Reduction:
    """The reduction of running ``latest`` on the survivors of ``previous``."""
    roles = previous.roles | latest.roles
    parts = [r for r in (previous, latest) if r.extra is not None]
    extra = torch.cat([r.extra for r in parts], dim=1) if parts else None
    extra_valid = None
    if any(r.extra_valid is not None for r in parts):
        extra_valid = torch.cat([r.extra_valid if r.extra_valid is not None
                                 else torch.ones(r.extra.shape[:2], dtype=torch.bool, device=r.extra.device)
                                 for r in parts], dim=1)
    return Reduction(
        latest.keep_mask,
        roles & ~int(Role.KEPT),
        grid=previous.grid,
        valid=previous.valid,
        features=latest.features if latest.features is not None else previous.features,
        extra=extra,
        extra_valid=extra_valid,
        info={**previous.info, **latest.info},
    )


def restrict(tokens: VisualTokens, reduction: Reduction, base: torch.Tensor) -> VisualTokens:
    """``tokens`` as the next step sees them: only the kept ones valid, merged features applied."""
    t, h, w = tokens.grid
    features = tokens.features
    if reduction.features is not None:
        features = reduction.features.reshape(tokens.batch_size, t, h, w, -1).to(features.dtype)
    return tokens.replace_trusted(valid=reduction.keep_mask.reshape(tokens.batch_size, t, h, w),
                                  features=features, budget_base=base)


def run_in_order(steps: Sequence[Reducer], tokens: VisualTokens) -> Reduction:
    """Run single-stage ``steps`` one after another on ``tokens`` with fixed signals, each on the
    survivors of the previous ones (what a model adapter does across the stages)."""
    base = tokens.budget_counts()
    result = Reduction(tokens.flat_valid(), grid=tokens.grid, valid=tokens.flat_valid())
    current = tokens
    for step in steps:
        result = combine(result, step(current))
        current = restrict(tokens, result, base)
    return result


def stage_order(steps: Sequence[Reducer]) -> list[Reducer]:
    """Steps sorted by (stage, layer), stable: encoder, pre-LLM, then in-LLM by layer."""
    return sorted(steps, key=lambda s: (int(s.stage), s.layer if s.layer is not None else -1))


@register_strategy("pipeline")
class Pipeline(Reducer):
    """Compose reducers: steps run in stage order, each on the tokens the previous ones kept."""

    @dataclasses.dataclass
    class Config(BudgetConfig):
        steps: list[Config] = component_list_field("strategy")

        default_ratio: ClassVar[float | None] = None

        def validate(self) -> None:
            super().validate()
            given = self.given_budget()
            if given is None:
                return
            order = stage_order([cfg.build() for cfg in self.steps])
            budgeted = [step for step in order if type(step).budgeted]
            if not budgeted:
                raise ConfigError(f"pipeline.{given} needs a step with a budget; these steps keep every token: "
                                  f"{[cfg.name for cfg in self.steps]}")
            last = budgeted[-1].config
            rebuilt = type(budgeted[-1]).with_budget(last, **{given: getattr(self, given)})
            object.__setattr__(self, "steps", [rebuilt if cfg is last else cfg for cfg in self.steps])

    @classmethod
    def examples(cls) -> list[dict[str, Any]]:
        return [{"steps": [{"name": "uniform", "ratio": 0.6, "per_frame": True},
                           {"name": "attention_prune", "ratio": 0.3, "layer": 1}]},
                {"steps": [{"name": "st_simdiff_select", "retention": 0.5}, {"name": "random", "ratio": 0.3}]},
                {"steps": [{"name": "fastervlm", "ratio": 0.8}, {"name": "keep_all"}], "count": 5}]

    def __init__(self, steps: Sequence[Any] | Config | None = None, /, **overrides: Any) -> None:
        if steps is None or isinstance(steps, Config):
            super().__init__(steps, **overrides)
        else:
            super().__init__(None, steps=list(steps), **overrides)
        self._steps = stage_order([cfg.build() for cfg in self.config.steps])

    @property
    def stage(self) -> Stage:  # type: ignore[override]
        return self._steps[0].stage if self._steps else Stage.PRE_LLM

    @property
    def requires(self) -> frozenset:  # type: ignore[override]
        return frozenset().union(*(s.requires for s in self._steps))

    def steps(self) -> list[Reducer]:
        return [leaf for step in self._steps for leaf in step.steps()]

    def budget_steps(self) -> list[Reducer]:
        """The steps up to the last one with a budget (the pipeline's ``ratio`` is that step's)."""
        budgeted = [i for i, step in enumerate(self._steps) if type(step).budgeted]
        if not budgeted:
            return self.steps()
        last = budgeted[-1]
        return [leaf for step in self._steps[:last] for leaf in step.steps()] + self._steps[last].budget_steps()

    def reduce(self, tokens: VisualTokens) -> Reduction:
        return run_in_order(self.steps(), tokens)

    def __repr__(self) -> str:
        return "Pipeline([" + ", ".join(repr(s) for s in self._steps) + "])"
