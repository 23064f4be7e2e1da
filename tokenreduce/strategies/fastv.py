"""``fastv``: FastV (Chen et al., 2024), pruning visual tokens inside the LLM before layer K.

FastV is ``attention_prune`` with FastV's budget rules: the keep count is ``round(N * (1 - R))``
with Python's ``round`` on floats (the official Hugging Face / LLaVA variant), or an absolute
``count`` (the paper's code). Everything else -- the ranking by the last query's head-averaged
attention of layer K-1, ties keeping the lower flat index, original positions -- is shared.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

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

        def validate(self) -> None:
            if self.prune_ratio is not None:
                if not 0.0 <= self.prune_ratio < 1.0:
                    raise ConfigError(f"{self.name}.prune_ratio must be in [0, 1), got {self.prune_ratio}")
                if self.count is not None:
                    raise ConfigError(f"{self.name}: give prune_ratio or count, not both "
                                      f"(prune_ratio={self.prune_ratio}, count={self.count})")
                keep = 1 - self.prune_ratio  # the float FastV multiplies N by
                if self.ratio is not None and self.ratio != keep:
                    raise ConfigError(f"{self.name}: ratio={self.ratio} contradicts "
                                      f"prune_ratio={self.prune_ratio} (ratio = 1 - prune_ratio)")
                object.__setattr__(self, "ratio", keep)
            super().validate()
