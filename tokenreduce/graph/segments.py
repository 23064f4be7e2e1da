"""Segment operations over community labels, for all communities of a batch at once.

Labels are ``[B, N]`` long, comparable within a sample; a label is made global by adding
``b*N``. Padding (``valid == False``) never belongs to a community: it is excluded from sizes
and ranks. Everything is sorts, ``scatter_reduce`` and ``index_add_``: no loop over communities.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch

from tokenreduce.budget import scaled_count


def global_labels(labels: torch.Tensor) -> torch.Tensor:
    """``[B*N]``: ``b*N + label``, unique across the batch."""
    b, n = labels.shape
    offset = torch.arange(b, device=labels.device).unsqueeze(1) * n
    return (labels + offset).reshape(-1)


def canonical_labels(labels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Relabel every community by its smallest valid member's index; padding labels itself.

    ``labels`` may be any non-negative long values that are equal within a community.
    """
    b, n = labels.shape
    span = int(labels.max()) + 1
    keys = (labels + torch.arange(b, device=labels.device).unsqueeze(1) * span).reshape(-1)
    _, compact = torch.unique(keys, return_inverse=True)
    own = torch.arange(n, device=labels.device).expand(b, n)
    member = torch.where(valid, own, n).reshape(-1)
    smallest = torch.full((b * n,), n, dtype=torch.long, device=labels.device)
    smallest.scatter_reduce_(0, compact, member, reduce="amin")
    return torch.where(valid, smallest[compact].reshape(b, n), own)


def community_sizes(labels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Long ``[B, N]``: the size of each valid token's community (0 at padding)."""
    flat = global_labels(labels)
    counts = torch.zeros(flat.shape[0], dtype=torch.long, device=labels.device)
    counts.index_add_(0, flat, valid.reshape(-1).long())
    return torch.where(valid, counts[flat].reshape(labels.shape), 0)


def rank_in_community(labels: torch.Tensor, score: torch.Tensor, eligible: torch.Tensor) -> torch.Tensor:
    """Long ``[B, N]``: 0-based rank of each eligible token within its community, by descending
    ``score``; equal scores rank the lower flat index first. Ineligible tokens get rank ``N``."""
    b, n = labels.shape
    flat_label = global_labels(labels)
    key = score.float().reshape(-1).masked_fill(~eligible.reshape(-1), float("-inf"))
    by_score = torch.sort(key, descending=True, stable=True).indices  # ties: lower index first
    by_label = by_score[torch.sort(flat_label[by_score], stable=True).indices]
    grouped_labels = flat_label[by_label]
    position = torch.arange(b * n, device=labels.device)
    is_start = torch.ones_like(grouped_labels, dtype=torch.bool)
    is_start[1:] = grouped_labels[1:] != grouped_labels[:-1]
    start = torch.cummax(torch.where(is_start, position, 0), dim=0).values
    rank = torch.empty_like(position)
    rank[by_label] = position - start
    return torch.where(eligible, rank.reshape(b, n), n)


def split_oversized(labels: torch.Tensor, valid: torch.Tensor, max_size: torch.Tensor) -> torch.Tensor:
    """Split every community larger than ``max_size[b]`` into ``k = ceil(size / max_size)``
    consecutive pieces in flat (sequence) order; the member of rank ``r`` goes to piece
    ``floor(r * k / size)``, so piece sizes differ by at most one and never exceed ``max_size``.
    Returns canonical labels (smallest member index)."""
    b, n = labels.shape
    sizes = community_sizes(labels, valid)
    order = rank_in_community(labels, torch.zeros(b, n, device=labels.device), valid)  # flat order
    limit = max_size.to(labels.device).unsqueeze(1)
    pieces = torch.div(sizes + limit - 1, limit, rounding_mode="floor").clamp(min=1)
    piece = torch.div(order * pieces, sizes.clamp(min=1), rounding_mode="floor")
    split = torch.where(valid & (sizes > limit), labels * n + piece, labels * n)
    return canonical_labels(split, valid)


def sqrt_sizes(counts: torch.Tensor) -> torch.Tensor:
    """``floor(sqrt(n))`` (at least 1) per sample: the paper's community size cap."""
    return torch.tensor([max(1, math.isqrt(int(c))) for c in counts.tolist()], dtype=torch.long,
                        device=counts.device)


def community_keep_counts(sizes: torch.Tensor, ratios: list[Fraction | float]) -> torch.Tensor:
    """Long ``[B, N]``: ``ceil(size * r_b)`` (paper eq. 5) computed exactly, per token.

    ``r_b`` is the sample's retention rate (a float is read as the decimal it prints as). The
    table is evaluated once per distinct community size (at most ``sqrt(2N)`` of them).
    """
    out = torch.zeros_like(sizes)
    for b, ratio in enumerate(ratios):
        distinct = torch.unique(sizes[b])
        wanted = [size_keep(int(s), ratio) for s in distinct.tolist()]
        table = torch.tensor(wanted, dtype=torch.long, device=sizes.device)
        out[b] = table[torch.searchsorted(distinct, sizes[b])]
    return out


def size_keep(size: int, ratio: Fraction | float) -> int:
    """``ceil(size * ratio)`` exactly."""
    if isinstance(ratio, Fraction):
        return math.ceil(ratio * size)
    return scaled_count(size, ratio, "ceil")
