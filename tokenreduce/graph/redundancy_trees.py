"""Spatio-temporal redundancy trees (FlashVID's TSTM, temporal part), for many segments at once.

FlashVID (Fanziyang-v/FlashVID, ``flashvid/utils.py``, ``spatiotemporal_compression``): within a
segment, every eligible token of frame ``f`` links to its most cosine-similar eligible token of
frame ``f - 1`` (any position: redundancy is not bound to a fixed location); links above
``threshold`` are merged. When that would leave fewer than ``lower_bound`` tokens of the segment,
the threshold rises to the ``(V - lower_bound)``-th largest similarity (merging ``> it``). The
merged links form trees whose roots are the tokens that stay; walking the frames backwards,
upstream adds every merged token's running sum to its parent and divides a root by one plus its
number of *direct* children, so a root ends as ``(sum of its whole tree) / (1 + direct children)``:
that is reproduced, not the tree's mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tokenreduce.graph.segments import rank_in_community
from tokenreduce.selection import at_least_float32

NO_LINK = -1.0  # upstream's similarity of a token without an eligible previous frame


@dataclass(frozen=True)
class Trees:
    """The merge of every frame of a batch: ``merged`` bool ``[B, T, P]`` (the token joined its
    parent), ``roots`` bool ``[B, T, P]`` (eligible tokens that stay, with or without children),
    ``children`` long ``[B, T, P]`` (direct children) and ``values`` ``[B, T, P, D]`` (a root's
    new features; other tokens unchanged)."""

    merged: torch.Tensor
    roots: torch.Tensor
    children: torch.Tensor
    values: torch.Tensor


def previous_frame_links(features: torch.Tensor, eligible: torch.Tensor, first: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For every token, ``(similarity, anchor)``: the largest cosine to an eligible token of the
    previous frame and that token's position; ``NO_LINK`` for ineligible tokens and for frames
    that start a segment (``first`` bool ``[B, T]``). ``features`` ``[B, T, P, D]``."""
    x = at_least_float32(features)
    normed = x / x.norm(p=2, dim=-1, keepdim=True)
    cosine = torch.einsum("btnd,btmd->btnm", normed[:, 1:], normed[:, :-1])
    cosine = cosine.masked_fill(~eligible[:, 1:].unsqueeze(-1), NO_LINK)
    cosine = cosine.masked_fill(~eligible[:, :-1].unsqueeze(2), NO_LINK)
    best, anchor = cosine.max(dim=-1)
    best = torch.nn.functional.pad(best, (0, 0, 1, 0), value=NO_LINK)
    anchor = torch.nn.functional.pad(anchor, (0, 0, 1, 0), value=0)
    return best.masked_fill(first.unsqueeze(-1), NO_LINK), anchor


def merge_links(similarity: torch.Tensor, valid: torch.Tensor, segment: torch.Tensor, threshold: float,
                lower_bound: torch.Tensor) -> torch.Tensor:
    """Bool ``[B, T, P]``: the links that merge. ``segment`` long ``[B, T]``; ``lower_bound`` long
    ``[B, S]``: tokens each segment must keep. When the threshold keeps fewer, the ``(V -
    lower_bound)``-th largest similarity of the segment's ``V`` valid tokens is the threshold
    instead (never below ``-1 + 1e-6``); when ``V <= lower_bound`` nothing merges."""
    b, t, p = similarity.shape
    seg = segment.unsqueeze(-1).expand(b, t, p).reshape(b, -1)
    ok = valid.reshape(b, -1)
    sim = similarity.reshape(b, -1)

    def per_segment(mask: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(lower_bound).scatter_add_(1, seg, mask.long())

    merged = ok & (sim > threshold)
    size = per_segment(ok)
    short = (size - per_segment(merged)) < lower_bound
    room = size - lower_bound  # how many may merge at most
    rank = rank_in_community(seg, sim, ok)  # 0: the segment's largest similarity
    at = ok & (rank == room.gather(1, seg) - 1)
    kth = torch.full(lower_bound.shape, float("-inf"), dtype=sim.dtype, device=sim.device).scatter_reduce(
        1, seg, torch.where(at, sim, float("-inf")), reduce="amax")
    soft = kth.clamp(min=NO_LINK + 1e-6).gather(1, seg)
    tightened = ok & (sim > soft) & (room.gather(1, seg) > 0)
    return torch.where(short.gather(1, seg), tightened, merged).reshape(b, t, p)


def grow_trees(features: torch.Tensor, merged: torch.Tensor, anchor: torch.Tensor, eligible: torch.Tensor) -> Trees:
    """Follow every merged link to its root and give each root upstream's value."""
    b, t, p, d = features.shape
    n = b * t * p
    own = torch.arange(n, device=features.device)
    parent = torch.where(merged.reshape(-1), own - p - (torch.arange(p, device=features.device).repeat(b * t))
                         + anchor.reshape(-1), own)
    root = parent.clone()
    while True:  # pointer jumping: O(log T) rounds
        jumped = root[root]
        if torch.equal(jumped, root):
            break
        root = jumped
    flat = at_least_float32(features).reshape(n, d)
    rows = eligible.reshape(-1)
    sums = torch.zeros_like(flat).index_add_(0, root[rows], flat[rows])
    children = torch.zeros(n, dtype=torch.long, device=features.device).index_add_(
        0, parent[merged.reshape(-1)], torch.ones_like(parent[merged.reshape(-1)]))
    roots = eligible.reshape(-1) & ~merged.reshape(-1)
    values = torch.where(roots.unsqueeze(1), sums / (1 + children).unsqueeze(1).to(flat.dtype), flat)
    return Trees(merged, roots.reshape(b, t, p), children.reshape(b, t, p),
                 values.to(features.dtype).reshape(b, t, p, d))
