"""PruMerge+: IQR outliers as numpy computes them, spatial samples, key-neighbour merging."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tokenreduce as tr
from tokenreduce.strategies.prumerge_plus import outlier_counts
from tokenreduce.tokens import Role


def oracle_frame(x, a, keys, valid, neighbours=32):
    """Upstream token_prune_merge_advanced_plus on one frame, with numpy and loops.

    Returns ``(kept local positions, {position: merged features}, summary or None)``; local
    positions index the frame's patches, padding skipped.
    """
    patches = [i for i in range(len(valid)) if valid[i]]
    n = len(patches)
    att = np.array([a[i] for i in patches], dtype=np.float32)
    q1, q3 = np.percentile(att, 25), np.percentile(att, 75)
    upper = q3 + 1.5 * (q3 - q1)
    outliers = len(np.where(att > upper)[0])
    ratio = outliers / n
    ranked = sorted(range(n), key=lambda j: (-float(att[j]), j))
    top = ranked[:int(n * ratio)]
    step_length = int(1 / ratio) if outliers else n
    stride = max(1, int(step_length / 3))
    samples = [j for j in range(0, max(n - 1, 1), stride) if j not in top]
    kept = sorted(top + samples)

    def unit(v):
        norm = math.sqrt(sum(c * c for c in v))
        return [c / norm for c in v]

    k = [unit(keys[i]) for i in patches]
    feats = [x[i] for i in patches]
    merged = {}
    for i in kept:
        others = [j for j in range(n) if j != i]
        sims = {j: sum(p * q for p, q in zip(k[i], k[j])) for j in others}
        nearest = sorted(others, key=lambda j: (-sims[j], j))[:neighbours]
        merged[patches[i]] = [feats[i][d] + sum(float(att[j]) * feats[j][d] for j in nearest)
                              for d in range(len(feats[i]))]
    dropped = [j for j in range(n) if j not in kept]
    summary = None
    if dropped:
        summary = [sum(float(att[j]) * feats[j][d] for j in dropped) for d in range(len(feats[0]))]
    return [patches[j] for j in kept], merged, summary


def cls_like_attention(shape, generator, spikes=4):
    """Softmax-like attention with a few strong outliers per frame, as CLIP's CLS attention has."""
    logits = torch.randn(shape, generator=generator)
    flat = logits.flatten(-2)
    idx = torch.randint(0, flat.shape[-1], (*flat.shape[:-1], spikes), generator=generator)
    flat.scatter_(-1, idx, 6.0 + torch.rand(idx.shape, generator=generator))
    return torch.softmax(flat, dim=-1).reshape(shape)


def test_outlier_count_equals_numpy():
    g = torch.Generator().manual_seed(0)
    for trial in range(200):
        n = 1 + trial % 37
        if trial % 3 == 0:
            values = torch.randint(0, 4, (n,), generator=g).float()  # ties and equal quartiles
        else:
            values = torch.randn(n, generator=g).exp() ** 3
        valid = torch.ones(n, dtype=torch.bool)
        att = values.numpy().astype(np.float32)
        q1, q3 = np.percentile(att, 25), np.percentile(att, 75)
        expected = int((att > q3 + 1.5 * (q3 - q1)).sum())
        assert outlier_counts(values.unsqueeze(0), valid.unsqueeze(0)).tolist() == [expected]


def test_outlier_count_ignores_padding():
    values = torch.tensor([[1.0, 1, 1, 100, 1, 1, 1, 10], [1.0, 1, 1, 100, 1, 1, 1, 10]])
    valid = torch.tensor([[True] * 8, [True] * 7 + [False]])
    assert outlier_counts(values, valid).tolist() == [2, 1]


def one_hot_case(neighbours, keys):
    attention = torch.tensor([1.0, 1, 1, 1, 1, 1, 1, 10]) / 17
    x = torch.eye(8).reshape(1, 1, 1, 8, 8)
    tokens = tr.VisualTokens(x, importance=attention.reshape(1, 1, 1, 8), signals={"keys": keys.reshape(1, 1, 1, 8, -1)})
    return attention, tr.build("prumerge_plus", neighbours=neighbours)(tokens)


