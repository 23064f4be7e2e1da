"""EVS: vLLM 0.32's kept set and count (``vllm/multimodal/video_prune/evs.py``); padding; hand cases."""

from __future__ import annotations

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


def vllm_count(t: int, per_frame: int, q: float) -> int:
    """vLLM's ``compute_retained_tokens_count``: every first-frame token, else int(N (1 - q))."""
    return max(per_frame, int(t * per_frame * (1 - q)))


def vllm_evs_oracle(video: torch.Tensor, q: float) -> list[int]:
    """vLLM's ``compute_retention_mask`` on one ``[T, H, W, D]`` video, slowly: frame by frame,
    ``1 - cos`` to the previous frame in the video's dtype (255 for frame 0), then Python's stable
    sort by decreasing score; the kept flat indices, sorted."""
    t, h, w, _ = video.shape
    scores: list[float] = [255.0] * (h * w)
    for f in range(1, t):
        scores += (1 - F.cosine_similarity(video[f], video[f - 1], dim=-1)).flatten().tolist()
    ranked = sorted(range(len(scores)), key=lambda n: -scores[n])
    return sorted(ranked[:vllm_count(t, h * w, q)])


def kept(reduction: tr.Reduction, b: int) -> list[int]:
    return reduction.keep_indices(b).tolist()


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("kind", VIDEO_KINDS)
def test_prune_ratio_keeps_vllms_tokens_on_structured_videos(kind, dtype):
    for (t, h, w, d) in [(6, 4, 5, 16), (9, 3, 3, 8), (4, 1, 1, 4), (1, 3, 2, 8)]:
        videos = torch.stack([structured_video(kind, t, h, w, d, seed=s, dtype=dtype) for s in range(3)])
        for q in (0.0, 0.3, 0.7, 0.9):
            reduction = tr.build("evs", prune_ratio=q)(tr.VisualTokens(videos))
            for b in range(3):
                assert kept(reduction, b) == vllm_evs_oracle(videos[b], q), (t, h, w, d, q, b)


@settings(max_examples=40, deadline=None)
@given(videos=structured_batches(), q=pruning_rates)
def test_prune_ratio_matches_the_oracle_on_generated_grids(videos, q):
    reduction = tr.build("evs", prune_ratio=q)(tr.VisualTokens(videos))
    for b in range(len(videos)):
        assert kept(reduction, b) == vllm_evs_oracle(videos[b], q)



def test_count_ranks_like_prune_ratio():
    """``count`` equal to vLLM's count keeps vLLM's tokens: one ranking, two ways to size it."""
    video = structured_video("moving_block", 6, 4, 4, 8, seed=3)
    by_rate = tr.build("evs", prune_ratio=0.6)(tr.VisualTokens(video[None]))
    by_count = tr.build("evs", count=vllm_count(6, 16, 0.6))(tr.VisualTokens(video[None]))
    assert torch.equal(by_rate.keep_mask, by_count.keep_mask)


def test_hand_case_first_frame_then_changes_and_raster_order_below_a_frame():
    # one row of two positions over three frames: position 0 is static, position 1 changes at frame 2
    a, b, c = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), torch.tensor([1.0, 1.0])
    video = torch.stack([torch.stack([a, b]), torch.stack([a, b]), torch.stack([a, c])]).reshape(1, 3, 1, 2, 2)
    tokens = tr.VisualTokens(video)
    reduction = tr.build("evs", count=3)(tokens)
    assert kept(reduction, 0) == [0, 1, 5]  # frame 0, then the changed token (1 - cos = 1 - 1/sqrt 2)
    roles = reduction.roles[0]
    assert roles[0] & int(tr.Role.SAMPLED) and roles[5] & int(tr.Role.EVENT)
    assert kept(tr.build("evs", count=1)(tokens), 0) == [0]  # equal 255s: the lower flat index


def test_padding_compares_with_the_previous_valid_token_of_the_position():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    video = torch.stack([a, b, a]).reshape(1, 3, 1, 1, 2)  # frame 1 is padding: frame 2 repeats frame 0
    valid = torch.tensor([True, False, True]).reshape(1, 3, 1, 1)
    reduction = tr.build("evs", count=1)(tr.VisualTokens(video, valid))
    assert kept(reduction, 0) == [0]
    assert tr.build("evs", prune_ratio=0.5)(tr.VisualTokens(video, valid)).kept_counts().tolist() == [1]
    late = torch.tensor([False, True, True]).reshape(1, 3, 1, 1)  # the position starts at frame 1
    reduction = tr.build("evs", count=1)(tr.VisualTokens(video, late))
    assert kept(reduction, 0) == [1] and reduction.roles[0, 1] & int(tr.Role.SAMPLED)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_videos_padded_with_trailing_frames_keep_what_they_keep_alone(dtype):
    lengths, (h, w, d) = [3, 7, 5], (3, 4, 8)
    videos = [structured_video(kind, t, h, w, d, seed=i, dtype=dtype)
              for i, (kind, t) in enumerate(zip(["moving_block", "static_noisy", "scene_cut"], lengths))]
    batch, valid = pad_videos(videos)
    reduction = tr.build("evs", prune_ratio=0.6)(tr.VisualTokens(batch, valid))
    for b, video in enumerate(videos):
        assert kept(reduction, b) == vllm_evs_oracle(video, 0.6)
