"""FasterVLM: per-frame top-k by CLS attention."""

from __future__ import annotations

import pytest
import torch

import tokenreduce as tr


def oracle(importance, valid, frames, total):
    """Split ``total`` over frames by cumulative flooring of their valid counts, then per frame
    sort the valid patches by (-score, index) and keep that many; flat indices."""
    n = len(importance)
    p = n // frames
    sizes = [sum(valid[f * p:(f + 1) * p]) for f in range(frames)]
    cumulative = [sum(sizes[:f + 1]) for f in range(frames)]
    upto = [total * c // cumulative[-1] for c in cumulative]
    shares = [upto[0]] + [upto[f] - upto[f - 1] for f in range(1, frames)]
    kept = []
    for f in range(frames):
        patches = [i for i in range(f * p, (f + 1) * p) if valid[i]]
        ranked = sorted(patches, key=lambda i: (-importance[i], i))
        kept += ranked[:shares[f]]
    return sorted(kept)


@pytest.mark.parametrize("ratio,expected", [(0.25, 144), (0.1, 58), (0.05, 29)])
def test_official_counts_per_576_patch_image(ratio, expected):
    tokens = tr.VisualTokens(torch.randn(1, 2, 24, 24, 3), importance=torch.rand(1, 2, 24, 24))
    red = tr.build("fastervlm", ratio=ratio)(tokens)
    assert red.kept_counts().tolist() == [2 * expected]
    assert [int(red.keep_mask[0, f * 576:(f + 1) * 576].sum()) for f in range(2)] == [expected, expected]
    count = tr.build("fastervlm", count=2 * expected)(tokens)
    assert torch.equal(count.keep_mask, red.keep_mask)


def test_stage_and_signals():
    reducer = tr.build("fastervlm")
    assert reducer.stage is tr.Stage.ENCODER and reducer.requires == {tr.Signal.IMPORTANCE}
    assert tr.build(reducer.config.to_dict()).config == reducer.config


def test_hand_case_ties_and_order():
    importance = torch.tensor([[0.2, 0.7, 0.7, 0.1], [0.5, 0.0, 0.5, 0.9]]).reshape(1, 2, 2, 2)
    red = tr.build("fastervlm", count=2)(tr.VisualTokens(torch.randn(1, 2, 2, 2, 3), importance=importance))
    assert red.keep_indices(0).tolist() == [1, 7]  # one per frame; frame 0: tie 0.7/0.7 -> lower index
    red = tr.build("fastervlm", count=2, per_frame=False)(
        tr.VisualTokens(torch.randn(1, 2, 2, 2, 3), importance=importance))
    assert red.keep_indices(0).tolist() == [1, 7]  # global: 0.9 and the first 0.7


@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.5, 1.0])
def test_matches_oracle_with_padding(ratio):
    g = torch.Generator().manual_seed(int(ratio * 10))
    b, t, h, w = 3, 3, 3, 4
    importance = torch.randint(0, 6, (b, t, h, w), generator=g).float()
    valid = torch.rand(b, t, h, w, generator=g) > 0.3
    valid[:, 0, 0, 0] = True
    tokens = tr.VisualTokens(torch.randn(b, t, h, w, 2, generator=g), valid, importance)
    reducer = tr.build("fastervlm", ratio=ratio)
    red = reducer(tokens)
    for s in range(b):
        n = int(valid[s].sum())
        total = max(1, -(-round(ratio * 10) * n // 10))  # ceil(ratio * n) for ratio in tenths
        expected = oracle(importance[s].flatten().tolist(), valid[s].flatten().tolist(), t, total)
        assert red.keep_indices(s).tolist() == expected
    assert torch.equal(red.kept_counts(), reducer.planned_counts(tokens))
    whole = tr.build("fastervlm", ratio=ratio, per_frame=False)(tokens)
    assert torch.equal(whole.keep_mask, tr.build("attention_prune", ratio=ratio)(tokens).keep_mask)


def test_count_per_frame_as_upstream_video_path():
    # upstream's video path: topk(visual_token_num) in every frame of the (heads-averaged) attention
    g = torch.Generator().manual_seed(5)
    importance = torch.rand(2, 8, 6, 6, generator=g, dtype=torch.float64)
    tokens = tr.VisualTokens(torch.randn(2, 8, 6, 6, 3, generator=g), importance=importance)
    red = tr.build("fastervlm", count=8 * 7)(tokens)
    expected = torch.zeros(2, 8, 36, dtype=torch.bool)
    expected.scatter_(2, importance.reshape(2, 8, 36).topk(7, dim=2).indices, True)
    assert torch.equal(red.keep_mask, expected.reshape(2, -1))