def test_hand_case_all_neighbours():
    # Q1 = Q3 = 1/17 -> one outlier (patch 7); ratio 1/8: top 1, step 8, stride int(8/3) = 2,
    # samples 0, 2, 4, 6 (below patch 7). With every other patch as neighbour and one-hot
    # features, merged token i = e_i + sum_{j != i} a_j e_j; the summary token sums a_j e_j over
    # the dropped patches 1, 3, 5.
    attention, red = one_hot_case(7, torch.randn(8, 3, generator=torch.Generator().manual_seed(1)))
    assert red.keep_indices(0).tolist() == [0, 2, 4, 6, 7]
    for i in [0, 2, 4, 6, 7]:
        expected = attention.clone()
        expected[i] = 1.0
        torch.testing.assert_close(red.features[0, i], expected)
    summary = torch.zeros(8)
    summary[[1, 3, 5]] = attention[[1, 3, 5]]
    torch.testing.assert_close(red.extra[0, 0], summary)
    assert red.roles[0, 7] & Role.IMPORTANT and red.roles[0, 0] & Role.SAMPLED
    assert red.roles[0, 1] & Role.ABSORBED and red.info["top"] == [1]


def test_hand_case_nearest_key():
    # keys on a circle with growing gaps: each patch's nearest other key is the one before it
    # (patch 0: patch 1), so with one neighbour merged i = e_i + a_{i-1} e_{i-1}.
    angles = [math.radians(d) for d in (0, 10, 25, 45, 70, 100, 135, 175)]
    keys = torch.tensor([[math.cos(t), math.sin(t)] for t in angles])
    attention, red = one_hot_case(1, keys)
    for i in [0, 2, 4, 6, 7]:
        j = 1 if i == 0 else i - 1
        expected = torch.zeros(8)
        expected[i], expected[j] = 1.0, attention[j]
        torch.testing.assert_close(red.features[0, i], expected)


@pytest.mark.parametrize("neighbours", [32, 5, 1])
def test_matches_oracle(neighbours):
    g = torch.Generator().manual_seed(neighbours)
    reducer = tr.build("prumerge_plus", neighbours=neighbours)
    for b, t, h, w in [(1, 1, 24, 24), (2, 2, 6, 7), (1, 3, 3, 3), (2, 1, 1, 2)]:
        attention = cls_like_attention((b, t, h, w), g)
        valid = torch.rand(b, t, h, w, generator=g) > 0.15
        valid[:, :, 0, 0] = True
        tokens = tr.VisualTokens(torch.randn(b, t, h, w, 6, generator=g), valid, attention,
                                 signals={"keys": torch.randn(b, t, h, w, 5, generator=g)})
        red = reducer(tokens)
        p = h * w
        for s in range(b):
            kept, extra = [], []
            for f in range(t):
                rows = slice(f * p, (f + 1) * p)
                k, merged, summary = oracle_frame(tokens.flat_features()[s, rows].tolist(),
                                                  attention.reshape(b, -1)[s, rows].tolist(),
                                                  tokens.flat_signal("keys")[s, rows].tolist(),
                                                  valid.reshape(b, -1)[s, rows].tolist(), neighbours)
                kept += [f * p + i for i in k]
                for i, vec in merged.items():
                    torch.testing.assert_close(red.features[s, f * p + i], torch.tensor(vec), rtol=1e-5, atol=1e-5)
                if summary is not None:
                    extra.append(summary)
            assert red.keep_indices(s).tolist() == kept
            ours = red.kept_features(tokens.flat_features(), s)[len(kept):]
            torch.testing.assert_close(ours, torch.tensor(extra).reshape(-1, 6), rtol=1e-5, atol=1e-5)


