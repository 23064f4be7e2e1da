"""``prumerge_plus``: LLaVA-PruMerge+ (Shang et al., 2024), adaptive CLS-attention pruning with
spatial samples, each kept token merged with its nearest neighbours by key.

Official semantics (42Shawn/LLaVA-PruMerge, ``token_prune_merge_advanced_plus``), per image --
here per frame, with ``v`` valid patches and ``a`` = the CLS attention per patch (``importance``):

1. Outliers: ``Q1``, ``Q3`` = numpy's linear 25th/75th percentiles of ``a`` (float32); the
   outliers are the patches with ``a > Q3 + 1.5 * (Q3 - Q1)``; ``ratio = outliers / v``.
2. Keep the ``int(v * ratio)`` patches with the highest ``a``.
3. Spatial samples: ``step = int(1 / ratio)``; every ``int(step / 3)``-th patch from the first,
   below patch ``v - 1`` (upstream: ``arange(0, 575, ...)`` for 576 patches), is kept as well.
4. Each kept patch ``i`` becomes ``x_i + sum_j a_j * x_j`` over its ``neighbours`` (32) most
   similar other valid patches of the frame, kept or not, by cosine similarity of the key states
   (``signals["keys"]``). The weights are the raw attentions (not normalised), as upstream.
5. One extra token per frame: ``sum_j a_j * x_j`` over the patches not kept
   (``summary_token``), appended after the kept tokens: ``Reduction.extra`` ``[B, T, D]``, slot t
   for frame t, ``extra_valid`` False for a frame that dropped nothing.

Where upstream crashes or is undefined, tokenreduce documents a rule: no outlier (upstream divides
by zero) -> no top patches and a sampling stride of ``max(1, v // 3)``; a stride of 0 (ratio above
1/3, upstream's ``arange`` fails) -> 1; fewer than ``neighbours`` other patches -> all of them;
at least the first patch is sampled (a one-patch frame keeps it); a frame that keeps every patch
makes no summary token. Ties (equal attention or similarity) prefer the lower flat index.
Differences from upstream: kept tokens stay in their original order (upstream emits the top
patches by decreasing attention, then the samples); the summary tokens follow all kept tokens.
The kept count is decided by the content (``planned_counts`` is ``None``).

Budget language: with ``ratio`` r (or ``count``) the sample's ``ceil(r N)`` tokens reach the LLM,
summary tokens counted. They are split over the frames in proportion to their valid patches
(``proportional_counts``); a frame of ``k`` tokens keeps one summary token when ``2 <= k < v``
(and ``summary_token``), its IQR outliers by attention (at most ``k`` minus the summary), and fills
the rest with evenly spaced spatial samples of its other patches (``even_spacing_mask``); merging
and the summary token follow upstream's steps 4 and 5. Without a budget the count is upstream's
adaptive one.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from tokenreduce.errors import ConfigError
from tokenreduce.frames import frame_rows, frame_slots_as_extra, sample_rows
from tokenreduce.interfaces import BudgetConfig, BudgetedReducer, EncoderConfig, Signal, Stage
from tokenreduce.registry import register_strategy
from tokenreduce.selection import (
    at_least_float32,
    even_spacing_mask,
    proportional_counts,
    top_k_exact,
    top_k_mask,
)
from tokenreduce.tokens import Reduction, Role, VisualTokens


def _lerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """numpy's ``_lerp``: ``a + (b - a) t`` for ``t < 0.5``, ``b - (b - a)(1 - t)`` otherwise."""
    diff = b - a
    return torch.where(t >= 0.5, b - diff * (1 - t), a + diff * t)


def percentile(values: torch.Tensor, valid: torch.Tensor, q: float) -> torch.Tensor:
    """Per row, numpy's ``percentile(row[valid], 100 * q)`` (method "linear") in float32."""
    count = valid.sum(dim=1, keepdim=True)
    ordered = torch.sort(values.float().masked_fill(~valid, float("inf")), dim=1).values
    virtual = (count - 1).clamp(min=0).float() * q
    below = virtual.floor()
    lower = ordered.gather(1, below.long())
    upper = ordered.gather(1, torch.minimum(below.long() + 1, (count - 1).clamp(min=0)))
    return _lerp(lower, upper, virtual - below).squeeze(1)


