"""FrameFusion: hand-computed cases and a slow pure-Python oracle of the official schedule."""

from __future__ import annotations

import functools
import itertools
import math
import random
import re
from pathlib import Path

import pytest
import torch

import tokenreduce as tr
from tokenreduce.tokens import Role


# ----- oracle: thu-nics/FrameFusion main.py, batch size 1, written with lists and loops ------------
def oracle_prune_ratio(sparsity, cost, num_layers):
    """The official cost formula; an exhausted budget gives 1.0 (tokenreduce's documented clamp)."""
    if len(sparsity) >= num_layers:
        return 1.0
    s, total = 1.0, 0.0
    for fraction in sparsity:
        s *= 1 - fraction
        total += s
    remain = num_layers * cost - total
    if remain < 0:
        return 1.0
    keep = remain / ((num_layers - len(sparsity)) * s)
    return 0 if keep > 1 else 1 - keep


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    den = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / den if den > 0 else float("nan")


class OracleFrameFusion:
    """Tokens are ``[flat_index, vector]`` pairs in sequence order (frame-major)."""

    def __init__(self, tokens, patches, cost, threshold, lower_bound, num_layers):
        self.tokens = [[i, list(v)] for i, v in tokens]
        self.patches = patches
        self.cost, self.threshold, self.lower_bound, self.num_layers = cost, threshold, lower_bound, num_layers
        self.sparsity = []
        self.merging_done = self.pruning_done = False
        self.events = []

    @property
    def wants_importance(self):
        return self.merging_done and not self.pruning_done

    def point(self, importance):
        """One merge point; ``importance`` maps flat index -> score (used only when pruning)."""
        if self.merging_done and not self.pruning_done:
            n = len(self.tokens)
            p = oracle_prune_ratio(self.sparsity, self.cost, self.num_layers)
            k = max(1, round(n * (1 - p)))
            ranked = sorted(self.tokens, key=lambda tok: (-importance[tok[0]], tok[0]))
            kept = {tok[0] for tok in ranked[:k]}
            self.tokens = [tok for tok in self.tokens if tok[0] in kept]
            self.pruning_done = True
            self.events.append("prune")
        if not self.merging_done:
            chains = [[tok for tok in self.tokens if tok[0] % self.patches == p] for p in range(self.patches)]
            similarity = {}
            for chain in chains:
                for j, tok in enumerate(chain):
                    similarity[tok[0]] = -2.0 if j == 0 else cosine(chain[j - 1][1], tok[1])
            n = len(self.tokens)
            marked = [i for i, s in similarity.items() if s >= self.threshold]
            above = len(marked) / n
            upper = oracle_prune_ratio(self.sparsity, self.cost, self.num_layers)
            if above < upper:
                selected = set(marked)
                self.events.append("merge")
                self.sparsity.append(above)
                if above < self.lower_bound:
                    self.merging_done = True
            else:
                k = int(upper * n)
                selected = set(sorted(marked, key=lambda i: (-similarity[i], i))[:k])
                self.events.append("top-k")
                self.merging_done = self.pruning_done = True
            for chain in chains:
                anchor, members = None, []
                for tok in chain + [None]:
                    if tok is not None and tok[0] in selected:
                        members.append(tok)
                        continue
                    if members:
                        total = [a + sum(m[1][d] for m in members) for d, a in enumerate(anchor[1])]
                        anchor[1] = [x / (len(members) + 1) for x in total]
                    anchor, members = tok, []
            self.tokens = [tok for tok in self.tokens if tok[0] not in selected]


# ----- a simulated LLM: a token-wise map per layer and a last-query "attention" probe --------------
def layer_maps(dim, num_layers, seed):
    g = torch.Generator().manual_seed(seed)
    mats = [torch.randn(dim, dim, generator=g, dtype=torch.float64) / math.sqrt(dim) for _ in range(num_layers)]
    queries = [torch.randn(dim, generator=g, dtype=torch.float64) for _ in range(num_layers + 1)]
    return mats, queries


def apply_layer(x, mat, valid):
    """Token-wise map, then a pull towards the mean of the tokens present (like attention mixing)."""
    x = x + 0.3 * torch.tanh(x @ mat)
    mean = (x * valid.unsqueeze(-1)).sum(dim=0) / valid.sum()
    return 0.75 * x + 0.25 * mean


