"""HoliTom against the slow oracle of the official code (``holitom_official``) on structured
videos and random grids; hand-computed cases; bad input."""

from __future__ import annotations

import pytest
import torch
from holitom_official import official_inner, official_outer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kept_tokens import assert_same_tokens, kept_tokens
from structured_videos import structured_video

import tokenreduce as tr
from tokenreduce.graph.static_windows import select_static_windows
from tokenreduce.strategies.holitom import HoliTomMerge, HoliTomOuter, halving_merge

SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ----- helpers ------------------------------------------------------------------------------------
def outer_case(video: torch.Tensor, seed: int, **options):
    b, t, h, w, _ = video.shape
    attention = torch.rand(b, t, h, w, generator=torch.Generator().manual_seed(seed))
    reducer = HoliTomOuter(**options)
    return reducer(tr.VisualTokens(video, importance=attention)), attention


# ----- against the official code ------------------------------------------------------------------
@pytest.mark.parametrize("ratio,tau,contextual", [(0.15, 0.8, 0.0), (0.3, 0.8, 0.0), (0.25, 0.65, 0.0),
                                                  (0.3, 0.8, 0.4), (0.5, 0.9, 0.2)])
@pytest.mark.parametrize("seed", [0, 1])
def test_outer_equals_official_on_structured_videos(ratio, tau, contextual, seed):
    video = structured_video(8, 5, 6, 16, seed=seed, noise=0.3)
    reduction, attention = outer_case(video, seed, ratio=ratio, tau=tau, contextual=contextual)
    official = official_outer(video[0].reshape(8, 30, 16), attention[0].reshape(8, 30), ratio, tau=tau,
                              contextual=contextual)
    assert_same_tokens(kept_tokens(reduction, video), official)


def test_structured_video_really_has_static_windows_and_a_cut():
    video = structured_video(8, 5, 6, 16, seed=0, noise=0.3)
    reduction, _ = outer_case(video, 0, ratio=0.3)
    starts = reduction.info["windows"][0]
    assert len(set(starts)) >= 2 and 4 in starts  # the cut at frame 4 starts a window
    assert int(reduction.stats.roles["REPRESENTATIVE"][0]) > 0  # static tokens were merged


@SETTINGS
@given(shape=st.tuples(st.integers(1, 6), st.integers(1, 4), st.integers(1, 4), st.integers(2, 6)),
       seed=st.integers(0, 2**16), ratio=st.sampled_from([0.1, 0.25, 0.5, 0.9]),
       tau=st.sampled_from([0.0, 0.5, 0.8]), contextual=st.sampled_from([0.0, 0.5]),
       static=st.sampled_from([0.0, 0.8, 0.95]))
def test_outer_equals_official_on_random_grids(shape, seed, ratio, tau, contextual, static):
    t, h, w, d = shape
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(1, t, h, w, d, generator=g)
    video = (1 - static) * video + static * video[:, :1]
    reduction, attention = outer_case(video, seed, ratio=ratio, tau=tau, contextual=contextual)
    official = official_outer(video[0].reshape(t, h * w, d), attention[0].reshape(t, h * w), ratio, tau=tau,
                              contextual=contextual)
    if not official:  # upstream hands the LLM no token of the video; one static cluster stays (documented)
        assert reduction.kept_counts().tolist() == [1]
        return
    assert_same_tokens(kept_tokens(reduction, video), official)


def test_a_video_that_would_keep_nothing_keeps_one_static_cluster():
    # two equal frames of two tokens: one window, 2 static positions; r' = 0.1 / (2/4) = 0.2 and
    # round(2 * 0.2) = 0 clusters: upstream keeps no token, here one cluster of the window stays
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).expand(2, 2, 2).reshape(1, 2, 1, 2, 2)
    tokens = tr.VisualTokens(x, importance=torch.ones(1, 2, 1, 2))
    assert official_outer(x[0].reshape(2, 2, 2), torch.ones(2, 2), 0.1) == {}
    reduction = HoliTomOuter(ratio=0.1)(tokens)
    assert reduction.kept_counts().tolist() == [1] and int(reduction.keep_indices(0)[0]) < 2


