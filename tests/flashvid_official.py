"""A slow oracle of the official FlashVID code (Fanziyang-v/FlashVID @ 1d37422), step by step, one
video at a time: ``flashvid/utils.py`` (``flashvid_compression``, ``segment``,
``additional_segment``, ``segment_compression``, ``spatiotemporal_compression``, ``dpc_knn``,
``fastv_prune``) and ``flashvid/token_selection.py`` (``attn_div_based_token_selection``,
``attn_div_v2_based_token_selection``), with per-segment and per-frame loops.

Documented conventions replace behaviour the official code leaves to chance or where it fails:
the density noise of ``dpc_knn`` is left out; equal scores prefer the lower index; complementary
cuts are taken among the transitions not cut yet (upstream may cut one twice and then fails on an
empty segment); a single-frame segment clusters the tokens ADTS did not pick, as segments of
several frames do (upstream clusters every token of the frame, so a picked token can be emitted
twice at one position).
"""

from __future__ import annotations

import math

import torch


def official_segments(means: torch.Tensor, threshold: float, min_segments: int, complementary: bool) -> list[int]:
    """``segment``: segment lengths from the frame means ``[T, D]``."""
    frames = means.shape[0]
    normed = means / means.norm(p=2, dim=-1, keepdim=True)
    sims = torch.sum(normed[:-1] * normed[1:], dim=-1)
    cuts = [i for i in range(frames - 1) if float(sims[i]) < threshold]
    if len(cuts) + 1 < min_segments and complementary:
        free = sorted((i for i in range(frames - 1) if i not in cuts), key=lambda i: (float(sims[i]), i))
        cuts = sorted(cuts + free[:min_segments - len(cuts) - 1])
    bounds = [-1, *cuts, frames - 1]
    return [bounds[i + 1] - bounds[i] for i in range(len(bounds) - 1)]


def official_adts(features: torch.Tensor, attention: torch.Tensor, count: int, v2: bool) -> list[list[int]]:
    """ADTS on the frames ``[F, P, D]`` of one segment: the picked positions of every frame."""
    x = features.float()
    normed = x / x.norm(p=2, dim=-1, keepdim=True)
    dist = 1.0 - torch.bmm(normed, normed.transpose(-1, -2))
    dist = dist * (attention.float() * 1e6).unsqueeze(1)
    if v2:
        pooled = x.mean(1)
        local = torch.einsum("bnd,cd->bcn", x, pooled).mean(1)
        dist = dist * local.unsqueeze(1)
    picks = []
    for f in range(x.shape[0]):
        column_min = [sorted(float(v) for v in dist[f, :, j])[1] for j in range(x.shape[1])]
        chosen = [max(range(x.shape[1]), key=lambda j: (column_min[j], -j))]
        for _ in range(1, count):
            nearest = [min(float(dist[f, s, j]) for s in chosen) for j in range(x.shape[1])]
            if not v2:
                for s in chosen:
                    nearest[s] = -1.0
            chosen.append(max(range(x.shape[1]), key=lambda j: (nearest[j], -j)))
        picks.append(sorted(set(chosen)))
    return picks


def official_dpc(tokens: torch.Tensor, clusters: int) -> tuple[list[int], list[int]]:
    """``dpc_knn`` on ``[n, D]`` with ``k = min(clusters, 7)``: the centres (score order) and each
    token's cluster (an index into the centres)."""
    x = tokens.float()
    n = x.shape[0]
    dists = torch.cdist(x[None], x[None])[0] / math.sqrt(x.shape[-1])
    k = min(clusters, 7)
    density = torch.mean(-(torch.topk(dists, k=k, dim=-1, largest=False).values ** 2), dim=-1).exp()
    largest = float(dists.max())
    score = []
    for i in range(n):
        higher = [float(dists[i, j]) for j in range(n) if float(density[j]) > float(density[i])]
        score.append((min(higher) if higher else largest) * float(density[i]))
    centres = sorted(range(n), key=lambda i: (-score[i], i))[:clusters]
    member_of = [min(range(clusters), key=lambda c: (float(dists[i, centres[c]]), centres[c])) for i in range(n)]
    for c, centre in enumerate(centres):
        member_of[centre] = c
    return centres, member_of