def probe(vectors, query):
    """Softmax over the given tokens of ``v . query`` (float64)."""
    logits = [sum(a * b for a, b in zip(v, query.tolist())) for v in vectors]
    top = max(logits)
    exp = [math.exp(x - top) for x in logits]
    return [e / sum(exp) for e in exp]


def video(seed, t=6, h=3, w=3, dim=8, noise=0.35):
    g = torch.Generator().manual_seed(seed)
    frames = [torch.randn(1, h, w, dim, generator=g, dtype=torch.float64)]
    for _ in range(t - 1):
        frames.append(frames[-1] + noise * torch.randn(1, h, w, dim, generator=g, dtype=torch.float64))
    return torch.cat(frames).unsqueeze(0)


@functools.cache
def run_both(seed, cost, threshold, lower_bound, num_layers, noise):
    """Drive tokenreduce and the oracle side by side; assert equality at every step; return the
    oracle's events."""
    features = video(seed, noise=noise)
    _, t, h, w, dim = features.shape
    mats, queries = layer_maps(dim, num_layers, seed + 1000)
    reducer = tr.build("framefusion", cost=cost, similarity_lower_bound=threshold,
                       ratio_lower_bound=lower_bound, num_layers=num_layers)
    flat = features.reshape(-1, dim)
    oracle = OracleFrameFusion(enumerate(flat.tolist()), h * w, cost, threshold, lower_bound, num_layers)

    valid = torch.ones(1, t, h, w, dtype=torch.bool)
    state = reducer.start(tr.VisualTokens(features))
    for layer in range(num_layers):
        if state.done:
            assert oracle.pruning_done
            break
        assert state.wants_importance == oracle.wants_importance
        importance = None
        if state.wants_importance:
            kept = valid.flatten().nonzero().flatten().tolist()
            scores = probe([features.reshape(-1, dim)[i].tolist() for i in kept], queries[layer])
            importance = torch.zeros(t * h * w, dtype=torch.float64)
            importance[kept] = torch.tensor(scores, dtype=torch.float64)
            importance = importance.reshape(1, t, h, w)
            oracle_importance = dict(zip(kept, scores))
        else:
            oracle_importance = {}
        reduction = reducer.step(state, layer, tr.VisualTokens(features, valid, importance))
        oracle.point(oracle_importance)
        valid = reduction.keep_mask.reshape(valid.shape)
        features = reduction.features.reshape(features.shape)
        ours = valid.flatten().nonzero().flatten().tolist()
        assert ours == [tok[0] for tok in oracle.tokens], f"layer {layer}"
        expected = torch.tensor([tok[1] for tok in oracle.tokens], dtype=torch.float64)
        torch.testing.assert_close(features.reshape(-1, dim)[ours], expected, rtol=1e-9, atol=1e-9)
        assert state.sparsity[0] == pytest.approx(oracle.sparsity, abs=0)
        features = apply_layer(features.reshape(-1, dim), mats[layer], valid.flatten()).reshape(features.shape)
        mapped = apply_layer(torch.tensor([v for _, v in oracle.tokens], dtype=torch.float64), mats[layer],
                             torch.ones(len(oracle.tokens), dtype=torch.bool))
        oracle.tokens = [[i, v] for (i, _), v in zip(oracle.tokens, mapped.tolist())]
    return oracle.events


CASES = [(seed, *params) for seed, params in enumerate(itertools.product(
    [0.3, 0.5], [0.8, 0.9, 0.95], [0.1, 0.05], [28, 8], [0.5, 0.8])) if seed % 3 == 0]


@pytest.mark.parametrize("seed,cost,threshold,lower_bound,num_layers,noise", CASES)
def test_matches_oracle_with_simulated_layers(seed, cost, threshold, lower_bound, num_layers, noise):
    run_both(seed, cost, threshold, lower_bound, num_layers, noise)


def test_oracle_cases_cover_every_branch():
    """The cases above exercise several merge steps, the top-k branch and attention pruning."""
    events = [run_both(*case) for case in CASES]
    assert sum(e.count("merge") >= 2 for e in events) >= 2
    assert sum("top-k" in e for e in events) >= 1
    assert sum("prune" in e for e in events) >= 2


