"""Segments of consecutive frames, cut where the mean frame changes (FlashVID's DySeg).

FlashVID (Fanziyang-v/FlashVID, ``flashvid/utils.py``, ``segment`` and ``additional_segment``)
compares each frame's mean token with the next one's (cosine); a similarity below ``threshold`` is
a cut. With fewer than ``min_segments`` segments it adds cuts at the most dissimilar remaining
transitions until there are ``min_segments`` (or every frame is a segment). Ties prefer the earlier
transition. A frame without valid tokens has a zero mean, whose similarity to anything is 0.
"""

from __future__ import annotations

import torch

from tokenreduce.graph.blocked import next_frame_cosine
from tokenreduce.selection import top_k_mask


def frame_means(features: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``[B, T, D]``: the mean of every frame's valid tokens (``features`` ``[B, T, P, D]``, ``valid``
    ``[B, T, P]``), in the features' dtype; zeros for a frame without valid tokens."""
    weights = valid.to(features.dtype).unsqueeze(-1)
    counts = valid.sum(dim=2, keepdim=True).clamp(min=1).to(features.dtype)
    return (features * weights).sum(dim=2) / counts


def segment_cuts(means: torch.Tensor, threshold: float, min_segments: int, complementary: bool) -> torch.Tensor:
    """Bool ``[B, T-1]``: transition ``t -> t+1`` starts a new segment (``means`` ``[B, T, D]``)."""
    b, t, d = means.shape
    similarity = next_frame_cosine(means.reshape(b, t, 1, 1, d)).reshape(b, t - 1)
    cuts = similarity < threshold
    if complementary:
        missing = (min_segments - 1 - cuts.sum(dim=1)).clamp(min=0)
        cuts |= top_k_mask(-similarity, missing, ~cuts)  # the most dissimilar transitions not cut yet
    return cuts


def segment_ids(cuts: torch.Tensor) -> torch.Tensor:
    """Long ``[B, T]``: each frame's segment, numbered from 0 per sample."""
    return torch.nn.functional.pad(cuts.long().cumsum(dim=1), (1, 0))