def official_tstm(features: torch.Tensor, free: torch.Tensor, threshold: float, lower_bound: int) -> list[dict[int, torch.Tensor]]:
    """``spatiotemporal_compression`` on a segment ``[F, P, D]`` (``free``: not picked by ADTS):
    per frame, the tokens that stay with their merged features."""
    frames, positions, _ = features.shape
    feats = features.clone()
    normed = feats / feats.norm(p=2, dim=-1, keepdim=True)
    best = [[-1.0] * positions]
    anchor = [[0] * positions]
    for f in range(1, frames):
        row_best, row_anchor = [], []
        for n in range(positions):
            sims = [float(normed[f, n] @ normed[f - 1, m]) if bool(free[f, n]) and bool(free[f - 1, m]) else -1.0
                    for m in range(positions)]
            top = max(range(positions), key=lambda m: (sims[m], -m))
            row_best.append(sims[top])
            row_anchor.append(top)
        best.append(row_best)
        anchor.append(row_anchor)
    merged = [[v > threshold for v in row] for row in best]
    if sum(not m for row in merged for m in row) < lower_bound:
        if frames * positions <= lower_bound:  # upstream's topk(k <= 0) fails: nothing merges
            merged = [[False] * positions for _ in range(frames)]
        else:
            every = sorted((v for row in best for v in row), reverse=True)
            soft = max(every[frames * positions - lower_bound - 1], -1.0 + 1e-6)
            merged = [[v > soft for v in row] for row in best]
    counts = [[1.0] * positions for _ in range(frames)]
    for f in range(frames - 1, -1, -1):
        for n in range(positions):
            if not merged[f][n]:
                feats[f, n] = feats[f, n] / counts[f][n]
                counts[f][n] = 1.0
        for n in range(positions):
            if merged[f][n]:
                feats[f - 1, anchor[f][n]] += feats[f, n]
                counts[f - 1][anchor[f][n]] += 1
                counts[f][n] = 0.0
    return [{n: feats[f, n] for n in range(positions) if not merged[f][n] and bool(free[f, n])} for f in range(frames)]


def official_compress(video: torch.Tensor, attention: torch.Tensor, token_budget: int, *, alpha=0.7,
                      temporal_threshold=0.8, v2=True, segment=True, segment_threshold=0.9, min_segments=8,
                      complementary=True) -> dict[int, torch.Tensor]:
    """``flashvid_compression`` on one video ``[T, P, D]`` with its attention ``[T, P]``, given the
    per-frame ``token_budget``: flat index -> the token the LLM receives there."""
    frames, positions, _ = video.shape
    lengths = official_segments(video.mean(1), segment_threshold, min_segments, complementary) if segment else [frames]
    adts = math.ceil(token_budget * alpha)
    sttm = token_budget - adts
    out: dict[int, torch.Tensor] = {}
    start = 0
    for length in lengths:
        feats = video[start:start + length].clone()
        picks = official_adts(feats, attention[start:start + length], adts, v2) if alpha > 0 else [[]] * length
        free = torch.ones(length, positions, dtype=torch.bool)
        for f, chosen in enumerate(picks):
            for n in chosen:
                out[(start + f) * positions + n] = video[start + f, n]
                free[f, n] = False
        other = sttm * length
        if other > 0:
            if length > 1:
                left = official_tstm(feats, free, temporal_threshold, token_budget * length)
            else:
                left = [{n: feats[0, n] for n in range(positions) if bool(free[0, n])}]
            remaining = sum(len(frame) for frame in left)
            ratio = other / remaining if remaining else 1.0  # upstream divides by zero when nothing is left
            for f, frame in enumerate(left):
                slots = sorted(frame)
                clusters = math.ceil(len(slots) * ratio)
                if clusters > 0 and ratio < 1.0:
                    tokens = torch.stack([frame[n] for n in slots])
                    centres, member_of = official_dpc(tokens, clusters)
                    for c, centre in enumerate(centres):
                        group = [i for i in range(len(slots)) if member_of[i] == c]
                        out[(start + f) * positions + slots[centre]] = tokens[group].sum(0) / len(group)
                else:
                    for n in slots:
                        out[(start + f) * positions + n] = frame[n]
        start += length
    return out


def official_prune(attention: torch.Tensor, llm_ratio: float) -> list[int]:
    """``fastv_prune`` on the visual tokens of one video: the kept ones (ascending)."""
    count = math.ceil(attention.shape[0] * llm_ratio)
    return sorted(sorted(range(attention.shape[0]), key=lambda i: (-float(attention[i]), i))[:count])
