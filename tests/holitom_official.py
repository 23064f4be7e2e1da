"""A slow oracle of the official HoliTom code (cokeshao/HoliTom @ e9b2972), step by step, one
video at a time: ``holitom/llava_arch.py`` (``select_static_windows``, ``get_static_dynamic_features``,
``holitom``, ``merge_tokens_by_attention_density``, ``merge_tokens_by_density``,
``cluster_dpc_knn``, ``merge_tokens_by_clustering``) and ``holitom/modeling_qwen2.py`` (the merge
at layer ``HOLITOM_k``), as plain loops.

Documented conventions replace behaviour the official code leaves to chance or where it fails:
the density noise (``rand * 1e-6``) is left out; equal scores, attentions and distances prefer the
lower index (upstream's ``topk``/``argmin`` order is unspecified); the contextual branch (``D > 0``)
keeps each cluster at its centre's position (upstream's ``pos.masked_select(mask.unsqueeze(-1))``
does not broadcast and fails there).
"""

from __future__ import annotations

import math

import torch


def official_windows(sim: torch.Tensor, frames: int, tau: float, max_window: int) -> tuple[list[tuple[int, int]], float]:
    """``select_static_windows``: ``sim`` ``[T-1, P]`` -> windows ``[(start, end)]`` and ``dp[-1]``."""
    positions = sim.shape[1] if sim.ndim == 2 else 0
    saved = [[0.0] * frames for _ in range(frames)]
    for s in range(frames):
        for e in range(s + 1, frames):
            still = [all(float(sim[f, p]) > tau for f in range(s, e)) for p in range(positions)]
            saved[s][e] = float(sum(still) * (e - s))
    dp = [0.0] * frames
    prev = [0] * frames
    for i in range(frames):
        best, start = (dp[i - 1] if i > 0 else 0.0), i
        for size in range(2, min(i + 1, max_window) + 1):
            j = i - size
            value = (dp[j] if j >= 0 else 0.0) + saved[j + 1][i]
            if value > best:
                best, start = value, j + 1
        dp[i], prev[i] = best, start
    windows, i = [], frames - 1
    while i >= 0:
        windows.append((prev[i], i))
        i = prev[i] - 1
    return windows[::-1], dp[-1]


def official_dpc_centres(x: torch.Tensor, clusters: int, k: int) -> tuple[list[int], torch.Tensor]:
    """``cluster_dpc_knn`` for one set (the density noise left out): sorted centres, distances."""
    dist = torch.cdist(x.float()[None], x.float()[None])[0] / (x.shape[-1] ** 0.5)
    nearest = torch.topk(dist, k, dim=-1, largest=False).values
    density = (-(nearest ** 2).mean(dim=-1)).exp()
    n = x.shape[0]
    score = []
    for i in range(n):
        higher = [float(dist[i, j]) for j in range(n) if float(density[j]) > float(density[i])]
        score.append((min(higher) if higher else float(dist.max())) * float(density[i]))
    order = sorted(range(n), key=lambda i: (-score[i], i))
    return sorted(order[:clusters]), dist


def official_cluster_merge(x: torch.Tensor, clusters: int, k: int, beta: float) -> dict[int, torch.Tensor]:
    """``merge_tokens_by_density`` / the contextual branch: centre slot -> merged token."""
    centres, dist = official_dpc_centres(x, clusters, k)
    members: dict[int, list[int]] = {c: [] for c in centres}
    for i in range(x.shape[0]):
        if i not in centres:
            members[min(centres, key=lambda c: (float(dist[i, c]), centres.index(c)))].append(i)
    out = {}
    for c in centres:
        if members[c]:
            out[c] = beta * x[c] + (1 - beta) * x[members[c]].mean(dim=0)
        else:
            out[c] = x[c]
    return out


def official_outer(video: torch.Tensor, attention: torch.Tensor, retain: float, *, tau=0.8, beta=0.6,
                   contextual=0.0, k=7, max_window=1024) -> dict[int, torch.Tensor]:
    """HoliTom before the LLM on one video ``[T, P, D]`` with ``attention`` ``[T, P]``: flat index
    (``t * P + p``) -> the token the LLM receives there."""
    frames, positions, _ = video.shape
    normed = torch.nn.functional.normalize(video, p=2, dim=-1)
    sim = torch.nn.functional.cosine_similarity(normed[:-1], normed[1:], dim=-1)
    windows, reduced = official_windows(sim, frames, tau, max_window)
    total = frames * positions
    retain = min(retain / ((total - reduced) / total), 1)
    out: dict[int, torch.Tensor] = {}

    def frame_part(f: int, slots: list[int]) -> None:  # merge_tokens_by_attention_density, one frame
        n = len(slots)
        dominant = round(math.ceil(n * retain) * (1 - contextual))
        rest_count = math.ceil(n * retain) - dominant
        order = sorted(slots, key=lambda p: (-float(attention[f, p]), p))
        for p in order[:dominant]:
            out[f * positions + p] = video[f, p]
        rest = [p for p in slots if p not in order[:dominant]]
        if rest_count > 0:
            merged = official_cluster_merge(video[f, rest], rest_count, min(k, rest_count), beta)
            for slot, token in merged.items():
                out[f * positions + rest[slot]] = token

    for start, end in windows:
        if start == end:
            frame_part(start, list(range(positions)))
            continue
        static = [p for p in range(positions) if all(float(sim[f, p]) > tau for f in range(start, end))]
        dynamic = [p for p in range(positions) if p not in static]
        for f in range(start, end + 1):
            frame_part(f, dynamic)
        clusters = round(len(static) * retain)
        if static and clusters > 0:
            means = video[start:end + 1][:, static].mean(dim=0)
            for slot, token in official_cluster_merge(means, clusters, min(k, clusters), beta).items():
                out[start * positions + static[slot]] = token
    return out


def official_inner(hidden: torch.Tensor, attention: torch.Tensor, merge_ratio: float) -> dict[int, torch.Tensor]:
    """The merge of ``Qwen2Model_holitom.forward`` on the visual tokens ``[N, D]`` of one video."""
    n = hidden.shape[0]
    keep = sorted(sorted(range(n), key=lambda i: (-float(attention[i]), i))[:round(n * (1 - merge_ratio))])
    hidden = hidden.clone()
    original = hidden.clone()
    for i in [i for i in range(n) if i not in keep]:
        sims = [float(original[i] @ original[j] / (original[i].norm() * original[j].norm())) for j in keep]
        target = keep[max(range(len(keep)), key=lambda m: (sims[m], -m))]
        hidden[target] = (hidden[target] + hidden[i]) / 2
    return {i: hidden[i] for i in keep}
