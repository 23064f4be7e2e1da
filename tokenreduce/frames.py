"""Per-frame views for encoder-stage strategies: every frame of a video is one image to the encoder.

Flat index ``n = t*H*W + h*W + w`` is frame-major, so a ``[B, N, ...]`` tensor is ``[B*T, H*W, ...]``
one row per frame without copying. VisionZip, FasterVLM and PruMerge+ select and merge within a
frame; these helpers give them the frame rows, a per-frame top-k, and the packing of new tokens
made per frame into ``Reduction.extra``.
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


def pack_frame_slots(
    slots: torch.Tensor, slot_valid: torch.Tensor
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Pack new tokens made per frame into ``Reduction.extra``.

    ``slots`` ``[B, T, C, D]`` with ``slot_valid`` bool ``[B, T, C]``. Returns ``(extra, extra_valid,
    extra_frame)``: ``[B, E, D]``, bool ``[B, E]`` and long ``[B, E]`` (the frame of each token, -1
    for padding), the real tokens first in (frame, slot) order, ``E`` the largest real count of the
    batch; ``(None, None, None)`` when no sample has any.
    """
    b, t, c, d = slots.shape
    flags = slot_valid.reshape(b, t * c)
    size = int(flags.sum(dim=1).max()) if flags.numel() else 0
    if size == 0:
        return None, None, None
    order = torch.sort((~flags).to(torch.int8), dim=1, stable=True).indices[:, :size]
    extra = slots.reshape(b, t * c, d).gather(1, order.unsqueeze(-1).expand(b, size, d))
    extra_valid = flags.gather(1, order)
    frame = torch.arange(t, device=slots.device).repeat_interleave(c).expand(b, -1).gather(1, order)
    extra = torch.where(extra_valid.unsqueeze(-1), extra, torch.zeros_like(extra))
    return extra, extra_valid, torch.where(extra_valid, frame, -1)