@pytest.mark.parametrize("merge_ratio", [0.5, 0.3, 0.75])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_inner_merge_equals_official(merge_ratio, seed):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(1, 3, 4, 4, 12, generator=g)
    attention = torch.rand(1, 3, 4, 4, generator=g)
    reduction = HoliTomMerge(merge_ratio=merge_ratio)(tr.VisualTokens(hidden, importance=attention))
    official = official_inner(hidden.reshape(48, 12), attention.reshape(48), merge_ratio)
    assert_same_tokens(kept_tokens(reduction, hidden), official)


# ----- hand-computed cases ------------------------------------------------------------------------
def test_static_windows_by_hand():
    # 4 frames, 2 positions; position 0 static over frames 0-3, position 1 static over 2-3 only
    static = torch.tensor([[[True, False], [True, False], [True, True]]])
    windows = select_static_windows(static, max_window=1024)
    # savings: [0,1] 1, [0,2] 2, [0,3] 3, [1,2] 1, [1,3] 2, [2,3] 2 (both positions). At frame 3 the
    # candidates are dp2 = 2, dp1 + [2,3] = 3, dp0 + [1,3] = 2, [0,3] = 3: the first best is [2,3]
    # after [0,1] (dp1 = 1, from [0,1]).
    assert windows.start.tolist() == [[0, 0, 2, 2]]
    assert windows.saved == [3.0]
    assert windows.static().tolist() == [[[True, False], [True, False], [True, True], [True, True]]]
    limited = select_static_windows(static, max_window=1)
    assert limited.start.tolist() == [[0, 1, 2, 3]] and limited.saved == [0.0]


def test_static_video_becomes_one_frame_of_blended_clusters_by_hand():
    # two frames of the same 3 tokens: every position static; retain 1/3 of 6 -> r' = 2/3 of 3 left
    x = torch.tensor([[[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]]).expand(2, 3, 2).reshape(1, 2, 1, 3, 2)
    reduction = HoliTomOuter(ratio=1 / 3, beta=0.6)(tr.VisualTokens(x, importance=torch.ones(1, 2, 1, 3)))
    assert reduction.keep_mask.sum() == 2 and reduction.info["retain_ratio"] == [pytest.approx(2 / 3)]
    kept = reduction.keep_indices(0).tolist()
    assert all(i < 3 for i in kept)  # placed in the window's first frame
    assert bool((reduction.roles[0, 3:] & int(tr.Role.ABSORBED)).all())


def test_halving_merge_by_hand():
    hidden = torch.tensor([[[8.0], [0.0], [4.0], [100.0]]])
    merging = torch.tensor([[False, True, True, False]])
    target = torch.tensor([[0, 0, 0, 3]])
    out = halving_merge(hidden, merging, target)
    assert out[0, :, 0].tolist() == [((8 + 0) / 2 + 4) / 2, 0.0, 4.0, 100.0]


def test_ratio_one_keeps_every_token_unchanged():
    video = structured_video(4, 3, 3, 8, seed=2)
    tokens = tr.VisualTokens(video, importance=torch.rand(1, 4, 3, 3))
    reduction = tr.build("holitom", ratio=1.0)(tokens)
    assert bool(reduction.keep_mask.all())
    torch.testing.assert_close(reduction.features, video.reshape(1, 36, 8))


def test_steps_and_their_stages():
    steps = tr.build("holitom", ratio=0.2, layer=3, merge_ratio=0.4).steps()
    assert [s.stage for s in steps] == [tr.Stage.ENCODER, tr.Stage.IN_LLM]
    assert steps[1].layer == 3 and steps[1].config.merge_ratio == 0.4
    assert [s.stage for s in tr.build("holitom", layer=None).steps()] == [tr.Stage.ENCODER]


# ----- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("options,field", [
    ({"ratio": 0.3, "count": 4}, "one budget: ratio or count"), ({"ratio": 0.0}, "ratio"), ({"count": 0}, "count"),
    ({"tau": 1.5}, "tau"), ({"beta": -0.1}, "beta"), ({"contextual": 2.0}, "contextual"),
    ({"neighbours": 0}, "neighbours"), ({"max_window": 0}, "max_window"), ({"layer": 0}, "layer"),
    ({"merge_ratio": 1.0}, "merge_ratio"),
])
def test_bad_config_names_the_field(options, field):
    with pytest.raises(tr.ConfigError, match=field):
        tr.build("holitom", **options)
