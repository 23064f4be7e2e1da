"""Input factories shared by the tests: token grids with the signals a reducer declares."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from hypothesis import strategies as st

import tokenreduce as tr
from tokenreduce.interfaces import Signal

KEY_DIM = 16
NUM_LAYERS = 4


def make_features(
    b: int, t: int, h: int, w: int, d: int, *, seed: int = 0, static: float = 0.0, dtype=torch.float32
) -> torch.Tensor:
    """Random features; ``static`` in [0, 1] blends every frame towards the first one, so that a
    share of the tokens is temporally redundant (what similarity strategies look for)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, h, w, d, generator=g)
    if static:
        x = (1 - static) * x + static * x[:, :1]
    return x.to(dtype)


def make_valid(b: int, t: int, h: int, w: int, *, seed: int = 0, keep_prob: float = 0.7) -> torch.Tensor:
    """A random padding mask with at least one valid token per sample."""
    g = torch.Generator().manual_seed(seed + 1)
    valid = torch.rand(b, t, h, w, generator=g) < keep_prob
    valid.view(b, -1)[:, 0] = True
    return valid


def make_tokens(
    reducer: tr.Reducer | None,
    features: torch.Tensor,
    *,
    valid: torch.Tensor | None = None,
    seed: int = 0,
) -> tr.VisualTokens:
    """``VisualTokens`` carrying every signal ``reducer`` requires (random, seeded)."""
    b, t, h, w, d = features.shape
    g = torch.Generator().manual_seed(seed + 2)
    requires = reducer.requires if reducer is not None else frozenset()
    importance = torch.rand(b, t, h, w, generator=g) if Signal.IMPORTANCE in requires else None
    signals: dict[str, torch.Tensor] = {}
    if Signal.KEYS in requires:
        signals["keys"] = torch.randn(b, t, h, w, KEY_DIM, generator=g)
    if Signal.EMBEDDINGS in requires:
        signals["embeddings"] = features.clone()
    return tr.VisualTokens(features, valid, importance, signals=signals, num_layers=NUM_LAYERS)


def has_field(reducer_cls: type, name: str) -> bool:
    return name in {f.name for f in dataclasses.fields(reducer_cls.Config)}


def build_with_ratio(name: str, ratio: float | None) -> Any:
    """Build a registered strategy with its default config, setting ``ratio`` when it has one."""
    cls = tr.STRATEGIES.get(name)
    if ratio is not None and has_field(cls, "ratio"):
        return tr.build(name, ratio=ratio)
    return tr.build(name)


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