# ----- hand-computed cases -----------------------------------------------------------------------
def tokens_1d(vectors, importance=None, num_layers=28):
    x = torch.tensor(vectors, dtype=torch.float32).reshape(1, len(vectors), 1, 1, -1)
    imp = None if importance is None else torch.tensor(importance, dtype=torch.float32).reshape(1, -1, 1, 1)
    return tr.VisualTokens(x, importance=imp, num_layers=num_layers)


def test_runs_merge_into_the_token_before_them():
    # sims: a->a1 high, a1->a2 high, a2->b low, b->b1 high: above = 3/5 < s_max = 0.7
    a, a1, a2, b, b1 = [1, 0], [1, 0.1], [1, 0.2], [0, 1], [0.1, 1]
    reducer = tr.build("framefusion")
    tokens = tokens_1d([a, a1, a2, b, b1])
    state = reducer.start(tokens)
    red = reducer.step(state, 0, tokens)
    assert red.keep_indices(0).tolist() == [0, 3]
    torch.testing.assert_close(red.features[0, 0], torch.tensor([1.0, 0.1]))  # mean(a, a1, a2)
    torch.testing.assert_close(red.features[0, 3], torch.tensor([0.05, 1.0]))  # mean(b, b1)
    assert state.sparsity == [[0.6]] and not state.merging_done[0]
    assert red.roles[0, 0] & Role.MERGED and red.roles[0, 1] & Role.ABSORBED
    assert not red.roles[0, 3] & Role.ABSORBED


def test_hand_schedule_merge_merge_prune():
    # step 0 merges frame 1 into frame 0 (above 1/3), step 1 finds nothing (above 0 < 0.1),
    # step 2 prunes: p = formula([1/3, 0]) with L=28 -> keep round(2 * 0.4077) = 1 token.
    reducer = tr.build("framefusion", cost=0.3, similarity_lower_bound=0.6)
    red = reducer(tokens_1d([[1, 0], [1, 0.1], [0, 1]], importance=[0.1, 0.5, 0.9]))
    assert red.keep_indices(0).tolist() == [2]
    assert red.info["sparsity"] == [[1 / 3, 0.0]]
    torch.testing.assert_close(red.features[0, 0], torch.tensor([1.0, 0.05]))
    p = tr.cost_prune_ratio([1 / 3, 0.0], 0.3, 28)
    assert round(2 * (1 - p)) == 1


def test_top_k_branch_merges_the_most_similar_and_stops():
    # unit vectors at 0, 5, 25, 60 degrees: sims cos 5, cos 20, cos 35 (all >= 0.6), so
    # above = 3/4 >= s_max = 0.7 and only int(0.7 * 4) = 2 tokens (the two most similar) merge.
    angles = [math.radians(a) for a in (0, 5, 25, 60)]
    vectors = [[math.cos(a), math.sin(a)] for a in angles]
    red = tr.build("framefusion")(tokens_1d(vectors, importance=[0, 0, 0, 0]))
    assert red.keep_indices(0).tolist() == [0, 3]  # 1 and 2 merged into 0, no pruning afterwards
    expected = torch.tensor(vectors[:3], dtype=torch.float32).mean(dim=0)
    torch.testing.assert_close(red.features[0, 0], expected)
    assert not (red.roles[0] & int(Role.IMPORTANT)).any()
    assert red.info["sparsity"] == [[]]


def test_single_frame_prunes_at_the_next_layer():
    torch.manual_seed(0)
    x = torch.randn(1, 1, 4, 5, 3)
    importance = torch.rand(1, 1, 4, 5)
    red = tr.build("framefusion", num_layers=4)(tr.VisualTokens(x, importance=importance))
    p = tr.cost_prune_ratio([0.0], 0.3, 4)
    k = round(20 * (1 - p))
    expected = importance.flatten().argsort(descending=True)[:k].sort().values
    assert red.keep_indices(0).tolist() == expected.tolist()


