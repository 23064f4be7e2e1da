"""FlashVID against the slow oracle of the official code (``flashvid_official``) on structured
videos and random grids; hand-computed cases; bad input."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from flashvid_official import official_adts, official_compress, official_prune, official_segments
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kept_tokens import assert_same_tokens, kept_tokens
from structured_videos import structured_video

import tokenreduce as tr
from tokenreduce.graph.diversity import calibrated_distances, max_min_diverse, segment_relevance
from tokenreduce.graph.redundancy_trees import grow_trees
from tokenreduce.graph.video_segments import segment_cuts, segment_ids
from tokenreduce.strategies.flashvid import FlashVIDCompress, FlashVIDPrune

SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def compare(video: torch.Tensor, attention: torch.Tensor, *, ratio: float, selection="attn_div_v2", **options):
    _, t, h, w, d = video.shape
    reducer = FlashVIDCompress(ratio=ratio, selection=selection, **options)
    reduction = reducer(tr.VisualTokens(video, importance=attention))
    budget = math.ceil(Fraction(repr(ratio)) * h * w)
    assert int(reducer.frame_budgets(tr.VisualTokens(video))[0]) == budget
    official = official_compress(video[0].reshape(t, h * w, d), attention[0].reshape(t, h * w), budget,
                                 v2=selection == "attn_div_v2", **options)
    assert_same_tokens(kept_tokens(reduction, video), official, rtol=1e-4)
    return reduction


@pytest.mark.parametrize("selection", ["attn_div", "attn_div_v2"])
@pytest.mark.parametrize("ratio,alpha,min_segments", [(0.3, 0.7, 8), (0.2, 0.7, 4), (0.5, 0.5, 4), (0.25, 0.0, 8),
                                                      (0.3, 1.0, 8)])
def test_compress_equals_official_on_structured_videos(selection, ratio, alpha, min_segments):
    video = structured_video(12, 5, 6, 16, seed=int(ratio * 100), noise=0.3)
    attention = torch.rand(1, 12, 5, 6, generator=torch.Generator().manual_seed(1)) / 30
    compare(video, attention, ratio=ratio, selection=selection, alpha=alpha, min_segments=min_segments)


def test_structured_video_really_merges_trees_and_clusters():
    video = structured_video(12, 5, 6, 16, seed=3, noise=0.3)
    attention = torch.rand(1, 12, 5, 6, generator=torch.Generator().manual_seed(1)) / 30
    reduction = compare(video, attention, ratio=0.3, min_segments=4)
    segments = reduction.info["segments"][0]
    assert segments[6] != segments[5]  # the scene cut starts a segment
    stats = reduction.stats.roles
    assert stats["REPRESENTATIVE"][0] > 0 and stats["IMPORTANT"][0] > 0 and stats["ABSORBED"][0] > 0
    assert int(((reduction.roles[0] & int(tr.Role.MERGED)) != 0).sum()) > 0


@SETTINGS
@given(shape=st.tuples(st.integers(1, 6), st.integers(1, 4), st.integers(2, 4), st.integers(2, 6)),
       seed=st.integers(0, 2**16), ratio=st.sampled_from([0.1, 0.3, 0.5, 0.75]),
       selection=st.sampled_from(["attn_div", "attn_div_v2"]), alpha=st.sampled_from([0.0, 0.7]),
       threshold=st.sampled_from([0.0, 0.5, 0.8]), min_segments=st.integers(1, 4),
       static=st.sampled_from([0.0, 0.9]))
def test_compress_equals_official_on_random_grids(shape, seed, ratio, selection, alpha, threshold, min_segments,
                                                  static):
    t, h, w, d = shape
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(1, t, h, w, d, generator=g)
    video = (1 - static) * video + static * video[:, :1]
    attention = torch.rand(1, t, h, w, generator=g)
    if math.ceil(ratio * h * w) >= h * w:
        return  # every token stays (upstream fails there; tested below)
    compare(video, attention, ratio=ratio, selection=selection, alpha=alpha, temporal_threshold=threshold,
            min_segments=min_segments)


@pytest.mark.parametrize("llm_ratio", [0.3, 0.5, 0.17])
def test_prune_equals_official(llm_ratio):
    g = torch.Generator().manual_seed(4)
    tokens = tr.VisualTokens(torch.randn(1, 3, 4, 4, 8, generator=g), importance=torch.rand(1, 3, 4, 4, generator=g))
    reduction = FlashVIDPrune(llm_ratio=llm_ratio)(tokens)
    assert reduction.keep_indices(0).tolist() == official_prune(tokens.importance.reshape(-1), llm_ratio)


def test_two_steps_in_order_and_retention_ratio_budget():
    video = structured_video(8, 6, 6, 16, seed=5, noise=0.3)
    attention = torch.rand(1, 8, 6, 6, generator=torch.Generator().manual_seed(2))
    reducer = tr.build("flashvid", retention_ratio=0.25)  # per frame ceil(36 * 0.25 * 1.25) = 12
    compress, prune = reducer.steps()
    assert (compress.stage, prune.stage, prune.layer) == (tr.Stage.ENCODER, tr.Stage.IN_LLM, 20)
    tokens = tr.VisualTokens(video, importance=attention)
    assert compress.frame_budgets(tokens).tolist() == [12]
    first = compress(tokens)
    assert 8 * 12 <= int(first.kept_counts()[0]) < 8 * 13
    both = reducer(tokens)
    assert int(both.kept_counts()[0]) == math.ceil(int(first.kept_counts()[0]) * 0.3)
    assert [s.stage for s in tr.build("flashvid", layer=None).steps()] == [tr.Stage.ENCODER]


def test_ratio_one_and_a_budget_of_whole_frames_keep_everything():
    video = structured_video(4, 3, 3, 8, seed=2)
    tokens = tr.VisualTokens(video, importance=torch.rand(1, 4, 3, 3))
    assert bool(tr.build("flashvid", ratio=1.0)(tokens).keep_mask.all())
    assert bool(tr.build("flashvid", count=36, layer=None)(tokens).keep_mask.all())


def test_count_budget_per_frame():
    tokens = tr.VisualTokens(torch.randn(1, 6, 4, 4, 8), importance=torch.rand(1, 6, 4, 4))
    assert FlashVIDCompress(count=20).frame_budgets(tokens).tolist() == [4]  # ceil(20 / 6)


# ----- hand-computed cases ------------------------------------------------------------------------
def test_segments_by_hand():
    # cosines of consecutive means: 0.995, 0.0995 (a cut), 0.995 (equal to the first), 0.982
    means = torch.tensor([[[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0], [0.3, 1.0]]])
    assert segment_ids(segment_cuts(means, 0.9, 1, True)).tolist() == [[0, 0, 1, 1, 1]]
    assert segment_ids(segment_cuts(means, 0.9, 3, True)).tolist() == [[0, 0, 1, 1, 2]]  # least similar left
    assert segment_ids(segment_cuts(means, 0.9, 4, True)).tolist() == [[0, 1, 2, 2, 3]]  # a tie: the earlier
    assert segment_ids(segment_cuts(means, 0.9, 9, True)).tolist() == [[0, 1, 2, 3, 4]]  # every frame, no more
    assert segment_ids(segment_cuts(means, 0.9, 9, False)).tolist() == [[0, 0, 1, 1, 1]]
    assert official_segments(means[0], 0.9, 3, True) == [2, 2, 1]
    assert official_segments(means[0], 0.9, 4, True) == [1, 1, 2, 1]


def test_max_min_diversity_by_hand():
    # three tokens on a line: 0 and 1 almost equal, 2 opposite; equal attention. The first pick
    # maximises the distance to the nearest other token: token 2; then the farthest from it.
    x = torch.tensor([[[1.0, 0.0], [1.0, 0.05], [-1.0, 0.0]]])
    valid = torch.ones(1, 3, dtype=torch.bool)
    distances = calibrated_distances(x, valid, [torch.ones(1, 3)])
    assert max_min_diverse(distances, valid, torch.tensor([1]), exclude_picked=True).tolist() == [[False, False, True]]
    assert max_min_diverse(distances, valid, torch.tensor([2]), exclude_picked=True).tolist() == [[True, False, True]]


def test_v2_may_pick_a_token_twice_as_upstream_by_hand():
    # only token 0 is relevant to the frame's mean (the others have negative relevance, so every
    # calibrated distance to them is negative, here above -1): v2 picks token 0, then token 0
    # again (its distance to itself, 0, beats the negative ones); excluding earlier picks with -1,
    # as v1 does, would take a second token
    x = torch.tensor([[[[1.0, 0.0], [-0.2, 1.0], [-0.2, -1.0]]]])  # [B=1, T=1, P=3, D=2]
    valid = torch.ones(1, 1, 3, dtype=torch.bool)
    relevance = segment_relevance(x, valid, torch.zeros(1, 1, dtype=torch.long))
    assert relevance[0, 0].tolist() == pytest.approx([0.2, -0.04, -0.04])
    terms = [torch.full((1, 3), 1e-8 * 1e6), relevance.reshape(1, 3)]
    distances = calibrated_distances(x.reshape(1, 3, 2), valid.reshape(1, 3), terms)
    picks = lambda exclude: max_min_diverse(distances, valid.reshape(1, 3), torch.tensor([2]), exclude_picked=exclude)
    assert picks(False).tolist() == [[True, False, False]]
    assert picks(True).sum() == 2
    assert official_adts(x[0], torch.full((1, 3), 1e-8), 2, v2=True) == [[0]]
    tokens = tr.VisualTokens(x.reshape(1, 1, 1, 3, 2), importance=torch.full((1, 1, 1, 3), 1e-8))
    kept = lambda selection: FlashVIDCompress(count=2, alpha=1.0, selection=selection)(tokens).keep_indices(0).tolist()
    assert kept("attn_div_v2") == [0] and len(kept("attn_div")) == 2


def test_tree_root_is_its_sum_over_one_plus_its_direct_children():
    # a chain over three frames: c (frame 2) -> b (frame 1) -> a (frame 0); upstream's root value
    # is (a + b + c) / (1 + 1), not the mean of the tree
    features = torch.tensor([[[[2.0]], [[4.0]], [[8.0]]]])  # [B=1, T=3, P=1, D=1]
    merged = torch.tensor([[[False], [True], [True]]])
    trees = grow_trees(features, merged, torch.zeros(1, 3, 1, dtype=torch.long), torch.ones(1, 3, 1, dtype=torch.bool))
    assert trees.roots.tolist() == [[[True], [False], [False]]]
    assert trees.values[0, 0, 0, 0].item() == (2 + 4 + 8) / 2


# ----- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("options,field", [
    ({"ratio": 0.3, "retention_ratio": 0.2}, "one budget: ratio, count, retention_ratio or expansion"), ({"ratio": 0.0}, "ratio"),
    ({"count": 0}, "count"), ({"retention_ratio": 2.0}, "retention_ratio"), ({"expansion": 0.0}, "expansion"),
    ({"alpha": 1.5}, "alpha"), ({"temporal_threshold": 1.0}, "temporal_threshold"),
    ({"segment_threshold": 2.0}, "segment_threshold"), ({"min_segments": 0}, "min_segments"),
    ({"layer": 0}, "layer"), ({"llm_ratio": 0.0}, "llm_ratio"), ({"selection": "attn"}, "selection"),
])
def test_bad_config_names_the_field(options, field):
    with pytest.raises(tr.ConfigError, match=field):
        tr.build("flashvid", **options)
