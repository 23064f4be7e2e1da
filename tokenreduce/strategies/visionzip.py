"""``visionzip``: VisionZip (Yang et al., 2024): dominant tokens by CLS attention plus contextual
tokens merged by key similarity, inside the vision encoder.

Official semantics (dvlab-research/VisionZip), per image -- here per frame, each frame being one
image to the encoder (counts are per frame):

- Dominant: the ``dominant - 1`` patches with the highest CLS attention, plus the CLS token
  itself, which counts as one of ``dominant`` (``cls_token=True``). Without a CLS token
  (``cls_token=False``: SigLIP, Qwen ViT) there is no official rule; tokenreduce takes the top
  ``dominant`` patches by ``importance`` = the attention each patch receives, averaged over
  queries and heads, which the adapter supplies.
- Contextual: the ``M`` remaining valid patches, in order, compared by their head-averaged key
  states (``signals["keys"]``) after L2 normalisation. Targets are every ``max(1, M //
  contextual)``-th remaining patch, the first ``contextual`` of them; every other remaining patch
  is assigned to its most similar target (dot product of the normalised keys; the first target on
  ties); a contextual token is ``target + mean(assigned)`` (the target alone when nothing is
  assigned) -- the official formula, not the average of the group.

Output: the dominant patches are kept in place (``keep_mask``, original order); the contextual
tokens are new tokens in ``Reduction.extra`` ``[B, T * contextual, D]``: slot ``e`` is target
``e % contextual`` of frame ``e // contextual``, and ``extra_valid`` marks the slots a small frame
does not fill (an adapter that wants upstream's per-image order ``[CLS, dominant, contextual]``
interleaves by frame). The CLS token is not on the grid; ``info["cls_token"]`` says it counted as
a dominant token. The supported models have no CLS token in their LLM input (HF LLaVA drops it
before the projector), so there a frame reaches the LLM as ``dominant - 1`` patches plus the
contextual tokens (``dominant`` patches with ``cls_token=False``).

Small frames clip: a frame with ``v`` valid patches keeps ``min(dominant - 1, v)`` (or
``min(dominant, v)`` without CLS) and makes ``min(contextual, M)`` contextual tokens: when ``M <
contextual`` every remaining patch is a target and stands alone (upstream has no rule there: its
sum fails on a shape mismatch, or repeats the one target when ``M = 1``).
Presets: ``preset=64 / 128 / 192`` means ``dominant, contextual = 54, 10 / 108, 20 / 162, 30``.

Budget language: ``ratio`` r (or ``count``) is the number of tokens that reach the LLM, contextual
tokens counted: the sample's ``ceil(r N)`` tokens are split over its frames in proportion to their
valid patches (exactly, ``proportional_counts``); a frame of ``v`` patches handing on ``k`` tokens gets
``c = min(round(k · 10/64), k - 1, v - k)`` contextual tokens (the presets' share, half rounded up;
each stands for at least two patches, none when the frame keeps everything) and ``k - c`` dominant
patches. ``dominant``/``contextual``/``preset`` and ``cls_token`` are the alternative, upstream's
per-image budget; the default (no budget given) is upstream's 191 + 30.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from tokenreduce.errors import ConfigError
from tokenreduce.frames import frame_rows, frame_slots_as_extra, frame_top_k
from tokenreduce.interfaces import BudgetConfig, BudgetedReducer, EncoderConfig, Signal, Stage
from tokenreduce.registry import register_strategy
from tokenreduce.selection import at_least_float32, proportional_counts
from tokenreduce.tokens import Reduction, Role, VisualTokens

PRESETS: dict[int, tuple[int, int]] = {64: (54, 10), 128: (108, 20), 192: (162, 30)}
DEFAULT_COUNTS = (191, 30)  # the official ``visionzip(model)`` defaults
CONTEXTUAL_SHARE = (10, 64)  # the presets give 10 of every 64 tokens to contextual tokens


def contextual_share(kept: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Contextual tokens of a frame with ``valid`` patches handing on ``kept`` tokens under a ratio /
    count budget: ``min(round(kept · 10/64), kept - 1, valid - kept)`` (half rounded up), so that
    every contextual token stands for at least two patches and a frame that keeps everything
    merges nothing."""
    part, whole = CONTEXTUAL_SHARE
    share = (kept * part + whole // 2) // whole
    return torch.minimum(torch.minimum(share, kept - 1), valid - kept).clamp(min=0)


def contextual_tokens(
    features: torch.Tensor, keys: torch.Tensor, remaining: torch.Tensor, counts: torch.Tensor, contextual: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """VisionZip's contextual merging, one row per frame.

    ``features`` ``[F, P, D]``, ``keys`` ``[F, P, Dk]``, ``remaining`` bool ``[F, P]`` (the valid
    non-dominant patches), ``counts`` long ``[F]``: the contextual tokens each frame makes (at most
    ``contextual``). Returns ``(tokens [F, C, D], token_valid [F, C])`` with ``C = contextual``; a
    frame with ``M < counts[f]`` remaining patches has ``M`` valid tokens; a frame with a count of
    0 makes none (its remaining patches are dropped).
    """
    frames, patches, _ = features.shape
    wanted = counts.to(remaining.device).view(frames, 1)
    rank = remaining.long().cumsum(dim=1) - 1
    left = remaining.sum(dim=1, keepdim=True)
    step = torch.clamp(left // wanted.clamp(min=1), min=1)
    slot = torch.div(rank, step, rounding_mode="floor")
    targets = remaining & (rank % step == 0) & (slot < wanted)
    others = remaining & ~targets & (wanted > 0)

    # targets' unit keys, gathered (a frame's slot c is its c-th target; unused slots read row 0
    # and are masked below)
    frame_of = torch.arange(frames, device=features.device).unsqueeze(1).expand(-1, patches)
    target_row = torch.zeros(frames * contextual, dtype=torch.long, device=features.device)
    target_row[(frame_of * contextual + slot)[targets]] = targets.reshape(-1).nonzero().flatten()
    keys = at_least_float32(keys)
    target_keys = F.normalize(keys.reshape(frames * patches, -1)[target_row], dim=-1)
    token_valid = torch.arange(contextual, device=keys.device) < torch.minimum(left, wanted)
    # each patch's key against the targets' unit keys: the cosine times the patch's own norm, a
    # positive factor of the whole row that does not change which target is the most similar
    similarity = target_keys.reshape(frames, contextual, -1) @ keys.transpose(1, 2)  # [F, C, P]
    similarity = similarity.masked_fill(~token_valid.unsqueeze(-1), float("-inf"))
    assigned = similarity.argmax(dim=1)  # the first target on ties

    # every token's sum: one embedding_bag over the assigned patches, grouped by (frame, target),
    # each read once in place (no [F, P, D] mask product or scatter)
    flat = features.reshape(frames * patches, -1)
    members = others.reshape(-1).nonzero().flatten()
    bag = (frame_of * contextual + assigned).reshape(-1)[members]
    counts = torch.bincount(bag, minlength=frames * contextual)
    sums = F.embedding_bag(members[torch.argsort(bag, stable=True)], flat, counts.cumsum(0) - counts, mode="sum")
    mean = sums / counts.clamp(min=1).to(features.dtype).unsqueeze(-1)
    tokens = flat[target_row] + mean
    return tokens.reshape(frames, contextual, -1), token_valid


@register_strategy("visionzip")
class VisionZip(BudgetedReducer):
    """VisionZip: per frame, keep dominant patches by CLS attention, merge the rest into contextual
    tokens by key similarity (encoder stage).

    Parameters: one budget: ``ratio`` or ``count`` (tokens reaching the LLM, contextual ones
    counted), or upstream's ``dominant`` (counting the CLS token when ``cls_token``, default
    true) + ``contextual`` per frame, or ``preset`` 64/128/192 (default: 191 + 30). Needs
    ``importance`` (CLS attention per patch, or attention received without CLS) and
    ``signals["keys"]`` (head-averaged key states of the same encoder layer).
    """

    stage: ClassVar[Stage] = Stage.ENCODER
    requires: ClassVar[frozenset[Signal]] = frozenset({Signal.IMPORTANCE, Signal.KEYS})

    @dataclasses.dataclass
    class Config(EncoderConfig, BudgetConfig):
        dominant: int | None = None
        contextual: int | None = None
        preset: int | None = None
        cls_token: bool | None = None

        default_ratio: ClassVar[float | None] = None
        alternative_budgets: ClassVar[tuple[str, ...]] = ("dominant", "contextual", "preset", "cls_token")

        def validate(self) -> None:
            super().validate()
            if self.given_budget() in ("ratio", "count"):
                return
            if self.preset is not None:
                if self.preset not in PRESETS:
                    raise ConfigError(f"{self.name}.preset must be one of {sorted(PRESETS)}, got {self.preset}")
                for field, value in zip(("dominant", "contextual"), PRESETS[self.preset]):
                    given = getattr(self, field)
                    if given is not None and given != value:
                        raise ConfigError(f"{self.name}: preset={self.preset} means {field}={value}, "
                                          f"got {field}={given}")
                    object.__setattr__(self, field, value)
            for field, default in zip(("dominant", "contextual"), DEFAULT_COUNTS):
                if getattr(self, field) is None:
                    object.__setattr__(self, field, default)
            if self.cls_token is None:
                object.__setattr__(self, "cls_token", True)
            if self.dominant < 1:
                raise ConfigError(f"{self.name}.dominant must be >= 1, got {self.dominant}")
            if self.contextual < 0:
                raise ConfigError(f"{self.name}.contextual must be >= 0, got {self.contextual}")

    @classmethod
    def examples(cls) -> list[dict[str, Any]]:
        return [{"ratio": 0.3}, {"dominant": 3, "contextual": 1, "cls_token": False}, {"count": 7},
                {"dominant": 4, "contextual": 2}]

    def frame_budgets(self, tokens: VisualTokens) -> tuple[torch.Tensor, torch.Tensor]:
        """Long ``[B, T]`` dominant patches (the CLS token not included) and long ``[B, T]``
        contextual tokens of every frame."""
        t = tokens.grid[0]
        per_frame = frame_rows(tokens.flat_valid(), t).sum(dim=1).reshape(tokens.batch_size, t)
        cfg = self.config
        if cfg.dominant is None:  # a ratio / count budget
            kept = proportional_counts(per_frame, self.keep_counts(tokens))
            contextual = contextual_share(kept, per_frame)
            return kept - contextual, contextual
        return (per_frame.clamp(max=cfg.dominant - int(cfg.cls_token)),
                torch.full_like(per_frame, cfg.contextual))

    def contextual_slots(self, tokens: VisualTokens) -> int:
        """Contextual-token slots per frame: the most any frame of this grid can make."""
        if self.config.dominant is not None:
            return self.config.contextual
        _, h, w = tokens.grid
        kept = torch.arange(h * w + 1)
        return int(contextual_share(kept, torch.full_like(kept, h * w)).max())

    def planned_counts(self, tokens: VisualTokens) -> torch.Tensor:
        return self.frame_budgets(tokens)[0].sum(dim=1)

    def reduce(self, tokens: VisualTokens) -> Reduction:
        batch, t = tokens.batch_size, tokens.grid[0]
        valid = tokens.flat_valid()
        dominant_counts, contextual_counts = self.frame_budgets(tokens)
        dominant = frame_top_k(tokens.flat_importance(), dominant_counts, valid, t)
        roles = torch.where(dominant, int(Role.IMPORTANT), 0).to(torch.int32)
        extra = extra_valid = None
        slots = self.contextual_slots(tokens)
        if slots > 0:
            rows, valid_slots = contextual_tokens(
                frame_rows(tokens.flat_features(), t), frame_rows(tokens.flat_signal("keys"), t),
                frame_rows(valid & ~dominant, t), contextual_counts.reshape(-1), slots)
            extra, extra_valid = frame_slots_as_extra(rows.reshape(batch, t, slots, -1),
                                                      valid_slots.reshape(batch, t, -1))
            merging = (contextual_counts > 0).repeat_interleave(valid.shape[1] // t, dim=1)
            roles |= torch.where(valid & ~dominant & merging, int(Role.ABSORBED), 0).to(torch.int32)
        cls_token = bool(self.config.cls_token)
        return Reduction(dominant, roles, grid=tokens.grid, valid=valid, extra=extra,
                         extra_valid=extra_valid, info={"cls_token": cls_token})