def test_batch_equals_samples_and_no_outlier_rule():
    g = torch.Generator().manual_seed(7)
    attention = cls_like_attention((3, 2, 5, 5), g)
    attention[1] = 1.0 / 25  # flat attention: no outlier -> stride max(1, 25 // 3) = 8
    tokens = tr.VisualTokens(torch.randn(3, 2, 5, 5, 4, generator=g), importance=attention,
                             signals={"keys": torch.randn(3, 2, 5, 5, 3, generator=g)})
    reducer = tr.build("prumerge_plus")
    red = reducer(tokens)
    assert red.keep_indices(1).tolist() == [0, 8, 16, 25, 33, 41]
    assert reducer.planned_counts(tokens) is None
    for s in range(3):
        alone = reducer(tokens.sample(s))
        assert torch.equal(alone.keep_mask[0], red.keep_mask[s])
        torch.testing.assert_close(alone.kept_features(tokens.sample(s).flat_features(), 0),
                                   red.kept_features(tokens.flat_features(), s))


def test_config_and_signals():
    reducer = tr.build("prumerge_plus", neighbours=16, summary_token=False)
    assert reducer.stage is tr.Stage.ENCODER
    assert tr.build(reducer.config.to_dict()).config == reducer.config
    with pytest.raises(tr.ConfigError, match="neighbours"):
        tr.build("prumerge_plus", neighbours=0)
    tokens = tr.VisualTokens(torch.randn(1, 1, 3, 3, 2), importance=torch.rand(1, 1, 3, 3),
                             signals={"keys": torch.randn(1, 1, 3, 3, 2)})
    assert reducer(tokens).extra is None
    with pytest.raises(tr.MissingSignalError, match="keys"):
        reducer(tr.VisualTokens(torch.randn(1, 1, 3, 3, 2), importance=torch.rand(1, 1, 3, 3)))


def test_float64_keys_choose_neighbours_in_their_own_precision():
    # one neighbour; keys of patches 1 and 2 at angles 2e-6 and 1e-6 from patch 0's: patch 2 is
    # the nearer in float64 (the two cosines are both 1.0 in float32, where patch 1 would win)
    angles = [0.0, 2e-6, 1e-6] + [0.5 + 0.3 * i for i in range(5)]
    keys = torch.tensor([[math.cos(t), math.sin(t)] for t in angles], dtype=torch.float64)
    attention = (torch.tensor([1.0, 1, 1, 1, 1, 1, 1, 10], dtype=torch.float64) / 17).reshape(1, 1, 1, 8)
    x = torch.eye(8, dtype=torch.float64).reshape(1, 1, 1, 8, 8)
    red = tr.build("prumerge_plus", neighbours=1)(tr.VisualTokens(x, importance=attention,
                                                                  signals={"keys": keys.reshape(1, 1, 1, 8, 2)}))
    assert 0 in red.keep_indices(0).tolist()
    expected = torch.zeros(8, dtype=torch.float64)
    expected[0], expected[2] = 1.0, attention.flatten()[2]
    torch.testing.assert_close(red.features[0, 0], expected)


