"""A second oracle of the official ST-SimDiff code (bingjunluo/ST-SimDiff, simdiff/new_topk.py,
eval ``merge_type=new_topk``), following its tensor steps one by one on the sequence the model
builds: ``[prefix text][T frames x H x W visual tokens][suffix text]``, batch size 1, fp32.

Unlike ``simdiff_oracles.reference_stage1`` (float64, the REFERENCE.md prose), this one redoes
what the official code does with tensors: the ``patch_type`` sequence and its ``torch.where``
ordering for the temporal cosine ``dot / (||a|| ||b||)`` (no epsilon), ``F.normalize`` for the
spatial cosines and the component matrices, the union-find over the edge list, ``cos.mean(-1)``
member weights, fp32 component scores, the greedy loop with its ``break``, ``merge_ratio`` in the
sparsity list, the cost formula with ``num_layers=28`` (re-implemented here, not imported), and
stage 2's ``topk(round(n_left * (1 - p)))`` over the surviving visual tokens.

Two documented conventions replace behaviour the official code leaves to chance:
- both sorts use ``stable=True`` (the tie rule: equal values keep ascending order; the official
  default sort is stable on CUDA beyond 32 elements but not on CPU beyond 16);
- weights equal in exact arithmetic tie: identical tokens get identical rows of the cosine matrix
  (computed elementwise, not by a BLAS ``mm`` whose blocking may round identical rows
  differently), and the two members of a 2-token component get equal weights (upstream
  separates them by the last bit of ``||x̂||²``); stage 2 breaks equal attentions by the lower
  index.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

TEXT = -1
OFFICIAL_LAYERS = 28


def official_pruning_ratio(sparsity_list: list[float], cost: float, num_layers: int = OFFICIAL_LAYERS) -> float:
    """``SimDiff._compute_pruning_ratio``, statement by statement."""
    s = 1
    total = 0
    for value in sparsity_list:
        s *= 1 - value
        total += s
    remain = num_layers * cost - total
    if remain < 0:
        raise ValueError("The cost is too small")
    if remain / ((num_layers - len(sparsity_list)) * s) > 1:
        return 0
    return 1 - (remain / ((num_layers - len(sparsity_list)) * s))


def _find(parent: dict, v):
    if parent[v] != v:
        parent[v] = _find(parent, parent[v])
    return parent[v]


def _components(edges: list[tuple[int, int]]) -> list[list[int]]:
    """``find_connected_components_union_find``: union ``parent[find(u)] = find(v)``, members
    sorted, components sorted by their first member."""
    parent = {}
    for u, v in edges:
        parent.setdefault(u, u)
        parent.setdefault(v, v)
    for u, v in edges:
        parent[_find(parent, u)] = _find(parent, v)
    groups: dict[int, list[int]] = {}
    for node in parent:
        groups.setdefault(_find(parent, node), []).append(node)
    components = [sorted(g) for g in groups.values()]
    components.sort(key=lambda c: c[0])
    return components


def official_run(x: torch.Tensor, attention: torch.Tensor, *, cost: float, tau_sim: float = 0.8,
                 tau_diff: float = 0.2, strategy: int = 3, spatial: bool = True, temporal: bool = True,
                 right: bool = True, bottom: bool = True, prefix: int = 3, suffix: int = 2,
                 seed: int = 0, found: dict | None = None,
                 pairwise: str = "elementwise") -> tuple[set[int], set[int], list[float]]:
    """One video ``x`` ``[T, H, W, D]`` fp32 and its layer-1 last-query attention ``[T, H, W]``.

    Returns (visual tokens kept after stage 1, after stage 2, the sparsity list), as flat visual
    indices ``t*H*W + h*W + w``. Strategy 1 is not supported (the official code crashes on it).
    ``found``, when given, receives the components (flat visual indices) under ``"components"``.
    ``pairwise="mm"`` computes each component's cosine matrix with ``torch.mm`` exactly as
    upstream does (its memory is O(n^2), not O(n^2 d): what timing the official code needs on
    large components; ties between identical tokens are then left to the BLAS).
    """
    if strategy not in (2, 3):
        raise ValueError("strategy 1 fails upstream (per_component_weight is never filled)")
    t, h, w, d = x.shape
    patch_num = h * w
    g = torch.Generator().manual_seed(seed)
    hidden = torch.cat([torch.randn(prefix, d, generator=g), x.reshape(-1, d).float(),
                        torch.randn(suffix, d, generator=g)])[None]
    start = prefix
    end = start + t * patch_num - 1
    patch_type = torch.tensor([[TEXT] * prefix + list(range(patch_num)) * t + [TEXT] * suffix])

    # ---- stage 1 (layer 0, before attention, on the input embeddings) ----
    sparsity_list: list[float] = []
    s_max = official_pruning_ratio(sparsity_list, cost)
    type_by_patch, index_by_patch = torch.where(patch_type == torch.arange(patch_num)[:, None])
    a, b = hidden[0, index_by_patch[:-1]], hidden[0, index_by_patch[1:]]
    similarity = torch.sum(a * b, dim=-1) / (torch.norm(a, dim=-1) * torch.norm(b, dim=-1))
    similarity[type_by_patch[:-1] != type_by_patch[1:]] = -2
    similarity = torch.cat([torch.full((1,), -2.0), similarity])
    frame_token_num = int((patch_type != TEXT).sum())

    events: set[int] = set()
    edges: list[tuple[int, int]] = []
    for i in range(similarity.shape[0]):
        if similarity[i] > -2 and similarity[i] < tau_diff:
            events.add(int(index_by_patch[i]))
        if temporal and similarity[i] >= tau_sim:
            edges.append((int(index_by_patch[i - 1]), int(index_by_patch[i])))
    if spatial:
        normalized = F.normalize(hidden[0, start:end + 1].reshape(t, h, w, -1), p=2, dim=-1)
        right_sim = torch.zeros(t, h, w)
        bottom_sim = torch.zeros(t, h, w)
        if right:
            for f in range(t):
                for r in range(h):
                    right_sim[f, r, :-1] = torch.sum(normalized[f, r, :-1] * normalized[f, r, 1:], dim=-1)
        if bottom:
            for f in range(t):
                for c in range(w):
                    bottom_sim[f, :-1, c] = torch.sum(normalized[f, :-1, c] * normalized[f, 1:, c], dim=-1)
        for f in range(t):
            for r in range(h):
                for c in range(w):
                    if right_sim[f, r, c] > tau_sim:
                        edges.append((f * patch_num + r * w + c + start, f * patch_num + r * w + c + 1 + start))
        for f in range(t):
            for r in range(h):
                for c in range(w):
                    if bottom_sim[f, r, c] > tau_sim:
                        edges.append((f * patch_num + r * w + c + start, f * patch_num + (r + 1) * w + c + start))

    token_mask = torch.ones(hidden.shape[1], dtype=torch.bool)
    if edges:
        components = _components(edges)
        if found is not None:
            found["components"] = [[i - start for i in members] for members in components]
        scores = torch.zeros(len(components))
        weights = []
        for k, members in enumerate(components):
            normed = F.normalize(hidden[0][members], p=2, dim=1)
            # the all-pairs cosine matrix of ``torch.mm(normed, normed.T)``, elementwise so that
            # identical tokens get bit-identical rows (the BLAS kernels behind torch.mm may round
            # two identical rows differently: upstream leaves such ties to its BLAS)
            if pairwise == "mm":
                cos = torch.mm(normed, normed.T)
            else:
                cos = (normed[:, None, :] * normed[None, :, :]).sum(-1)
            weight = cos.mean(dim=-1)
            if len(members) == 2:  # convention: the pair's weights are equal in exact arithmetic
                weight = weight.mean().expand(2)
            weights.append(weight)
            if strategy == 2:
                score = cos.float().sum() / 2 / (len(cos) - 1)
            else:
                score = (cos.float().sum() - len(cos)) / (len(cos) - 1) / len(cos)
            scores[k] = score.item()
        order = torch.sort(scores, descending=True, stable=True).indices
        merged = 0
        for k in order.tolist():
            members = components[k]
            merge_size = math.ceil(len(members) * s_max)
            if (merged + merge_size) / frame_token_num > s_max:
                break
            ranking = torch.sort(weights[k], descending=True, stable=True).indices
            for j in ranking[-merge_size:].tolist():
                if members[j] in events:
                    merge_size -= 1
                    continue
                token_mask[members[j]] = False
            merged += merge_size
        assert merged == int((~token_mask).sum())
        sparsity_list.append(merged / frame_token_num)
    after_stage1 = {i - start for i in range(start, end + 1) if token_mask[i]}

    # ---- stage 2 (layer 1, after attention): top-k of the surviving visual tokens ----
    seq_attention = torch.cat([torch.zeros(prefix), attention.reshape(-1).float(), torch.zeros(suffix)])
    surviving = token_mask.nonzero().flatten()  # the pruned sequence, in order
    length = len(after_stage1)
    visual = seq_attention[surviving][start:start + length]
    p = official_pruning_ratio(sparsity_list, cost)
    k = round(length * (1 - p))
    top = torch.sort(visual, descending=True, stable=True).indices[:k]  # topk; ties: lower index
    kept_positions = surviving[start + top]
    after_stage2 = {int(i) - start for i in kept_positions}
    return after_stage1, after_stage2, sparsity_list