def outlier_counts(attention: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Long ``[F]``: valid entries above ``Q3 + 1.5 * IQR`` of their row (float32, as upstream)."""
    q1, q3 = percentile(attention, valid, 0.25), percentile(attention, valid, 0.75)
    bound = q3 + 1.5 * (q3 - q1)
    return (valid & (attention.float() > bound.unsqueeze(1))).sum(dim=1)


def kept_rows(kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions ``[F, K]`` of each row's kept entries in order, and which of the ``K`` are real."""
    counts = kept.sum(dim=1, keepdim=True)
    size = max(int(counts.max()), 1)
    order = torch.sort((~kept).to(torch.int8), dim=1, stable=True).indices[:, :size]
    return order, torch.arange(size, device=kept.device) < counts


@register_strategy("prumerge_plus")
class PruMergePlus(BudgetedReducer):
    """PruMerge+: IQR-outlier CLS-attention tokens plus spatial samples, each merged with its
    nearest neighbours by key (encoder stage; adaptive count, or a ratio / count budget).

    Parameters: ``ratio`` or ``count`` (default: upstream's adaptive count), ``neighbours``
    (default 32), ``summary_token`` (default True). Needs ``importance`` (CLS attention per patch)
    and ``signals["keys"]`` (key states).
    """

    stage: ClassVar[Stage] = Stage.ENCODER
    requires: ClassVar[frozenset[Signal]] = frozenset({Signal.IMPORTANCE, Signal.KEYS})

    @dataclasses.dataclass
    class Config(EncoderConfig, BudgetConfig):
        neighbours: int = 32
        summary_token: bool = True
        encoder_layer: int = -1  # upstream reads the last layer's attention

        default_ratio: ClassVar[float | None] = None  # no budget: upstream's adaptive count

        def validate(self) -> None:
            super().validate()
            if self.neighbours < 1:
                raise ConfigError(f"{self.name}.neighbours must be >= 1, got {self.neighbours}")

    @classmethod
    def examples(cls) -> list[dict[str, Any]]:
        return [{"ratio": 0.3}, {}, {"count": 5, "neighbours": 2, "summary_token": False}]

    def frame_budgets(self, tokens: VisualTokens) -> torch.Tensor | None:
        """Long ``[B*T]``: tokens each frame hands on (patches and summary), or ``None`` without a
        ratio / count budget."""
        if self.config.given_budget() is None:
            return None
        t = tokens.grid[0]
        per_frame = frame_rows(tokens.flat_valid(), t).sum(dim=1).reshape(tokens.batch_size, t)
        return proportional_counts(per_frame, self.keep_counts(tokens)).reshape(-1)

    def summaries(self, budgets: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Bool ``[F]``: the frames that hand on a summary token under a budget."""
        return (budgets >= 2) & (budgets < valid.sum(dim=1)) & self.config.summary_token

    def planned_counts(self, tokens: VisualTokens) -> torch.Tensor | None:
        budgets = self.frame_budgets(tokens)
        if budgets is None:
            return None
        valid = frame_rows(tokens.flat_valid(), tokens.grid[0])
        patches = budgets - self.summaries(budgets, valid).long()
        return patches.reshape(tokens.batch_size, -1).sum(dim=1)

    def select_at_budget(self, attention: torch.Tensor, valid: torch.Tensor,
                         patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per frame row: ``(top, sampled)`` with exactly ``patches[f]`` patches: the IQR outliers
        by attention (at most ``patches[f]``), then evenly spaced samples of the other patches."""
        top = top_k_mask(attention, torch.minimum(outlier_counts(attention, valid), patches), valid)
        sampled = even_spacing_mask(valid & ~top, patches - top.sum(dim=1))
        return top, sampled

    def select(self, attention: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per frame row: ``(top, sampled)`` bool ``[F, P]`` (steps 1-3)."""
        count = valid.sum(dim=1).double()
        outliers = outlier_counts(attention, valid)
        ratio = outliers.double() / count.clamp(min=1)
        top = top_k_mask(attention, (count * ratio).floor().long(), valid)  # int(N * ratio), as upstream
        step = torch.where(outliers > 0, (1.0 / ratio).floor(), count)
        stride = torch.div(step, 3, rounding_mode="floor").clamp(min=1).long().unsqueeze(1)
        rank = valid.long().cumsum(dim=1) - 1
        end = (count.long() - 1).clamp(min=1).unsqueeze(1)
        sampled = valid & (rank < end) & (rank % stride == 0)
        return top, sampled & ~top

    def merge(self, features: torch.Tensor, keys: torch.Tensor, attention: torch.Tensor, valid: torch.Tensor,
              kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Step 4 per frame row: the features with every kept token merged, and which absorbed any.

        Only the ``neighbours`` nearest patches of each kept token are read (one weighted
        ``embedding_bag``), not a dense ``[kept, P]`` weight matrix times every patch.
        """
        frames, patches, dim = features.shape
        positions, real = kept_rows(kept)
        keys = at_least_float32(keys)
        centres = keys.gather(1, positions.unsqueeze(-1).expand(-1, -1, keys.shape[-1]))
        centres /= torch.linalg.vector_norm(centres, dim=-1, keepdim=True).clamp(min=1e-12)  # F.normalize
        # cosine = (unit centre key . key) / |key|: the patches' norms divide the [kept, P] products
        # instead of normalising every key first (a copy of all keys)
        similarity = centres @ keys.transpose(1, 2)
        similarity /= torch.linalg.vector_norm(keys, dim=-1).clamp(min=1e-12).unsqueeze(1)
        itself = torch.arange(patches, device=valid.device) == positions.unsqueeze(-1)
        similarity.masked_fill_(itself | ~valid.unsqueeze(1) | ~real.unsqueeze(-1), float("-inf"))
        nearest_similarity, nearest = top_k_exact(similarity, self.config.neighbours)
        available = nearest_similarity > float("-inf")
        flat = features.reshape(frames * patches, dim)
        rows = torch.arange(frames, device=valid.device).view(-1, 1, 1) * patches + nearest
        weights = attention.to(flat.dtype).gather(1, nearest.reshape(frames, -1)).reshape(nearest.shape) * available
        width = nearest.shape[-1]
        sums = F.embedding_bag(rows.reshape(-1), flat, torch.arange(0, rows.numel(), width, device=valid.device),
                               mode="sum", per_sample_weights=weights.reshape(-1))
        counts = available.sum(dim=-1)
        # padding slots of ``positions`` have no neighbour: their sums are zero and add nothing
        centre = (torch.arange(frames, device=valid.device).unsqueeze(1) * patches + positions).reshape(-1)
        merged = flat.clone().index_add_(0, centre, sums)
        absorbed_any = torch.zeros(frames * patches, dtype=torch.bool, device=valid.device)
        absorbed_any[centre[real.reshape(-1)]] = (counts > 0)[real]
        return merged.reshape(features.shape), absorbed_any.reshape(frames, patches)

    def reduce(self, tokens: VisualTokens) -> Reduction:
        batch, t = tokens.batch_size, tokens.grid[0]
        valid = frame_rows(tokens.flat_valid(), t)
        # padding may hold any importance (NaN, -inf) and keys: zero them, as 0 * NaN would spread
        attention = frame_rows(tokens.flat_importance(), t).masked_fill(~valid, 0)
        keys = frame_rows(tokens.flat_signal("keys"), t).masked_fill(~valid.unsqueeze(-1), 0)
        features = frame_rows(tokens.flat_features(), t)
        budgets = self.frame_budgets(tokens)
        if budgets is None:
            top, sampled = self.select(attention, valid)
            summarise = valid.new_full((valid.shape[0],), self.config.summary_token)
        else:
            summarise = self.summaries(budgets, valid)
            top, sampled = self.select_at_budget(attention, valid, budgets - summarise.long())
        kept = top | sampled
        merged, absorbed_any = self.merge(features, keys, attention, valid, kept)
        roles = (torch.where(top, int(Role.IMPORTANT), 0) | torch.where(sampled, int(Role.SAMPLED), 0)
                 | torch.where(absorbed_any, int(Role.MERGED), 0))
        extra = extra_valid = None
        if self.config.summary_token:
            dropped = valid & ~kept & summarise.unsqueeze(1)
            weights = attention.to(features.dtype) * dropped
            summary = (weights.unsqueeze(1) @ features).squeeze(1)
            extra, extra_valid = frame_slots_as_extra(summary.reshape(batch, t, 1, -1),
                                                      dropped.any(dim=1).reshape(batch, t, 1))
            roles = roles | torch.where(dropped, int(Role.ABSORBED), 0)
        return Reduction(sample_rows(kept, batch), sample_rows(roles, batch).to(torch.int32), grid=tokens.grid,
                         valid=tokens.flat_valid(), features=sample_rows(merged, batch), extra=extra,
                         extra_valid=extra_valid, info={"top": sample_rows(top, batch).sum(dim=1).tolist()})
