"""``random``: a seeded random subset of exactly the budgeted size; the floor any method must beat."""

from __future__ import annotations

import dataclasses

import torch

from tokenreduce.interfaces import BudgetConfig, BudgetedReducer
from tokenreduce.registry import register_strategy
from tokenreduce.selection import top_k_mask
from tokenreduce.tokens import Reduction, Role, VisualTokens


@register_strategy("random")
class RandomSelect(BudgetedReducer):
    """Keep a uniformly random subset of the valid tokens (seeded, exact budget).

    The random scores depend only on ``seed`` and the grid size, never on the batch, so a sample
    keeps the same tokens alone or in a batch, on CPU or GPU.
    """

    @dataclasses.dataclass
    class Config(BudgetConfig):
        seed: int = 0

    def reduce(self, tokens: VisualTokens) -> Reduction:
        generator = torch.Generator(device="cpu").manual_seed(self.config.seed)
        scores = torch.rand(tokens.num_tokens, generator=generator).to(tokens.device)
        valid = tokens.flat_valid()
        keep = top_k_mask(scores.expand(tokens.batch_size, -1), self.keep_counts(tokens), valid)
        roles = torch.full_like(keep, int(Role.SAMPLED), dtype=torch.int32)
        return Reduction(keep, roles, grid=tokens.grid, valid=valid)