def test_chain_skips_tokens_that_are_gone():
    # frame 1 of the position is padding: frame 2 is compared with frame 0
    x = torch.tensor([[1.0, 0], [0, 1], [1, 0.1]]).reshape(1, 3, 1, 1, 2)
    valid = torch.tensor([True, False, True]).reshape(1, 3, 1, 1)
    reducer = tr.build("framefusion")
    tokens = tr.VisualTokens(x, valid, num_layers=28)
    red = reducer.step(reducer.start(tokens), 0, tokens)
    assert red.keep_indices(0).tolist() == [0]
    torch.testing.assert_close(red.features[0, 0], torch.tensor([1.0, 0.05]))


def test_batch_equals_samples_and_padding_is_never_kept():
    g = torch.Generator().manual_seed(3)
    x = video(5, t=5, h=2, w=3, dim=6).float().repeat(3, 1, 1, 1, 1)
    x[1] += 0.5 * torch.randn(x[1].shape, generator=g)
    valid = torch.rand(3, 5, 2, 3, generator=g) > 0.2
    importance = torch.rand(3, 5, 2, 3, generator=g)
    reducer = tr.build("framefusion", num_layers=6)
    tokens = tr.VisualTokens(x, valid, importance)
    batched = reducer(tokens.replace(num_layers=6))
    assert not (batched.keep_mask & ~valid.reshape(3, -1)).any()
    for b in range(3):
        alone = reducer(tokens.sample(b).replace(num_layers=6))
        assert torch.equal(alone.keep_mask[0], batched.keep_mask[b])
        torch.testing.assert_close(alone.features[0][alone.keep_mask[0]],
                                   batched.features[b][batched.keep_mask[b]])


def test_layer_count_is_required_and_config_round_trips():
    reducer = tr.build("framefusion", cost=0.3, similarity_lower_bound=0.6)
    with pytest.raises(tr.ConfigError, match="num_layers"):
        reducer(tr.VisualTokens(torch.randn(1, 2, 2, 2, 3), importance=torch.rand(1, 2, 2, 2)))
    assert tr.build(reducer.config.to_dict()).config == reducer.config
    with pytest.raises(tr.ConfigError, match="similarity_lower_bound"):
        tr.build("framefusion", similarity_lower_bound=1.5)
    with pytest.raises(tr.ConfigError, match="cost"):
        tr.build("framefusion", cost=0.0)


def test_importance_needed_only_when_pruning():
    reducer = tr.build("framefusion", num_layers=4)
    tokens = tr.VisualTokens(torch.randn(1, 1, 2, 2, 3))
    state = reducer.start(tokens)
    reducer.step(state, 0, tokens)  # merging needs no importance
    assert state.wants_importance
    with pytest.raises(tr.MissingSignalError, match="importance"):
        reducer.step(state, 1, tokens)


@pytest.mark.parametrize("padded", [False, True])
def test_random_features_many_seeds_agree_with_oracle_without_layers(padded):
    """``reduce`` (fixed features and importance) equals the oracle run without layer maps;
    padding is simply absent from the oracle's token list."""
    rng = random.Random(int(padded))
    for seed in range(12):
        t, h, w, dim = rng.randint(1, 5), rng.randint(1, 3), rng.randint(1, 3), rng.randint(1, 4)
        g = torch.Generator().manual_seed(seed)
        x = video(seed, t=t, h=h, w=w, dim=dim, noise=rng.choice([0.1, 0.5, 1.0]))
        importance = torch.rand(1, t, h, w, generator=g, dtype=torch.float64)
        valid = torch.rand(1, t, h, w, generator=g) > (0.3 if padded else -1)
        valid.view(-1)[0] = True
        layers = rng.randint(2, 8)
        red = tr.build("framefusion", num_layers=layers)(tr.VisualTokens(x, valid, importance))
        present = [(i, v) for i, v in enumerate(x.reshape(-1, dim).tolist()) if valid.flatten()[i]]
        oracle = OracleFrameFusion(present, h * w, 0.3, 0.6, 0.1, layers)
        scores = dict(enumerate(importance.flatten().tolist()))
        for _ in range(layers):
            if oracle.pruning_done:
                break
            oracle.point(scores)
        assert red.keep_indices(0).tolist() == [tok[0] for tok in oracle.tokens]
        kept = red.keep_indices(0)
        expected = torch.tensor([tok[1] for tok in oracle.tokens], dtype=torch.float64)
        torch.testing.assert_close(red.features[0, kept], expected)


