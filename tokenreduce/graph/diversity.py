"""Attention-calibrated max-min diversity selection (FlashVID's ADTS), for many frames at once.

FlashVID (Fanziyang-v/FlashVID, ``flashvid/token_selection.py``, ``attn_div_based_token_selection``
and ``attn_div_v2_based_token_selection``) picks, per frame, tokens that are far from each other
and attended: the cosine distance ``1 - cos(i, j)`` is scaled by the attention of ``j`` (times 1e6)
and, in v2, by ``j``'s relevance to the segment (the mean of its dot products with the segment's
mean frames). The first pick maximises the distance to the nearest other token; every next pick
maximises the distance to the nearest pick so far (greedy max-min). v1 never picks a token twice;
v2, as upstream, does not exclude earlier picks, so a frame may end with fewer distinct tokens.
The loop runs over picks (at most the per-frame budget), vectorised over frames and tokens;
``argmax`` takes the first maximum, as upstream.
"""

from __future__ import annotations

import torch

ATTENTION_SCALE = 1e6  # upstream scales the attention "to avoid numerical issues"


def calibrated_distances(features: torch.Tensor, valid: torch.Tensor, calibration: list[torch.Tensor]) -> torch.Tensor:
    """fp32 ``[F, P, P]``: ``(1 - cos(i, j))`` times each ``calibration[k][j]`` in turn (upstream's
    order of products) for the valid pairs of every frame (``features`` ``[F, P, D]``, each
    calibration ``[F, P]``); ``+inf`` where ``i`` is padding."""
    x = features.float()
    normed = x / x.norm(p=2, dim=-1, keepdim=True)
    normed = normed.masked_fill(~valid.unsqueeze(-1), 0.0)
    distances = 1.0 - torch.bmm(normed, normed.transpose(-1, -2))
    for term in calibration:
        distances = distances * term.float().unsqueeze(1)
    return distances.masked_fill(~valid.unsqueeze(2), float("inf"))


def segment_relevance(features: torch.Tensor, valid: torch.Tensor, segment: torch.Tensor) -> torch.Tensor:
    """fp32 ``[B, T, P]``: v2's event relevance, the mean over the frames ``c`` of a token's segment
    of ``token · mean(frame c)`` (``features`` ``[B, T, P, D]``, ``segment`` long ``[B, T]``)."""
    x = features.float()
    weights = valid.float().unsqueeze(-1)
    pooled = (x * weights).sum(dim=2) / valid.sum(dim=2, keepdim=True).clamp(min=1)  # [B, T, D]
    dots = torch.einsum("btpd,bcd->btpc", x, pooled)
    same = (segment.unsqueeze(2) == segment.unsqueeze(1)).float()  # [B, T, C]
    return (dots * same.unsqueeze(2)).sum(dim=-1) / same.sum(dim=-1, keepdim=True)


def max_min_diverse(distances: torch.Tensor, valid: torch.Tensor, counts: torch.Tensor, *, exclude_picked: bool) -> torch.Tensor:
    """Bool ``[F, P]``: the greedy max-min picks of every frame (``counts`` long ``[F]`` picks each)."""
    frames = distances.shape[0]
    row = torch.arange(frames, device=distances.device)
    blocked = torch.full_like(distances[:, 0], float("-inf"))
    second = torch.topk(distances, k=min(2, distances.shape[1]), dim=1, largest=False).values[:, -1, :]
    if distances.shape[1] == 1:
        second = torch.full_like(second, float("inf"))
    picked = torch.zeros_like(valid)
    nearest = torch.where(valid, second, blocked)
    for i in range(int(counts.max()) if frames else 0):  # one pick per round
        active = counts > i
        choice = nearest.argmax(dim=1)
        picked[row[active], choice[active]] = True
        if i == 0:
            nearest = torch.where(valid, distances[row, choice], blocked)
        else:
            nearest = torch.where(active.unsqueeze(1), torch.minimum(nearest, distances[row, choice]), nearest)
        if exclude_picked:
            nearest = nearest.masked_fill(picked, -1.0)
    return picked
