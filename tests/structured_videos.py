"""Token grids shaped like real videos, for the oracle tests of the spatio-temporal strategies.

Every grid position has its own texture vector (no two tokens of a frame are equal); the
background stays put with a little noise per frame (static regions), an object of a few tokens
moves one column per frame (dynamic tokens) and, optionally, the scene cuts to a new background
halfway (a drop in frame similarity).
"""

from __future__ import annotations

import torch


def structured_video(t: int, h: int, w: int, d: int, *, seed: int, noise: float = 0.05, cut: bool = True,
                     object_size: int = 2) -> torch.Tensor:
    """Float32 ``[1, T, H, W, D]``: static background + moving object + optional scene cut."""
    g = torch.Generator().manual_seed(seed)
    scenes = torch.randn(2, h, w, d, generator=g)
    thing = torch.randn(object_size, object_size, d, generator=g) * 2
    frames = []
    for f in range(t):
        scene = scenes[1] if cut and f >= t // 2 and t > 1 else scenes[0]
        frame = scene + noise * torch.randn(h, w, d, generator=g)
        top, left = (f // max(w, 1)) % max(h - object_size + 1, 1), f % max(w - object_size + 1, 1)
        rows, cols = min(object_size, h), min(object_size, w)
        frame[top:top + rows, left:left + cols] = thing[:rows, :cols] + noise * torch.randn(rows, cols, d, generator=g)
        frames.append(frame)
    return torch.stack(frames).unsqueeze(0)


def video_batch(b: int, t: int, h: int, w: int, d: int, *, seed: int, **options) -> torch.Tensor:
    """``[B, T, H, W, D]``: ``b`` structured videos with different seeds."""
    return torch.cat([structured_video(t, h, w, d, seed=seed + i, **options) for i in range(b)])
