"""``fastervlm``: FasterVLM (Zhang et al., 2024): keep the patches the CLS token attends to most.

Official semantics (Theia-4869/FasterVLM): the CLS token's attention to the patches at the vision
encoder's second-to-last layer, averaged over heads (``importance``, supplied by the adapter), a
top-k per image, kept tokens in their original order. Here every frame is an image: with
``per_frame`` (default) each frame keeps its own top-k, ``ceil(ratio * v)`` of its ``v`` valid
patches or ``count`` per frame (the official ``visual_token_num`` is per image); without it one
top-k runs over the whole sample with the usual sample budget. Ties keep the lower flat index.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch

from tokenreduce.frames import frame_rows, frame_top_k
from tokenreduce.interfaces import BudgetConfig, BudgetedReducer, Signal, Stage
from tokenreduce.registry import register_strategy
from tokenreduce.selection import top_k_mask
from tokenreduce.tokens import Reduction, Role, VisualTokens


@register_strategy("fastervlm")
class FasterVLM(BudgetedReducer):
    """FasterVLM: top-k patches by CLS attention, per frame (encoder stage).

    Parameters: ``ratio`` (keep ratio, ceil, default 0.5) or ``count`` (tokens per frame, or per
    sample without ``per_frame``), ``per_frame`` (default True).
    """

    stage: ClassVar[Stage] = Stage.ENCODER
    requires: ClassVar[frozenset[Signal]] = frozenset({Signal.IMPORTANCE})

    @dataclasses.dataclass
    class Config(BudgetConfig):
        per_frame: bool = True

    def frame_counts(self, tokens: VisualTokens) -> torch.Tensor:
        """Long ``[B, T]``: tokens each frame keeps (``per_frame`` budgets)."""
        t = tokens.grid[0]
        available = frame_rows(tokens.flat_valid(), t).sum(dim=1)
        counts = self.config.budget().keep_counts(available, available)
        return counts.reshape(tokens.batch_size, t)

    def keep_counts(self, tokens: VisualTokens) -> torch.Tensor:
        if self.config.per_frame:
            return self.frame_counts(tokens).sum(dim=1)
        return super().keep_counts(tokens)

    def reduce(self, tokens: VisualTokens) -> Reduction:
        valid = tokens.flat_valid()
        scores = tokens.flat_importance()
        if self.config.per_frame:
            keep = frame_top_k(scores, self.frame_counts(tokens), valid, tokens.grid[0])
        else:
            keep = top_k_mask(scores, self.keep_counts(tokens), valid)
        roles = torch.full_like(keep, int(Role.IMPORTANT), dtype=torch.int32)
        return Reduction(keep, roles, grid=tokens.grid, valid=valid)
