"""``dart``: DART (Wen et al., EMNLP 2025), duplication-aware token reduction inside the LLM.

Official semantics (ZichenWen1/DART, ``Qwen2_5-VL/Qwen2_5VL_DART/modeling_qwen2_5_vl_self.py``,
``get_retained_image_token``), before decoder layer ``layer`` (K, default 2), per video:

1. Pivots: the ``pivot_image`` visual tokens and the ``pivot_text`` tokens after the video (the
   prompt, ``VisualTokens.context``) with the largest L1 norm of their layer-K-1 key states
   (``signals["keys"]``: rotary applied, key heads concatenated).
2. Every pivot in turn (image pivots, then text pivots, each in sequence order) picks the
   ``quota`` visual tokens *least* cosine-similar to it among those not picked yet (and not image
   pivots): its non-duplicates. Similarities compare the hidden states after the language model's
   final norm (``signals["normed"]`` and ``context["normed"]``, as upstream's
   ``self.norm(hidden)``; without them the features, ``context["features"]``).
3. The image pivots and every picked token stay. No attention scores are needed.

Budget: ``quota = int(budget / pivots)``, ``budget = N · (1 - reduction_ratio)`` (upstream's
parameter, default 0.778), ``ratio · N`` or ``count``, so a video keeps ``pivot_image + pivots ·
quota`` tokens: between ``budget - pivots + pivot_image`` and ``budget + pivot_image``. A budget
that covers the video (``ratio`` 1, a ``count`` of at least its tokens) keeps every token.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch

from tokenreduce.errors import ConfigError
from tokenreduce.interfaces import BudgetConfig, InLLMConfig, Reducer, Signal, Stage
from tokenreduce.registry import register_strategy
from tokenreduce.selection import at_least_float32, top_k_mask
from tokenreduce.tokens import Reduction, Role, VisualTokens

DEFAULT_REDUCTION_RATIO = 0.778  # upstream's default (keep 22.2 %)
COSINE_EPS = 1e-8  # F.cosine_similarity's default


@register_strategy("dart")
class DART(Reducer):
    """DART: keep pivot tokens and the tokens least similar to them (non-duplicates), before layer K.

    Parameters: ``layer`` (K, default 2); ``pivot_image`` (4) and ``pivot_text`` (4); one budget:
    ``ratio``, ``count`` or ``reduction_ratio`` (default 0.778, keep ``1 - reduction_ratio``).
    """

    stage: ClassVar[Stage] = Stage.IN_LLM
    requires: ClassVar[frozenset[Signal]] = frozenset({Signal.KEYS})
    optional: ClassVar[frozenset[Signal]] = frozenset({Signal.NORMED, Signal.CONTEXT})

    @dataclasses.dataclass
    class Config(BudgetConfig, InLLMConfig):
        reduction_ratio: float | None = None
        pivot_image: int = 4
        pivot_text: int = 4

        default_ratio: ClassVar[float | None] = None  # no budget: upstream's reduction_ratio 0.778
        alternative_budgets: ClassVar[tuple[str, ...]] = ("reduction_ratio",)

        def validate(self) -> None:
            super().validate()
            if self.reduction_ratio is not None and not 0.0 <= self.reduction_ratio < 1.0:
                raise ConfigError(f"{self.name}.reduction_ratio must be in [0, 1), got {self.reduction_ratio}")
            if self.pivot_image < 1:
                raise ConfigError(f"{self.name}.pivot_image must be >= 1, got {self.pivot_image}")
            if self.pivot_text < 0:
                raise ConfigError(f"{self.name}.pivot_text must be >= 0, got {self.pivot_text}")

        def pivot_budget(self, present: int, base: int) -> float:
            """The token budget the pivots share, as upstream computes it (a float)."""
            if self.count is not None:
                return float(self.count)
            if self.ratio is not None:
                return base * self.ratio
            rate = self.reduction_ratio if self.reduction_ratio is not None else DEFAULT_REDUCTION_RATIO
            return present * (1 - rate)

    @classmethod
    def examples(cls) -> list[dict[str, Any]]:
        return [{"ratio": 0.3, "layer": 1}, {"reduction_ratio": 0.5, "pivot_image": 2, "pivot_text": 0},
                {"count": 6, "pivot_image": 1, "position": "after_attention"}]

    # ----- pivots and quotas -------------------------------------------------------------------
    def _pivots(self, tokens: VisualTokens) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Image pivots bool ``[B, N]``, text pivots bool ``[B, M]`` (or None) and the quota ``[B]``."""
        cfg = self.config
        valid = tokens.flat_valid()
        counts = valid.sum(dim=1)
        image = top_k_mask(key_norms(tokens.flat_signal("keys")), counts.clamp(max=cfg.pivot_image), valid)
        text = None
        text_counts = torch.zeros_like(counts)
        if (tokens.context is not None and cfg.pivot_text > 0
                and {"keys", compared_states(tokens)} <= set(tokens.context)):
            text_valid = tokens.context["valid"]
            text_counts = text_valid.sum(dim=1).clamp(max=cfg.pivot_text)
            text = top_k_mask(key_norms(tokens.context["keys"]), text_counts, text_valid)
        pivots = counts.clamp(max=cfg.pivot_image) + text_counts
        budgets = [cfg.pivot_budget(int(n), int(base)) for n, base in zip(counts.tolist(), tokens.budget_counts().tolist())]
        # a budget that covers the video keeps it whole (upstream's int(budget / pivots) could drop some)
        quota = [n if budget >= n else int(budget / p) for n, budget, p in zip(counts.tolist(), budgets, pivots.tolist())]
        return image, text, torch.tensor(quota, dtype=torch.long, device=valid.device)

    def planned_counts(self, tokens: VisualTokens) -> torch.Tensor:
        image, text, quota = self._pivots(tokens)
        pivots = image.sum(dim=1) + (0 if text is None else text.sum(dim=1))
        return torch.minimum(image.sum(dim=1) + pivots * quota, tokens.valid_counts())

    # ----- reduction ---------------------------------------------------------------------------
    def reduce(self, tokens: VisualTokens) -> Reduction:
        valid = tokens.flat_valid()
        image, text, quota = self._pivots(tokens)
        name = compared_states(tokens)
        states = unit(tokens.flat_signal(name) if name != "features" else tokens.flat_features())
        sources = [(states, image)]
        if text is not None:
            sources.append((unit(tokens.context[name]), text))
        picked = torch.zeros_like(valid)
        free = valid & ~image
        for pivot_states, pivot_mask in sources:
            for pivot in pivot_order(pivot_mask):  # a loop over at most pivot_image + pivot_text pivots
                has = pivot >= 0
                row = torch.arange(valid.shape[0], device=valid.device)
                centre = pivot_states[row, pivot.clamp(min=0)]
                distance = -torch.bmm(states, centre.unsqueeze(-1)).squeeze(-1)  # minus the cosine
                chosen = top_k_mask(distance, torch.where(has, quota, 0), free)
                picked |= chosen
                free &= ~chosen
        keep = image | picked
        roles = (torch.where(image, int(Role.REPRESENTATIVE), 0) | torch.where(picked, int(Role.SAMPLED), 0))
        return Reduction(keep, roles.to(torch.int32), grid=tokens.grid, valid=valid)


