"""VisionZip: official counts, hand-computed merges and a slow per-frame oracle."""

from __future__ import annotations

import math

import pytest
import torch

import tokenreduce as tr
from tokenreduce.tokens import Role


def oracle_frame(features, importance, keys, valid, dominant, contextual, cls_token):
    """Official VisionZip on one frame, with lists: returns (kept patch indices, contextual tokens)."""
    patches = [i for i in range(len(valid)) if valid[i]]
    ranked = sorted(patches, key=lambda i: (-importance[i], i))
    kept = sorted(ranked[:max(0, dominant - int(cls_token))])
    remaining = [i for i in patches if i not in kept]
    if contextual == 0 or not remaining:
        return kept, []
    step = max(1, len(remaining) // contextual)
    targets = remaining[::step][:contextual]
    others = [i for i in remaining if i not in targets]

    def unit(v):
        norm = math.sqrt(sum(x * x for x in v))
        return [x / norm for x in v]

    groups = {j: [] for j in range(len(targets))}
    for i in others:
        sims = [sum(a * b for a, b in zip(unit(keys[i]), unit(keys[t]))) for t in targets]
        groups[sims.index(max(sims))].append(i)
    tokens = []
    for j, target in enumerate(targets):
        members = groups[j]
        mean = [sum(features[i][d] for i in members) / len(members) if members else 0.0
                for d in range(len(features[target]))]
        tokens.append([a + b for a, b in zip(features[target], mean)])
    return kept, tokens


def make_tokens(b, t, h, w, d=5, seed=0, valid=None, ties=False):
    g = torch.Generator().manual_seed(seed)
    importance = torch.randint(0, 5, (b, t, h, w), generator=g).double() if ties else \
        torch.rand(b, t, h, w, generator=g, dtype=torch.float64)
    return tr.VisualTokens(torch.randn(b, t, h, w, d, generator=g, dtype=torch.float64), valid, importance,
                           signals={"keys": torch.randn(b, t, h, w, 4, generator=g, dtype=torch.float64)})


def check_against_oracle(reducer, tokens):
    red = reducer(tokens)
    t, h, w = tokens.grid
    p = h * w
    cfg = reducer.config
    for s in range(tokens.batch_size):
        kept, extra = [], []
        for f in range(t):
            rows = slice(f * p, (f + 1) * p)
            k, ctx = oracle_frame(tokens.flat_features()[s, rows].tolist(), tokens.flat_importance()[s, rows].tolist(),
                                  tokens.flat_signal("keys")[s, rows].tolist(), tokens.flat_valid()[s, rows].tolist(),
                                  cfg.dominant, cfg.contextual, cfg.cls_token)
            kept += [f * p + i for i in k]
            extra += ctx
        assert red.keep_indices(s).tolist() == kept
        ours = red.kept_features(tokens.flat_features(), s)[len(kept):]
        assert ours.shape[0] == len(extra)
        if extra:
            torch.testing.assert_close(ours, torch.tensor(extra, dtype=ours.dtype))
    return red


@pytest.mark.parametrize("preset,kept,extra", [(64, 53, 10), (128, 107, 20), (192, 161, 30)])
def test_official_preset_counts_per_image_with_cls(preset, kept, extra):
    reducer = tr.build("visionzip", preset=preset)
    red = reducer(make_tokens(1, 1, 24, 24))  # LLaVA-1.5: 576 patches + CLS
    assert red.kept_counts().tolist() == [kept] and red.extra_counts().tolist() == [extra]
    assert kept + extra + 1 == preset  # + the CLS token the adapter keeps
    assert reducer.planned_counts(make_tokens(1, 1, 24, 24)).tolist() == [kept]
    assert tr.build("visionzip", dominant=PRESET_DOMINANT[preset], contextual=extra).config == reducer.config.replace(
        preset=None)


PRESET_DOMINANT = {64: 54, 128: 108, 192: 162}


def test_counts_are_per_frame_and_without_cls():
    red = tr.build("visionzip", dominant=54, contextual=10, cls_token=False)(make_tokens(2, 3, 13, 13))
    assert red.kept_counts().tolist() == [162, 162] and red.extra_counts().tolist() == [30, 30]
    assert red.extra.shape == (2, 30, 5) and bool(red.extra_valid.all())  # slot e: frame e // 10
    assert not red.info["cls_token"]


def test_hand_case_one_target():
    # patches 0..3, CLS attention -> dominant = CLS + patch 1; remaining 0, 2, 3 (M = 3), one
    # target (patch 0); contextual token = x0 + mean(x2, x3)
    x = torch.tensor([[1.0, 0], [0, 1], [2, 2], [4, 0]]).reshape(1, 1, 1, 4, 2)
    tokens = tr.VisualTokens(x, importance=torch.tensor([0.1, 0.9, 0.2, 0.3]).reshape(1, 1, 1, 4),
                             signals={"keys": torch.ones(1, 1, 1, 4, 3)})
    red = tr.build("visionzip", dominant=2, contextual=1)(tokens)
    assert red.keep_indices(0).tolist() == [1]
    torch.testing.assert_close(red.extra[0], torch.tensor([[4.0, 1.0]]))
    assert red.roles[0, 1] & Role.IMPORTANT and all(red.roles[0, i] & Role.ABSORBED for i in (0, 2, 3))


def test_hand_case_two_targets_assignment_by_key():
    # M = 3, contextual = 2: step = 1, targets = patches 0 and 2; patch 3's key is closer to
    # patch 2's, so the tokens are x0 (nothing assigned) and x2 + x3.
    x = torch.tensor([[1.0, 0], [0, 1], [2, 2], [4, 0]]).reshape(1, 1, 1, 4, 2)
    keys = torch.tensor([[1.0, 0], [0, 1], [0, 1], [0.2, 1]]).reshape(1, 1, 1, 4, 2)
    tokens = tr.VisualTokens(x, importance=torch.tensor([0.1, 0.9, 0.2, 0.3]).reshape(1, 1, 1, 4),
                             signals={"keys": keys})
    red = tr.build("visionzip", dominant=2, contextual=2)(tokens)
    torch.testing.assert_close(red.extra[0], torch.tensor([[1.0, 0.0], [6.0, 2.0]]))


@pytest.mark.parametrize("dominant,contextual,cls_token", [
    (54, 10, True), (5, 3, True), (1, 4, True), (4, 0, False), (3, 7, False), (2, 2, True)])
def test_matches_oracle_random_frames(dominant, contextual, cls_token):
    reducer = tr.build("visionzip", dominant=dominant, contextual=contextual, cls_token=cls_token)
    for seed, (b, t, h, w) in enumerate([(1, 1, 4, 5), (2, 3, 3, 3), (1, 2, 6, 6), (3, 1, 2, 2)]):
        check_against_oracle(reducer, make_tokens(b, t, h, w, seed=seed, ties=seed % 2 == 0))


def test_padding_batches_and_small_frames():
    g = torch.Generator().manual_seed(9)
    valid = torch.rand(3, 2, 3, 4, generator=g) > 0.4
    valid[:, :, 0, 0] = True
    tokens = make_tokens(3, 2, 3, 4, valid=valid, seed=4)
    reducer = tr.build("visionzip", dominant=4, contextual=3)
    red = check_against_oracle(reducer, tokens)
    assert not (red.keep_mask & ~valid.reshape(3, -1)).any()
    for s in range(3):
        alone = reducer(tokens.sample(s))
        assert torch.equal(alone.keep_mask[0], red.keep_mask[s])
        torch.testing.assert_close(alone.kept_features(tokens.sample(s).flat_features(), 0),
                                   red.kept_features(tokens.flat_features(), s))
        torch.testing.assert_close(alone.extra[0], red.extra[s])


def test_default_clips_on_a_single_token_grid():
    red = tr.build("visionzip")(make_tokens(1, 1, 1, 1))
    assert red.kept_counts().tolist() == [1] and red.extra_counts().tolist() == [0]
    assert red.extra.shape == (1, 30, 5) and not red.extra_valid.any() and not red.extra.any()
    red = tr.build("visionzip", dominant=1, contextual=10)(make_tokens(1, 2, 2, 2))
    assert red.kept_counts().tolist() == [0] and red.extra_counts().tolist() == [8]  # every patch a target
    assert red.extra_valid[0].tolist() == ([True] * 4 + [False] * 6) * 2


def test_config_errors_and_round_trip():
    with pytest.raises(tr.ConfigError, match="preset"):
        tr.build("visionzip", preset=100)
    with pytest.raises(tr.ConfigError, match="dominant=54"):
        tr.build("visionzip", preset=64, dominant=50)
    with pytest.raises(tr.ConfigError, match="dominant"):
        tr.build("visionzip", dominant=0)
    reducer = tr.build("visionzip", preset=192)
    assert tr.build(reducer.config.to_dict()).config == reducer.config
    assert tr.build("visionzip").config.dominant == 191  # the official defaults
    with pytest.raises(tr.MissingSignalError, match="keys"):
        reducer(tr.VisualTokens(torch.randn(1, 1, 2, 2, 3), importance=torch.rand(1, 1, 2, 2)))


def test_pipeline_carries_contextual_tokens_and_their_layout():
    tokens = make_tokens(2, 2, 3, 3, seed=11)
    visionzip = tr.build("visionzip", dominant=4, contextual=2)
    pipe = tr.Pipeline([tr.build("fastv", count=2), visionzip])  # run in stage order: encoder first
    alone, both = visionzip(tokens), pipe(tokens)
    assert both.kept_counts().tolist() == [2, 2]
    assert not (both.keep_mask & ~alone.keep_mask).any()
    torch.testing.assert_close(both.extra, alone.extra)
    assert torch.equal(both.extra_valid, alone.extra_valid)
    assert both.stats.extra == 4


def test_float64_keys_assign_in_their_own_precision():
    # remaining patches 0, 2, 3 with contextual=2: targets 0 and 2 (keys at angles 0 and 1e-6);
    # patch 3's key (angle 2e-6) is closer to target 2 in float64, a tie (-> target 0) in float32.
    angles = [0.0, 1.0, 1e-6, 2e-6]
    keys = torch.tensor([[math.cos(a), math.sin(a)] for a in angles], dtype=torch.float64).reshape(1, 1, 1, 4, 2)
    x = torch.tensor([[1.0, 0], [0, 1], [2, 2], [4, 0]], dtype=torch.float64).reshape(1, 1, 1, 4, 2)
    importance = torch.tensor([0.1, 0.9, 0.2, 0.3], dtype=torch.float64).reshape(1, 1, 1, 4)
    red = tr.build("visionzip", dominant=2, contextual=2)(tr.VisualTokens(x, importance=importance,
                                                                          signals={"keys": keys}))
    torch.testing.assert_close(red.extra[0], torch.tensor([[1.0, 0.0], [6.0, 2.0]], dtype=torch.float64))


# ----- a second, independent oracle: upstream's tensor steps on one image with its CLS token ------
def literal_official_visionzip(hidden, attention, metric, dominant, contextual):
    """dvlab-research/VisionZip on one image: ``hidden`` ``[1, 1 + P, D]`` (CLS first), ``attention``
    ``[1, heads, 1 + P, 1 + P]`` (softmax rows), ``metric`` ``[1, 1 + P, Dk]`` (keys averaged over
    heads), ``visionzip(model, dominant, contextual)`` (so ``dominant - 1`` patches + CLS). Returns
    ``(dominant tokens [1, dominant, D] with CLS first, contextual tokens [1, contextual, D])``."""
    dominant_num = dominant - 1
    cls_attention_sum = attention[:, :, 0, 1:].sum(dim=1)
    topk = cls_attention_sum.topk(dominant_num, dim=1).indices + 1
    all_indices = torch.cat([torch.zeros(1, 1, dtype=topk.dtype), topk], dim=1)
    mask = torch.ones_like(hidden[:, :, 0], dtype=torch.bool).scatter_(1, all_indices, False)
    dominant_tokens = hidden.masked_select(~mask.unsqueeze(-1)).view(1, dominant_num + 1, hidden.shape[2])
    remaining = hidden.shape[1] - (dominant_num + 1)
    metric_filtered = metric[mask].view(1, remaining, metric.shape[2])
    hidden_filtered = hidden.masked_select(mask.unsqueeze(-1)).view(1, remaining, hidden.shape[2])
    metric_normalized = metric_filtered / metric_filtered.norm(dim=-1, keepdim=True)
    step = max(1, remaining // contextual)
    target_indices = torch.arange(0, remaining, step)[:contextual]
    others = ~torch.isin(torch.arange(remaining), target_indices)
    similarity = torch.bmm(metric_normalized[:, others], metric_normalized[:, target_indices].transpose(1, 2))
    assign = torch.zeros(1, int(others.sum()), contextual, dtype=hidden.dtype)
    assign.scatter_(2, similarity.argmax(dim=2).unsqueeze(-1), 1)
    counts = assign.sum(dim=1).clamp(min=1).unsqueeze(-1)
    aggregated = torch.bmm(assign.transpose(1, 2), hidden_filtered[:, others]) / counts
    return dominant_tokens, hidden_filtered[:, target_indices] + aggregated


@pytest.mark.parametrize("dominant,contextual,side", [(54, 10, 24), (5, 3, 4), (2, 4, 3), (9, 1, 5)])
def test_matches_upstream_tensor_steps_with_cls(dominant, contextual, side):
    g = torch.Generator().manual_seed(dominant + contextual)
    frames, patches, heads = 2, side * side, 3
    hidden = torch.randn(frames, 1 + patches, 6, generator=g, dtype=torch.float64)
    attention = torch.softmax(torch.randn(frames, heads, 1 + patches, 1 + patches, generator=g, dtype=torch.float64),
                              dim=-1)
    metric = torch.randn(frames, 1 + patches, 4, generator=g, dtype=torch.float64)
    tokens = tr.VisualTokens(hidden[:, 1:].reshape(1, frames, side, side, 6),
                             importance=attention[:, :, 0, 1:].mean(dim=1).reshape(1, frames, side, side),
                             signals={"keys": metric[:, 1:].reshape(1, frames, side, side, 4)})
    red = tr.build("visionzip", dominant=dominant, contextual=contextual)(tokens)
    kept = red.keep_indices(0)
    for f in range(frames):
        ours = kept[(kept >= f * patches) & (kept < (f + 1) * patches)]
        expected_dominant, expected_contextual = literal_official_visionzip(
            hidden[f:f + 1], attention[f:f + 1], metric[f:f + 1], dominant, contextual)
        torch.testing.assert_close(tokens.flat_features()[0, ours], expected_dominant[0, 1:])  # CLS stays in front
        torch.testing.assert_close(red.extra[0, f * contextual:(f + 1) * contextual], expected_contextual[0])
