"""Static windows: split a video into runs of frames that maximise the tokens a static merge saves.

HoliTom's global redundancy-aware temporal segmentation (cokeshao/HoliTom, ``holitom/llava_arch.py``,
``select_static_windows``). A grid position is *static* over frames ``s..e`` when its cosine
similarity to the next frame exceeds ``tau`` at every step ``s -> s+1, ..., e-1 -> e``; merging a
window ``[s, e]`` keeps one token per static position and so saves ``(e - s)`` tokens for each. A
dynamic programme over frames picks the windows (of at most ``max_window`` frames) that save the
most, visiting at each frame ``i`` first "frame ``i`` alone", then windows ending at ``i`` of 2, 3,
... frames, and keeping the first best (a strictly larger saving replaces it), as upstream.
Everything is batched over samples; the loops run over frames, never over tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class StaticWindows:
    """Windows of every sample of a batch.

    ``start``: long ``[B, T]``, the first frame of each frame's window; ``runs``: long
    ``[B, T, P]``, how many following frames position ``p`` of frame ``t`` stays static for;
    ``saved``: the programme's total saving per sample (float, as upstream's ``dp[-1]``).
    """

    start: torch.Tensor
    runs: torch.Tensor
    saved: list[float]

    def static(self) -> torch.Tensor:
        """Bool ``[B, T, P]``: the position is static over its whole window (windows of one frame
        have no static position)."""
        end = window_ends(self.start)
        first = self.runs.gather(1, self.start.unsqueeze(-1).expand_as(self.runs))
        span = (end - self.start).unsqueeze(-1)
        return (span > 0) & (first >= span)


def window_ends(start: torch.Tensor) -> torch.Tensor:
    """Long ``[B, T]``: the last frame of each frame's window."""
    t = start.shape[1]
    frame = torch.arange(t, device=start.device).expand_as(start)
    last_of = torch.zeros_like(start).scatter_reduce_(1, start, frame, reduce="amax", include_self=False)
    return last_of.gather(1, start)


def static_runs(static: torch.Tensor) -> torch.Tensor:
    """Long ``[B, T, P]`` from bool ``[B, T-1, P]`` (``static[:, t]``: frame ``t`` -> ``t+1`` is
    static): the number of consecutive static steps starting at each frame."""
    b, steps, p = static.shape
    runs = torch.zeros(b, steps + 2, p, dtype=torch.long, device=static.device)
    for t in range(steps - 1, -1, -1):  # a loop over frames
        runs[:, t] = (runs[:, t + 1] + 1) * static[:, t]
    return runs[:, :steps + 1]


def savings(runs: torch.Tensor) -> torch.Tensor:
    """fp32 ``[B, T, T]``: ``saving[s, e] = (e - s) * #{p static over s..e}`` (0 for ``e <= s``),
    upstream's ``pruned_static_count``."""
    b, t, _ = runs.shape
    at_least = torch.zeros(b, t, t + 1, dtype=torch.long, device=runs.device)
    at_least.scatter_add_(2, runs.clamp(max=t), torch.ones_like(runs))
    at_least = at_least.flip(2).cumsum(2).flip(2)  # positions with a run >= L
    length = torch.arange(t, device=runs.device)
    span = (length.view(1, t) - length.view(t, 1)).clamp(min=0)  # e - s
    counts = at_least.gather(2, span.expand(b, t, t))
    return (counts * span).float()


def select_static_windows(static: torch.Tensor, max_window: int) -> StaticWindows:
    """The windows of every sample, from ``static`` bool ``[B, T-1, P]``."""
    runs = static_runs(static)
    gain = savings(runs)
    b, t = runs.shape[:2]
    device = runs.device
    best = torch.zeros(b, t + 1, dtype=torch.float32, device=device)  # best[i + 1]: frames 0..i
    choice = torch.zeros(b, t, dtype=torch.long, device=device)  # first frame of the window ending at i
    for i in range(t):  # a loop over frames; candidates are vectorised
        sizes = torch.arange(2, min(i + 1, max_window) + 1, device=device)
        starts = i - sizes + 1
        candidates = torch.cat([best[:, i:i + 1], best[:, starts] + gain[:, starts, i]], dim=1)
        first_best = candidates.argmax(dim=1)  # the first maximum, as upstream's strict '>'
        best[:, i + 1] = candidates.gather(1, first_best.unsqueeze(1)).squeeze(1)
        choice[:, i] = i - first_best  # candidate k >= 1 is the window of k + 1 frames
    start = torch.zeros(b, t, dtype=torch.long, device=device)
    end = torch.full((b,), t - 1, dtype=torch.long, device=device)
    frame = torch.arange(t, device=device)
    for _ in range(t):  # backtracking: one window per round, at most T rounds
        alive = end >= 0
        if not bool(alive.any()):
            break
        first = choice.gather(1, end.clamp(min=0).unsqueeze(1)).squeeze(1)
        inside = alive.unsqueeze(1) & (frame >= first.unsqueeze(1)) & (frame <= end.unsqueeze(1))
        start = torch.where(inside, first.unsqueeze(1), start)
        end = torch.where(alive, first - 1, end)
    return StaticWindows(start, runs, best[:, t].tolist())
