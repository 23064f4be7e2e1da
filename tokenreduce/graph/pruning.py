"""Trim a candidate set to an exact count by importance, or fill it up (ST-SimDiff's final step)."""

from __future__ import annotations

import torch

from tokenreduce.selection import top_k_mask


def trim_or_fill(importance: torch.Tensor, valid: torch.Tensor, candidates: torch.Tensor,
                 counts: torch.Tensor) -> torch.Tensor:
    """Bool ``[B, N]`` with exactly ``counts[b]`` valid tokens of sample ``b`` (fewer when it has
    fewer): the most important candidates when there are too many; every candidate plus the most
    important other valid tokens when there are too few. Ties keep the lower flat index."""
    candidates = candidates & valid
    trimmed = top_k_mask(importance, counts, candidates)
    missing = (counts.to(valid.device) - trimmed.sum(dim=1)).clamp(min=0)
    return trimmed | top_k_mask(importance, missing, valid & ~candidates)
