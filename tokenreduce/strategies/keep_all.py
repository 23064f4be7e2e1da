"""``keep_all``: the identity reduction (ratio 1.0); the control every comparison starts from."""

from __future__ import annotations

import torch

from tokenreduce.interfaces import Reducer
from tokenreduce.registry import register_strategy
from tokenreduce.tokens import Reduction, VisualTokens


@register_strategy("keep_all")
class KeepAll(Reducer):
    """Keep every valid token (no reduction); a model under it behaves exactly as without tokenreduce."""

    def reduce(self, tokens: VisualTokens) -> Reduction:
        valid = tokens.flat_valid()
        return Reduction(valid.clone(), grid=tokens.grid, valid=valid)

    def planned_counts(self, tokens: VisualTokens) -> torch.Tensor:
        return tokens.valid_counts()