# ----- a second, independent oracle: upstream's tensor steps on one 576-patch image -----------------
def literal_official_prumerge_plus(x, cls_attn, keys):
    """42Shawn/LLaVA-PruMerge ``token_prune_merge_advanced_plus`` (``if_adaptive=True``) on one image:
    ``x`` ``[1, N, C]`` patch features, ``cls_attn`` ``[1, N]``, ``keys`` ``[1, N, Ck]`` patch keys.
    Returns ``(idx, tokens)``: the kept patch indices in upstream's order and its output
    ``[1, len(idx) + 1, C]`` (merged kept tokens, then the extra token)."""
    n = x.shape[1]
    attn_np = cls_attn.to(torch.float32).numpy().flatten()
    q1, q3 = np.percentile(attn_np, 25), np.percentile(attn_np, 75)
    reduction_ratio = len(np.where(attn_np > q3 + 1.5 * (q3 - q1))[0]) / len(attn_np)
    _, idx = torch.topk(cls_attn, int(n * reduction_ratio), dim=1, largest=True)
    step_length = int(1 / reduction_ratio)
    arithmetic_sequence = torch.arange(0, n - 1, int(step_length / 3))
    filtered = torch.tensor([int(s) for s in arithmetic_sequence if s not in idx.flatten()], dtype=idx.dtype)
    idx = torch.cat((idx, filtered.unsqueeze(0)), dim=1)
    complement = torch.tensor([i for i in range(n) if i not in idx.flatten()], dtype=idx.dtype).unsqueeze(0)
    x_kept, attn_kept, keys_kept = x[:, idx[0]], cls_attn[:, idx[0]], keys[:, idx[0]]
    non_topk, non_topk_attn, non_topk_keys = x[:, complement[0]], cls_attn[:, complement[0]], keys[:, complement[0]]
    keys_kept_norm = F.normalize(keys_kept, p=2, dim=-1)
    non_topk_keys_norm = F.normalize(non_topk_keys, p=2, dim=-1)
    updated = torch.zeros_like(x_kept)
    for i in range(idx.shape[1]):
        rest_x = torch.cat([x_kept[:, :i], x_kept[:, i + 1:], non_topk], dim=1)
        rest_attn = torch.cat([attn_kept[:, :i], attn_kept[:, i + 1:], non_topk_attn], dim=1)
        rest_keys = torch.cat([keys_kept_norm[:, :i], keys_kept_norm[:, i + 1:], non_topk_keys_norm], dim=1)
        similarity = torch.bmm(keys_kept_norm[:, i:i + 1], rest_keys.transpose(1, 2))
        _, cluster = torch.topk(similarity, k=32, dim=2, largest=True)
        weighted = torch.sum(rest_x[:, cluster.squeeze()] * rest_attn[:, cluster.squeeze()].unsqueeze(-1), dim=1)
        updated[0, i] = x_kept[0, i] + weighted
    extra = torch.sum(non_topk * non_topk_attn.unsqueeze(-1), dim=1, keepdim=True)
    return idx[0].tolist(), torch.cat([updated, extra], dim=1)


@pytest.mark.parametrize("seed", range(3))
def test_matches_upstream_tensor_steps_on_576_patches(seed):
    g = torch.Generator().manual_seed(seed)
    attention = cls_like_attention((1, 1, 24, 24), g, spikes=4 + 6 * seed).double()
    x, keys = torch.randn(1, 576, 8, generator=g, dtype=torch.float64), torch.randn(1, 576, 5, generator=g,
                                                                                    dtype=torch.float64)
    red = tr.build("prumerge_plus")(tr.VisualTokens(x.reshape(1, 1, 24, 24, 8), importance=attention,
                                                    signals={"keys": keys.reshape(1, 1, 24, 24, 5)}))
    idx, expected = literal_official_prumerge_plus(x, attention.reshape(1, 576), keys)
    assert red.keep_indices(0).tolist() == sorted(idx)
    torch.testing.assert_close(red.features[0, idx], expected[0, :-1])
    torch.testing.assert_close(red.extra[0], expected[0, -1:])


@pytest.mark.parametrize("junk", [float("nan"), -float("inf"), float("inf")])
def test_padding_importance_and_keys_never_reach_the_result(junk):
    # padding may hold any importance and keys (VisualTokens allows it): the result must equal the
    # one with zeros there, and be finite (0 * NaN in the neighbour weights and the summary sum)
    g = torch.Generator().manual_seed(11)
    b, t, h, w = 2, 2, 4, 5
    attention = cls_like_attention((b, t, h, w), g)
    valid = torch.rand(b, t, h, w, generator=g) > 0.3
    valid[:, :, 0, 0] = True
    x = torch.randn(b, t, h, w, 6, generator=g)
    keys = torch.randn(b, t, h, w, 5, generator=g)
    reducer = tr.build("prumerge_plus", neighbours=6)
    clean = reducer(tr.VisualTokens(x, valid, attention.masked_fill(~valid, 0),
                                    signals={"keys": keys.masked_fill(~valid.unsqueeze(-1), 0)}))
    dirty = reducer(tr.VisualTokens(x, valid, attention.masked_fill(~valid, junk),
                                    signals={"keys": keys.masked_fill(~valid.unsqueeze(-1), junk)}))
    assert clean.extra_valid.any() and (clean.roles & Role.MERGED).any()  # merges and summaries happen
    assert torch.equal(dirty.keep_mask, clean.keep_mask)
    assert torch.isfinite(dirty.features).all() and torch.isfinite(dirty.extra).all()
    assert torch.equal(dirty.features, clean.features) and torch.equal(dirty.extra, clean.extra)