def test_documented_driving_loop_runs():
    """The adapter loop shown in docs/strategies.md runs as written and ends the schedule."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "strategies.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, re.DOTALL) if "framefusion" in b)
    namespace: dict = {}
    exec(compile(block, "strategies.md", "exec"), namespace)  # noqa: S102
    assert namespace["state"].done
    assert int(namespace["valid"].sum()) < 36


def test_top_k_branch_ranks_float64_similarities_exactly():
    # unit vectors at 0, 2e-6, 3e-6 and 0.3 + 3e-6 rad: similarities cos(2e-6) < cos(1e-6) (both 1.0
    # in float32) and cos(0.3). cost 0.6 gives s_max = 0.4 <= above = 3/4, so int(0.4 * 4) = 1 token
    # merges: upstream's topk on the float64 similarities picks token 2 (into token 1).
    angles = [0.0, 2e-6, 3e-6, 0.3 + 3e-6]
    x = torch.tensor([[math.cos(a), math.sin(a)] for a in angles], dtype=torch.float64).reshape(1, 4, 1, 1, 2)
    red = tr.build("framefusion", cost=0.6)(tr.VisualTokens(x, importance=torch.zeros(1, 4, 1, 1), num_layers=28))
    assert red.keep_indices(0).tolist() == [0, 1, 3]
    torch.testing.assert_close(red.features[0, 1], x[0, 1:3].mean(dim=0).flatten())
    oracle = OracleFrameFusion(enumerate(x.reshape(4, 2).tolist()), 1, 0.6, 0.6, 0.1, 28)
    oracle.point({})
    assert oracle.events == ["top-k"] and [tok[0] for tok in oracle.tokens] == [0, 1, 3]


# ----- a second, independent oracle: upstream's tensor steps on a text + video sequence ----------
def literal_official_framefusion(features, importance, cost, threshold, lower_bound, num_layers, prefix=3, suffix=2):
    """thu-nics/FrameFusion ``FrameFusion.forward`` step by step on one sequence ``[text, video, text]``
    (batch 1, fixed hidden states): patch types, the by-patch order from ``torch.where``, the
    similarity chain with -2 across patches, runs of marked tokens in that order merged by adding
    the members into the token before the run and dividing, pruning by ``round(n * (1 - p))``.
    Returns the kept video tokens' flat indices (ascending) and their hidden states."""
    _, t, h, w, dim = features.shape
    patches = h * w
    g = torch.Generator().manual_seed(99)
    hidden = torch.cat([torch.randn(prefix, dim, generator=g, dtype=features.dtype), features.reshape(-1, dim),
                        torch.randn(suffix, dim, generator=g, dtype=features.dtype)])
    patch_type = torch.tensor([-1] * prefix + list(range(patches)) * t + [-1] * suffix)
    origin = torch.tensor([-1] * prefix + list(range(t * patches)) + [-1] * suffix)
    image_length, original_length = t * patches, hidden.shape[0]
    sparsity, finish_merging, finish_pruning = [], False, False
    for _ in range(num_layers):
        if finish_pruning:
            break
        if finish_merging and not finish_pruning:
            n = image_length - (original_length - hidden.shape[0])
            scores = importance.flatten()[origin[prefix:prefix + n]]
            p = oracle_prune_ratio(sparsity, cost, num_layers)
            top = scores.topk(max(1, round(n * (1 - p)))).indices + prefix
            keep = torch.cat([torch.arange(prefix), top, torch.arange(prefix + n, hidden.shape[0])]).sort().values
            hidden, patch_type, origin = hidden[keep], patch_type[keep], origin[keep]
            finish_pruning = True
        if not finish_merging:
            upper = oracle_prune_ratio(sparsity, cost, num_layers)
            by_type, by_index = torch.where(patch_type == torch.arange(patches)[:, None])
            a, b = hidden[by_index[:-1]], hidden[by_index[1:]]
            similarity = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
            similarity[by_type[:-1] != by_type[1:]] = -2
            similarity = torch.cat([torch.tensor([-2.0], dtype=similarity.dtype), similarity])
            n = int((patch_type != -1).sum())
            merge_index = torch.where(similarity >= threshold)[0]
            above = merge_index.shape[0] / n
            if above < upper:
                sparsity.append(above)
                finish_merging = above < lower_bound
            else:
                merge_index = similarity.topk(int(upper * n)).indices.sort().values
                finish_merging = finish_pruning = True
            marked = torch.zeros(similarity.shape[0], dtype=torch.bool)
            marked[merge_index] = True
            keep = torch.ones(hidden.shape[0], dtype=torch.bool)
            position = 0
            while position < marked.shape[0]:  # runs of marked entries in the by-patch order
                if not marked[position]:
                    position += 1
                    continue
                end = position
                while end + 1 < marked.shape[0] and marked[end + 1]:
                    end += 1
                anchor, members = by_index[position - 1], by_index[position:end + 1]
                hidden[anchor] = (hidden[anchor] + hidden[members].sum(dim=0)) / (members.shape[0] + 1)
                keep[members] = False
                position = end + 1
            hidden, patch_type, origin = hidden[keep], patch_type[keep], origin[keep]
    video = origin >= 0
    return origin[video].tolist(), hidden[video]


