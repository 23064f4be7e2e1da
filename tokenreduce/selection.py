"""Batched, deterministic selection primitives shared by every strategy.

All functions work on ``[B, N]`` tensors at once (no loop over tokens) and break ties the same
way everywhere: a higher score first, and among equal scores the lower flat index first.
"""

from __future__ import annotations

import torch


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` as float32, or in its own dtype when that is wider (float64).

    Rankings and similarities are computed in the input's precision, as the reference code ranks
    its tensors: half-precision inputs are widened exactly, float64 is never narrowed (which
    would turn distinct values into ties).
    """
    return x.to(torch.promote_types(x.dtype, torch.float32))


def top_k_mask(scores: torch.Tensor, counts: torch.Tensor, eligible: torch.Tensor | None = None) -> torch.Tensor:
    """Bool ``[B, N]``: the ``counts[b]`` highest-scoring eligible tokens of each sample.

    Scores are compared in ``at_least_float32`` precision. Ties: equal scores keep the lower
    flat index. ``counts[b]`` larger than the number of eligible tokens keeps them all.
    """
    if eligible is None:
        eligible = torch.ones_like(scores, dtype=torch.bool)
    key = at_least_float32(scores).masked_fill(~eligible, float("-inf"))
    order = torch.sort(key, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(scores.shape[1], device=scores.device).expand_as(order))
    return (rank < counts.to(scores.device).unsqueeze(1)) & eligible


def top_k_exact(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` highest scores of every row of ``scores`` ``[..., N]`` and their indices, both
    ``[..., k]``, by ``top_k_mask``'s rule: among equal scores the lower index is chosen.

    ``torch.topk`` alone may pick any of several equal scores at the boundary; rows where equal
    scores straddle it (rare with real-valued scores) are redone exactly, so no row is sorted
    whole. Rows with fewer than ``k`` finite scores return some ``-inf`` entries (callers treat
    them as absent). ``k`` is clipped to ``N``.
    """
    k = min(k, scores.shape[-1])
    values, indices = torch.topk(scores, k, dim=-1)
    threshold = values[..., -1:]
    straddle = ((scores == threshold).sum(dim=-1) > (values == threshold).sum(dim=-1)) & (
        threshold.squeeze(-1) > float("-inf"))
    if k and bool(straddle.any()):
        rows = straddle.nonzero(as_tuple=True)
        row_scores, row_threshold = scores[rows], threshold[rows]
        above, level = row_scores > row_threshold, row_scores == row_threshold
        need = k - above.sum(dim=-1, keepdim=True)
        chosen = (above | (level & (level.cumsum(dim=-1) <= need))).nonzero()[:, 1].reshape(-1, k)
        indices[rows] = chosen
        values[rows] = row_scores.gather(-1, chosen)
    return values, indices


def rank_within(eligible: torch.Tensor, segment: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """For each eligible token: its 0-based rank among the eligible tokens of its segment (in
    flat order) and the segment's eligible count. ``segment`` is a long ``[N]`` or ``[B, N]``
    non-decreasing segment id (e.g. the frame); ``None`` means one segment per sample.
    Returns ``(rank, size)``, both long ``[B, N]`` (values at ineligible tokens are meaningless).
    """
    b, n = eligible.shape
    ones = eligible.long()
    if segment is None:
        segment = torch.zeros(n, dtype=torch.long, device=eligible.device)
    segment = segment.expand(b, n)
    num_segments = int(segment.max()) + 1
    cumulative = ones.cumsum(dim=1)
    sizes = torch.zeros(b, num_segments, dtype=torch.long, device=eligible.device)
    sizes.scatter_add_(1, segment, ones)
    starts = sizes.cumsum(dim=1) - sizes  # eligible tokens before each segment
    rank = cumulative - 1 - starts.gather(1, segment)
    return rank, sizes.gather(1, segment)


def even_spacing_mask(eligible: torch.Tensor, counts: torch.Tensor, segment: torch.Tensor | None = None) -> torch.Tensor:
    """Bool ``[B, N]``: ``counts`` eligible tokens per segment, evenly spaced in flat order.

    Within a segment of ``v`` eligible tokens keeping ``k``, the ``i``-th kept token has rank
    ``floor((i + 1/2) * v / k)``: the token under the centre of the ``i``-th of ``k`` equal slices.
    Vectorised as: rank ``r`` is kept when ``[r*k/v - 1/2, (r+1)*k/v - 1/2)`` holds an integer.
    ``counts`` is long ``[B]`` (one segment) or ``[B, S]`` (per segment id).
    """
    rank, size = rank_within(eligible, segment)
    if counts.ndim == 1:
        k = counts.to(eligible.device).unsqueeze(1).expand_as(rank)
    else:
        seg = (segment if segment is not None else torch.zeros_like(rank[0])).expand_as(rank)
        k = counts.to(eligible.device).gather(1, seg)
    size = size.clamp(min=1)
    # number of integers i in [r*k/v - 1/2, (r+1)*k/v - 1/2), as a difference of floors (0 or 1)
    upper = torch.div(size - 2 * rank * k, 2 * size, rounding_mode="floor")
    lower = torch.div(size - 2 * (rank + 1) * k, 2 * size, rounding_mode="floor")
    return eligible & (upper > lower)


def proportional_counts(sizes: torch.Tensor, totals: torch.Tensor) -> torch.Tensor:
    """Split ``totals[b]`` over segments in proportion to ``sizes[b, s]``, exactly.

    Segment ``s`` gets ``floor(t * C_s / n) - floor(t * C_{s-1} / n)`` where ``C`` is the cumulative
    size and ``n`` the total size: the counts sum to ``t`` and never exceed a segment's size.
    """
    cumulative = sizes.cumsum(dim=1)
    n = cumulative[:, -1:].clamp(min=1)
    t = totals.to(sizes.device).unsqueeze(1)
    upto = torch.div(t * cumulative, n, rounding_mode="floor")
    return upto - torch.nn.functional.pad(upto, (1, 0))[:, :-1]