def compared_states(tokens: VisualTokens) -> str:
    """What the pivots are compared by: ``"normed"`` (the final norm's output, upstream) when the
    tokens carry it, else ``"features"``; text pivots need the same entry in ``tokens.context``."""
    return "normed" if "normed" in tokens.signals else "features"


def unit(states: torch.Tensor) -> torch.Tensor:
    """``states`` over their L2 norm (at least ``1e-8``, as ``F.cosine_similarity`` divides), fp32 or wider."""
    x = at_least_float32(states)
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp(min=COSINE_EPS)


def key_norms(keys: torch.Tensor) -> torch.Tensor:
    """``[B, N]``: the L1 norm of every token's key state (upstream's ``torch.norm(k, p=1)``)."""
    return torch.linalg.vector_norm(at_least_float32(keys), ord=1, dim=-1)


def pivot_order(pivots: torch.Tensor) -> list[torch.Tensor]:
    """The pivots of every sample in increasing index order, as a list of long ``[B]`` (``-1`` where
    a sample has fewer pivots)."""
    counts = pivots.sum(dim=1)
    rank = pivots.long().cumsum(dim=1) - 1
    index = torch.arange(pivots.shape[1], device=pivots.device).expand_as(pivots)
    out = []
    for i in range(int(counts.max()) if counts.numel() else 0):
        at = pivots & (rank == i)
        out.append(torch.where(at.any(dim=1), (index * at).sum(dim=1), -1))
    return out
