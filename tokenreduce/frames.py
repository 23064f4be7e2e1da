"""Per-frame views for encoder-stage strategies: every frame of a video is one image to the encoder.

Flat index ``n = t*H*W + h*W + w`` is frame-major, so a ``[B, N, ...]`` tensor is ``[B*T, H*W, ...]``
one row per frame without copying. VisionZip, FasterVLM and PruMerge+ select and merge within a
frame; these helpers give them the frame rows, a per-frame top-k, and the layout of new tokens
made per frame in ``Reduction.extra``.
"""

from __future__ import annotations

import torch

from tokenreduce.selection import top_k_mask


def frame_rows(x: torch.Tensor, frames: int) -> torch.Tensor:
    """``[B, N, ...]`` -> ``[B*T, N/T, ...]`` (one row per frame)."""
    b, n = x.shape[:2]
    return x.reshape(b * frames, n // frames, *x.shape[2:])


def sample_rows(x: torch.Tensor, batch: int) -> torch.Tensor:
    """``[B*T, P, ...]`` -> ``[B, T*P, ...]`` (the inverse of ``frame_rows``)."""
    return x.reshape(batch, -1, *x.shape[2:])


def frame_top_k(scores: torch.Tensor, counts: torch.Tensor, valid: torch.Tensor, frames: int) -> torch.Tensor:
    """Bool ``[B, N]``: the ``counts[b, t]`` highest-scoring valid tokens of every frame.

    Ties keep the lower flat index (``selection.top_k_mask``); ``counts`` is long ``[B, T]``.
    """
    rows = top_k_mask(frame_rows(scores, frames), counts.reshape(-1), frame_rows(valid, frames))
    return sample_rows(rows, scores.shape[0])


def frame_slots_as_extra(slots: torch.Tensor, slot_valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """New tokens made per frame as ``Reduction.extra``: ``C`` slots per frame, frame-major.

    ``slots`` ``[B, T, C, D]`` with ``slot_valid`` bool ``[B, T, C]`` -> ``(extra [B, T*C, D],
    extra_valid [B, T*C])``; slot ``e`` belongs to frame ``e // C``. The layout depends on the grid
    only, so a sample gives the same extra tensor alone and in a batch; unused slots are zeros and
    ``extra_valid`` is ``False`` there.
    """
    b, t, c, d = slots.shape
    extra = torch.where(slot_valid.unsqueeze(-1), slots, torch.zeros_like(slots))
    return extra.reshape(b, t * c, d), slot_valid.reshape(b, t * c)
