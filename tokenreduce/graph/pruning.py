"""``importance``: trim a candidate set to an exact count by importance, or fill it up."""

from __future__ import annotations

import dataclasses

import torch

from tokenreduce.config import Config
from tokenreduce.interfaces import BudgetPruner
from tokenreduce.registry import register_budget_pruner
from tokenreduce.selection import top_k_mask
from tokenreduce.tokens import VisualTokens


@register_budget_pruner("importance")
class ImportancePruner(BudgetPruner):
    """Keep exactly ``counts[b]`` tokens: the most important candidates when there are too many;
    all candidates plus the most important other valid tokens when there are too few.

    Importance is ``VisualTokens.importance``; ties keep the lower flat index.
    """

    @dataclasses.dataclass
    class Config(Config):
        pass

    def prune(self, tokens: VisualTokens, candidates: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        return self.prune_scores(tokens.flat_importance(), tokens.flat_valid(), candidates, counts)

    def prune_scores(self, importance: torch.Tensor, valid: torch.Tensor, candidates: torch.Tensor,
                     counts: torch.Tensor) -> torch.Tensor:
        """``prune`` with explicit ``[B, N]`` scores (e.g. a fallback when there is no importance)."""
        candidates = candidates & valid
        trimmed = top_k_mask(importance, counts, candidates)
        missing = (counts.to(valid.device) - trimmed.sum(dim=1)).clamp(min=0)
        return trimmed | top_k_mask(importance, missing, valid & ~candidates)