@functools.cache
def compare_with_upstream_steps(seed):
    """Run tokenreduce and the tensor-step oracle on one random case; return tokenreduce's result."""
    rng = random.Random(seed)
    t, h, w, dim = rng.randint(2, 6), rng.randint(1, 3), rng.randint(1, 3), rng.randint(2, 6)
    x = video(seed, t=t, h=h, w=w, dim=dim, noise=[0.1, 0.3, 0.6, 1.0][seed % 4])
    importance = torch.rand(1, t, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    cost, threshold, layers = [0.3, 0.5, 0.7][seed % 3], [0.6, 0.8, 0.9][seed % 3], rng.choice([4, 8, 28])
    red = tr.build("framefusion", cost=cost, similarity_lower_bound=threshold, num_layers=layers)(
        tr.VisualTokens(x, importance=importance))
    kept, hidden = literal_official_framefusion(x, importance, cost, threshold, 0.1, layers)
    assert red.keep_indices(0).tolist() == kept
    torch.testing.assert_close(red.features[0, red.keep_indices(0)], hidden)
    return red


@pytest.mark.parametrize("seed", range(8))
def test_matches_upstream_tensor_steps_with_text_tokens(seed):
    compare_with_upstream_steps(seed)


def test_upstream_step_cases_cover_merging_top_k_and_pruning():
    results = [compare_with_upstream_steps(seed) for seed in range(8)]
    assert any(r.info["sparsity"] == [[]] for r in results)  # the top-k branch at the first point
    assert any(len(r.info["sparsity"][0]) >= 2 and r.info["sparsity"][0][0] > 0 for r in results)
    assert any((r.roles & int(Role.IMPORTANT)).any() for r in results)  # pruning by attention


def test_half_precision_with_large_norms_merges_what_float32_merges():
    # decoder hidden states reach norms where |a|*|b| overflows fp16 (65504): ~256 and beyond
    g = torch.Generator().manual_seed(5)
    base = torch.randn(1, 1, 3, 3, 16, generator=g)
    frames = base + 0.3 * torch.randn(1, 6, 3, 3, 16, generator=g)
    x32 = (frames * (600 / frames.norm(dim=-1, keepdim=True))).half().float()  # values fp16 holds exactly
    assert x32.norm(dim=-1).min() > 256
    importance = torch.rand(1, 6, 3, 3, generator=g)
    reducer = tr.build("framefusion", num_layers=4, similarity_lower_bound=0.8)
    half = reducer(tr.VisualTokens(x32.half(), importance=importance.half(), num_layers=4))
    full = reducer(tr.VisualTokens(x32, importance=importance, num_layers=4))
    assert (full.roles & Role.ABSORBED).sum() >= 10  # fp32 merges many tokens
    assert torch.equal(half.keep_mask, full.keep_mask) and torch.equal(half.roles, full.roles)
    torch.testing.assert_close(half.features.float(), full.features, rtol=2e-3, atol=0.5)
