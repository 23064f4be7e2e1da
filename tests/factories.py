"""Input factories shared by the tests: the property suite's token grids (``tokenreduce.testing``)
and structured videos."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from tokenreduce.testing import make_features, make_tokens, make_valid  # noqa: F401  (shared with the property suite)

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
VIDEO_KINDS = ("random", "static", "static_noisy", "moving_block", "scene_cut", "duplicated_frames", "flat_colour")


def structured_video(kind: str, t: int, h: int, w: int, d: int, *, seed: int = 0,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A ``[T, H, W, D]`` token grid with the structure of a real video's, from ``VIDEO_KINDS``:
    ``static`` (one frame repeated: every later token ties with its predecessor), ``static_noisy``
    (the same with 1e-3 noise: near ties), ``moving_block`` (a fixed background with a 2x2 block that
    moves one column per frame), ``scene_cut`` (two static scenes), ``duplicated_frames`` (every
    frame twice), ``flat_colour`` (one vector everywhere but for a moving token: ties within frames)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(t, h, w, d, generator=g)
    if kind == "random":
        video = noise
    elif kind in ("static", "static_noisy"):
        video = noise[:1].expand(t, h, w, d) + (1e-3 * noise if kind == "static_noisy" else 0.0)
    elif kind == "moving_block":
        video = noise[:1].expand(t, h, w, d).clone()
        block = torch.randn(d, generator=g)
        for f in range(t):
            video[f, : min(2, h), [(f + i) % w for i in range(min(2, w))]] = block
    elif kind == "scene_cut":
        cut = max(1, t // 2)
        video = torch.cat([noise[:1].expand(cut, h, w, d), noise[cut:cut + 1].expand(t - cut, h, w, d)])
    elif kind == "duplicated_frames":
        video = noise[torch.arange(t) // 2 * 2]
    elif kind == "flat_colour":
        video = noise[0, 0, 0].expand(t, h, w, d).clone()
        for f in range(t):
            video[f, f % h, (3 * f) % w] = noise[f, 0, 1 % w]
    else:
        raise ValueError(f"unknown video kind {kind!r}; one of {VIDEO_KINDS}")
    return video.contiguous().to(dtype)


def pad_videos(videos: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``[T_i, H, W, D]`` videos of different lengths as one batch ``[B, T, H, W, D]`` padded with
    trailing zero frames, and its ``valid`` mask."""
    t = max(len(video) for video in videos)
    batch = torch.zeros(len(videos), t, *videos[0].shape[1:], dtype=videos[0].dtype)
    valid = torch.zeros(batch.shape[:4], dtype=torch.bool)
    for b, video in enumerate(videos):
        batch[b, :len(video)], valid[b, :len(video)] = video, True
    return batch, valid


@st.composite
def structured_batches(draw: st.DrawFn) -> torch.Tensor:
    """Hypothesis: a ``[B, T, H, W, D]`` batch of 1-3 ``structured_video`` grids of one random shape
    and dtype, each of a random kind."""
    kinds = draw(st.lists(st.sampled_from(VIDEO_KINDS), min_size=1, max_size=3))
    grid = draw(st.tuples(st.integers(1, 8), st.integers(1, 5), st.integers(1, 5), st.integers(1, 12)))
    dtype, seed = draw(st.sampled_from(FLOAT_DTYPES)), draw(st.integers(0, 2**16))
    return torch.stack([structured_video(kind, *grid, seed=seed + i, dtype=dtype) for i, kind in enumerate(kinds)])


#: Hypothesis: vLLM pruning rates, the usual ones and any in [0, 1).
pruning_rates = st.sampled_from([0.1, 0.3, 0.5, 0.75, 0.9]) | st.floats(0.0, 0.999)
