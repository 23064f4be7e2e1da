"""``uniform``: evenly spaced tokens over the sequence (or within every frame)."""

from __future__ import annotations

import dataclasses

import torch

from tokenreduce.interfaces import BudgetConfig, BudgetedReducer
from tokenreduce.registry import register_strategy
from tokenreduce.selection import even_spacing_mask, proportional_counts
from tokenreduce.tokens import Reduction, Role, VisualTokens


@register_strategy("uniform")
class UniformSelect(BudgetedReducer):
    """Keep evenly spaced valid tokens in sequence order (or within every frame).

    With ``per_frame`` the budget is split over frames in proportion to their valid tokens
    (exactly, by cumulative flooring) and the tokens are spaced within each frame.
    """

    @dataclasses.dataclass
    class Config(BudgetConfig):
        per_frame: bool = False

    def reduce(self, tokens: VisualTokens) -> Reduction:
        valid = tokens.flat_valid()
        counts = self.keep_counts(tokens)
        if self.config.per_frame:
            t, h, w = tokens.grid
            frame = torch.arange(t, device=tokens.device).repeat_interleave(h * w)
            per_frame_valid = valid.reshape(tokens.batch_size, t, h * w).sum(dim=2)
            keep = even_spacing_mask(valid, proportional_counts(per_frame_valid, counts), frame)
        else:
            keep = even_spacing_mask(valid, counts)
        roles = torch.full_like(keep, int(Role.SAMPLED), dtype=torch.int32)
        return Reduction(keep, roles, grid=tokens.grid, valid=valid)
