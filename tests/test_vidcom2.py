"""VidCom2: vLLM 0.32's kept set and count (``vllm/multimodal/video_prune/vidcom2.py``); retention; padding."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from factories import (
    FLOAT_DTYPES,
    VIDEO_KINDS,
    pad_videos,
    pruning_rates,
    structured_batches,
    structured_video,
)
from hypothesis import given, settings

import tokenreduce as tr

BANDWIDTHS = (0.125, 0.25, 0.5, 1.0, 2.0)


def vllm_count(t: int, per_frame: int, q: float) -> int:
    """VidCom2's count in vLLM: one token per frame at least, else int(N (1 - q))."""
    n = t * per_frame
    return max(t, min(int(n * (1 - q)), n))


def gaussian(x: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    distance = ((x - centre) ** 2).sum(dim=-1)
    total = 0
    for alpha in BANDWIDTHS:
        total = total + torch.exp(-distance / (2.0 * alpha))
    return total


def vidcom2_oracle(video: torch.Tensor, retention: float, target: int) -> list[int]:
    """vLLM's VidCom2 on one ``[T, H, W, D]`` video, step by step with a loop over frames (vLLM's
    ``q`` is ``1 - retention``, its count ``target``): the kept flat indices, sorted."""
    t, h, w, d = video.shape
    p = h * w
    flat = video.reshape(t * p, d)
    channels = torch.topk(flat.var(dim=0, unbiased=False), max(1, int(d * 0.5)), largest=False).indices
    frames = F.normalize(flat.index_select(-1, channels).reshape(t, p, -1), dim=-1)
    to_video = gaussian(frames, frames.mean(dim=(0, 1), keepdim=True))
    to_frame = torch.stack([gaussian(frames[f], frames[f].mean(dim=0, keepdim=True)) for f in range(t)])
    similarity = to_video + to_frame
    frame_scores = torch.stack([-to_video[f].mean() for f in range(t)])
    probs = F.softmax((frame_scores - frame_scores.max()) / 0.01, dim=0)
    scales = (retention * (1.0 + probs - probs.mean())).clamp(max=1.0)
    keep: set[int] = set()
    for f in range(t):
        k = min(max(int((scales[f] * p).round()), 1), p)
        keep |= {f * p + i for i in torch.topk(similarity[f], k, largest=False, sorted=False).indices.tolist()}
    flat_similarity = similarity.flatten()
    if len(keep) != target:
        pool = sorted(keep) if len(keep) > target else sorted(set(range(t * p)) - keep)
        picked = torch.topk(flat_similarity[pool], abs(len(keep) - target), largest=len(keep) > target,
                            sorted=False).indices.tolist()
        changed = {pool[i] for i in picked}
        keep = keep - changed if len(keep) > target else keep | changed
    return sorted(keep)


def kept(reduction: tr.Reduction, b: int) -> list[int]:
    return reduction.keep_indices(b).tolist()


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("kind", VIDEO_KINDS)
def test_prune_ratio_keeps_vllms_tokens_on_structured_videos(kind, dtype):
    for (t, h, w, d) in [(6, 4, 5, 16), (9, 3, 3, 9), (4, 1, 1, 4), (1, 3, 2, 8), (3, 8, 9, 70)]:
        videos = torch.stack([structured_video(kind, t, h, w, d, seed=s, dtype=dtype) for s in range(3)])
        for q in (0.0, 0.3, 0.7, 0.99):
            reduction = tr.build("vidcom2", prune_ratio=q)(tr.VisualTokens(videos))
            for b in range(3):
                expected = vidcom2_oracle(videos[b], 1.0 - q, vllm_count(t, h * w, q))
                assert kept(reduction, b) == expected, (t, h, w, d, q, b)


@settings(max_examples=40, deadline=None)
@given(videos=structured_batches(), q=pruning_rates)
def test_prune_ratio_matches_the_oracle_on_generated_grids(videos, q):
    reduction = tr.build("vidcom2", prune_ratio=q)(tr.VisualTokens(videos))
    t, h, w, _ = videos.shape[1:]
    for b in range(len(videos)):
        assert kept(reduction, b) == vidcom2_oracle(videos[b], 1.0 - q, vllm_count(t, h * w, q))


@pytest.mark.parametrize("kind", ["random", "moving_block", "scene_cut"])
def test_ratio_and_count_run_the_same_steps_with_their_own_retention(kind):
    """``ratio`` r: frame budgets at retention r (the official ``R_RATIO``), ceil(r N) kept;
    ``count`` k: retention k / N, k kept."""
    video = structured_video(kind, 6, 4, 5, 16, seed=2)
    n = video[..., 0].numel()
    for ratio in (0.1, 0.3, 0.55):
        reduction = tr.build("vidcom2", ratio=ratio)(tr.VisualTokens(video[None]))
        assert kept(reduction, 0) == vidcom2_oracle(video, ratio, math.ceil(Fraction(repr(ratio)) * n))
    for count in (1, 5, 37, n):
        reduction = tr.build("vidcom2", count=count)(tr.VisualTokens(video[None]))
        assert kept(reduction, 0) == vidcom2_oracle(video, count / n, count)



def test_a_distinct_frame_gets_the_larger_budget_and_reconciliation_fills():
    video = structured_video("static_noisy", 4, 4, 4, 16, seed=5)
    video[2] = structured_video("random", 1, 4, 4, 16, seed=6)[0]  # one frame unlike the others
    reduction = tr.build("vidcom2", prune_ratio=0.5)(tr.VisualTokens(video[None]))
    per_frame = reduction.keep_mask[0].reshape(4, 16).sum(dim=1).tolist()
    assert sum(per_frame) == 32 and per_frame[2] == max(per_frame) and per_frame[2] > per_frame[0]
    # budgets round(0.5 * (1 + p - 1/4) * 16) with p ~ (0, 0, 1, 0): 6, 6, 14, 6 = 32, nothing to fix
    assert per_frame == [6, 6, 14, 6]
    filled = tr.build("vidcom2", count=38)(tr.VisualTokens(video[None]))  # budgets 7, 7, 16, 7: 37
    roles = filled.roles[0][filled.keep_mask[0]]
    assert int(filled.kept_counts()[0]) == 38 and bool(((roles & int(tr.Role.FILLED)) != 0).any())
    assert bool(((roles & int(tr.Role.IMPORTANT)) != 0).all())


def test_videos_padded_with_trailing_frames_keep_what_they_keep_alone():
    """Padding is left out of every statistic. Masked sums are not bit-identical to torch's dense
    reductions, so this is checked on float64 data without near ties."""
    lengths, (h, w, d) = [3, 7, 5], (3, 4, 10)
    videos = [structured_video("random", t, h, w, d, seed=i, dtype=torch.float64) for i, t in enumerate(lengths)]
    batch, valid = pad_videos(videos)
    reduction = tr.build("vidcom2", prune_ratio=0.6)(tr.VisualTokens(batch, valid))
    for b, video in enumerate(videos):
        assert kept(reduction, b) == vidcom2_oracle(video, 1.0 - 0.6, vllm_count(len(video), h * w, 0.6))
