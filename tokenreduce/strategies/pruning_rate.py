"""The ``prune_ratio`` budget of vLLM's video pruning, shared by ``evs`` and ``vidcom2``.

vLLM (``--video-pruning-rate q``) sizes a video's prompt before its encoder runs: the video keeps
``max(minimum, int(N · (1 − q)))`` of its ``N`` tokens, ``int`` truncating the double product,
where the minimum is the method's own (EVS: one frame's tokens; VidCom2: one token per frame).
A strategy built with ``prune_ratio=q`` keeps exactly that count; ``ratio`` and ``count`` keep
their meaning of every other strategy (``ceil(r · N)`` and an absolute count).
"""

from __future__ import annotations

import abc
import dataclasses
from typing import ClassVar

import torch

from tokenreduce.config import Config
from tokenreduce.errors import ConfigError
from tokenreduce.interfaces import BudgetConfig, BudgetedReducer
from tokenreduce.tokens import VisualTokens


@dataclasses.dataclass
class PruningRateConfig(BudgetConfig):
    """A ``ratio`` / ``count`` budget, or vLLM's pruning rate ``prune_ratio`` in [0, 1)."""

    prune_ratio: float | None = None

    alternative_budgets: ClassVar[tuple[str, ...]] = ("prune_ratio",)

    def validate(self) -> None:
        super().validate()
        if self.prune_ratio is not None and not 0.0 <= self.prune_ratio < 1.0:
            raise ConfigError(f"{self.name}.prune_ratio must be in [0, 1) (vLLM's video_pruning_rate), "
                              f"got {self.prune_ratio}")


class PruningRateReducer(BudgetedReducer):
    """A pre-LLM budgeted reducer that also takes vLLM's ``prune_ratio`` budget; its config is a
    ``PruningRateConfig`` (each registered subclass gets its own)."""

    Config: ClassVar[type[Config]] = PruningRateConfig

    @abc.abstractmethod
    def minimum_counts(self, tokens: VisualTokens) -> torch.Tensor:
        """``[B]`` long: the fewest tokens the method keeps under ``prune_ratio`` (vLLM's minimum)."""

    def keep_counts(self, tokens: VisualTokens) -> torch.Tensor:
        q = self.config.prune_ratio
        if q is None:
            return super().keep_counts(tokens)
        available = tokens.valid_counts()
        wanted = [int(n * (1 - q)) for n in tokens.budget_counts().tolist()]  # vLLM's double product
        wanted = torch.tensor(wanted, dtype=torch.long, device=available.device)
        return torch.maximum(wanted, self.minimum_counts(tokens)).clamp(min=1).minimum(available)
