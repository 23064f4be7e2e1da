"""``fastervlm``: FasterVLM (Zhang et al., 2024): keep the patches the CLS token attends to most.

Official semantics (Theia-4869/FasterVLM): the CLS token's attention to the patches at the vision
encoder's second-to-last layer, averaged over heads (``importance``, supplied by the adapter), a
top-k per image, kept tokens in their original order. Here every frame is an image: with
``per_frame`` (default) the sample's budget (``ceil(ratio * n)`` of its ``n`` valid patches, or
``count``) is split over the frames in proportion to their valid patches (exactly, by cumulative
flooring: equal frames get equal shares up to one token) and each frame keeps its own top-k; for
one image this is the official ``visual_token_num`` top-k. Without ``per_frame`` one top-k runs
over the whole sample. Ties keep the lower flat index.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch

from tokenreduce.frames import frame_rows, frame_top_k
from tokenreduce.interfaces import BudgetConfig, BudgetedReducer, EncoderConfig, Signal, Stage
from tokenreduce.registry import register_strategy
from tokenreduce.selection import proportional_counts, top_k_mask
from tokenreduce.tokens import Reduction, Role, VisualTokens


@register_strategy("fastervlm")
class FasterVLM(BudgetedReducer):
    """FasterVLM: top-k patches by CLS attention, per frame (encoder stage).

    Parameters: ``ratio`` (keep ratio of the sample, ceil, default 0.5) or ``count`` (per sample),
    ``per_frame`` (default True).
    """

    stage: ClassVar[Stage] = Stage.ENCODER
    requires: ClassVar[frozenset[Signal]] = frozenset({Signal.IMPORTANCE})

    @dataclasses.dataclass
    class Config(BudgetConfig, EncoderConfig):
        per_frame: bool = True

    def frame_counts(self, tokens: VisualTokens) -> torch.Tensor:
        """Long ``[B, T]``: the sample budget split over frames in proportion to their valid patches."""
        t = tokens.grid[0]
        per_frame = frame_rows(tokens.flat_valid(), t).sum(dim=1).reshape(tokens.batch_size, t)
        return proportional_counts(per_frame, self.keep_counts(tokens))

    def reduce(self, tokens: VisualTokens) -> Reduction:
        valid = tokens.flat_valid()
        scores = tokens.flat_importance()
        if self.config.per_frame:
            keep = frame_top_k(scores, self.frame_counts(tokens), valid, tokens.grid[0])
        else:
            keep = top_k_mask(scores, self.keep_counts(tokens), valid)
        roles = torch.full_like(keep, int(Role.IMPORTANT), dtype=torch.int32)
        return Reduction(keep, roles, grid=tokens.grid, valid=valid)
