"""``attention_prune``: keep the visual tokens the LLM attends to most, pruning before layer K."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch

from tokenreduce.interfaces import BudgetConfig, BudgetedReducer, InLLMConfig, Reducer, Signal, Stage
from tokenreduce.registry import register_strategy
from tokenreduce.selection import top_k_mask
from tokenreduce.tokens import Reduction, Role, VisualTokens


@register_strategy("attention_prune")
class AttentionPrune(BudgetedReducer):
    """Keep the tokens with the highest last-query attention; runs in the LLM before layer K.

    Inside a model the importance is the last query's head-averaged attention of layer K-1 over
    the visual tokens (the adapter's attention probe); with tensors alone it is
    ``VisualTokens.importance``. Ties keep the lower flat index.
    """

    stage: ClassVar[Stage] = Stage.IN_LLM
    requires: ClassVar[frozenset[Signal]] = frozenset({Signal.IMPORTANCE})

    @dataclasses.dataclass
    class Config(BudgetConfig, InLLMConfig):
        pass

    @classmethod
    def examples(cls) -> list[dict[str, Any]]:
        return [{"ratio": 0.3, "layer": 1}, {"count": 5, "position": "after_attention"}]

    def reduce(self, tokens: VisualTokens) -> Reduction:
        valid = tokens.flat_valid()
        keep = top_k_mask(tokens.flat_importance(), self.keep_counts(tokens), valid)
        roles = torch.full_like(keep, int(Role.IMPORTANT), dtype=torch.int32)
        return Reduction(keep, roles, grid=tokens.grid, valid=valid)


class AttentionShare(Reducer):
    """An in-LLM step keeping ``kept_count(n)`` of the ``n`` tokens present at its layer (at least
    one) by importance, ties to the lower flat index: FlashVID's pruning and HoliTom's merge count
    the tokens that reach their layer, not the video's original tokens."""

    stage: ClassVar[Stage] = Stage.IN_LLM
    requires: ClassVar[frozenset[Signal]] = frozenset({Signal.IMPORTANCE})

    def kept_count(self, present: int) -> int:
        """How many of ``present`` tokens stay."""
        raise NotImplementedError

    def planned_counts(self, tokens: VisualTokens) -> torch.Tensor:
        kept = [max(self.kept_count(n), 1) for n in tokens.valid_counts().tolist()]
        return torch.tensor(kept, dtype=torch.long, device=tokens.device)

    def most_attended(self, tokens: VisualTokens) -> torch.Tensor:
        """Bool ``[B, N]``: the planned count of tokens with the highest importance."""
        return top_k_mask(tokens.flat_importance(), self.planned_counts(tokens), tokens.flat_valid())
