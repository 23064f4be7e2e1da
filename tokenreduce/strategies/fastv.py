"""``fastv``: FastV (Chen et al., 2024), pruning visual tokens inside the LLM before layer K.

FastV is ``attention_prune`` with FastV's budget rules: a ratio keeps ``round(N * r)`` with
Python's ``round`` on floats, FastV's own ``prune_ratio`` R keeps ``round(N * (1 - R))`` (the
official Hugging Face / LLaVA variant), ``count`` an absolute count (the paper's code). Everything
else -- the ranking by the last query's head-averaged attention of layer K-1, ties keeping the
lower flat index, original positions -- is shared.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from tokenreduce.budget import Budget
from tokenreduce.errors import ConfigError
from tokenreduce.registry import register_strategy
from tokenreduce.strategies.attention_prune import AttentionPrune


@register_strategy("fastv")
class FastV(AttentionPrune):
    """FastV: keep the visual tokens the last query attends to most at layer K-1, before layer K.

    Parameters: ``layer`` K (default 2), and one budget: ``ratio`` (keep ratio, default 0.5),
    ``prune_ratio`` R (keep ``round(N * (1 - R))``, FastV's own parameter) or ``count``.
    """

    @dataclasses.dataclass
    class Config(AttentionPrune.Config):
        prune_ratio: float | None = None

        rounding: ClassVar[str] = "round"
        alternative_budgets: ClassVar[tuple[str, ...]] = ("prune_ratio",)

        def validate(self) -> None:
            super().validate()
            if self.prune_ratio is not None and not 0.0 <= self.prune_ratio < 1.0:
                raise ConfigError(f"{self.name}.prune_ratio must be in [0, 1), got {self.prune_ratio}")

        def budget(self) -> Budget:
            if self.prune_ratio is not None:
                return Budget(ratio=1 - self.prune_ratio, rounding="round")  # the float FastV multiplies N by
            return super().budget()

    @classmethod
    def examples(cls) -> list[dict[str, Any]]:
        return [{"ratio": 0.3, "layer": 1}, {"prune_ratio": 0.5}, {"count": 3, "layer": 3}]
