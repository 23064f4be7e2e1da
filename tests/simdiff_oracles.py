"""Slow, obviously-correct pure-Python versions of ST-SimDiff for the tests (loops, union-find,
all-pairs cosines in float64), and a generator of token grids with real similarity structure."""

from __future__ import annotations

import math
from fractions import Fraction

import torch

from tokenreduce.budget import cost_prune_ratio


def structured_features(b: int, t: int, h: int, w: int, d: int, *, seed: int, noise: float = 0.25,
                        palette: int = 3) -> torch.Tensor:
    """Tokens drawn from a few palette vectors plus noise; regions persist over frames, so that
    there are spatial and temporal edges above 0.8, communities, and changes (events)."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.randn(palette, d, generator=g)
    pick = torch.randint(0, palette, (b, 1, h, w), generator=g).expand(b, t, h, w).clone()
    change = torch.rand(b, t, h, w, generator=g) < 0.2
    pick[change] = torch.randint(0, palette, (int(change.sum()),), generator=g)
    return colours[pick] + noise * torch.randn(b, t, h, w, d, generator=g)


class UnionFind:
    def __init__(self, nodes):
        self.parent = {v: v for v in nodes}

    def find(self, v):
        while self.parent[v] != v:
            self.parent[v] = self.parent[self.parent[v]]
            v = self.parent[v]
        return v

    def union(self, a, b):
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def groups(self):
        out: dict[int, list[int]] = {}
        for v in sorted(self.parent):
            out.setdefault(self.find(v), []).append(v)
        return sorted(out.values(), key=lambda g: g[0])


def cosine(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """float64 cosine; ``None`` when a vector is zero."""
    a, b = a.double(), b.double()
    na, nb = math.sqrt(float((a * a).sum())), math.sqrt(float((b * b).sum()))
    if na == 0 or nb == 0:
        return None
    return float((a * b).sum()) / (na * nb)


def grid_pairs(t: int, h: int, w: int):
    """(earlier, later, kind, direction) for every neighbour pair of the grid, kind in
    {"spatial", "temporal"}, direction in {"right", "bottom", "temporal"}."""
    idx = lambda f, r, c: f * h * w + r * w + c
    for f in range(t):
        for r in range(h):
            for c in range(w):
                if c + 1 < w:
                    yield idx(f, r, c), idx(f, r, c + 1), "spatial", "right"
                if r + 1 < h:
                    yield idx(f, r, c), idx(f, r + 1, c), "spatial", "bottom"
                if f + 1 < t:
                    yield idx(f, r, c), idx(f + 1, r, c), "temporal", "temporal"


def pair_cosines(x: torch.Tensor, members: list[int]) -> dict[tuple[int, int], float]:
    """Symmetric all-pairs cosines of ``members`` (self = 1 for nonzero, 0 for zero vectors)."""
    out = {}
    for i in members:
        for j in members:
            if i == j:
                out[i, j] = 0.0 if float(x[i].abs().sum()) == 0 else 1.0
            elif (j, i) in out:
                out[i, j] = out[j, i]
            else:
                c = cosine(x[i], x[j])
                out[i, j] = 0.0 if c is None else c
    return out


def paper_select(x: torch.Tensor, valid: list[bool], grid, *, ratio, tau_sim=0.8, tau_diff=0.2,
                 spatial=True, temporal=True, right=True, bottom=True, events=True,
                 max_size: int | None = None) -> tuple[set[int], set[int]]:
    """One sample: (T_rep, T_event) of the paper (§4.2-4.4), with connected components."""
    t, h, w = grid
    nodes = [n for n in range(t * h * w) if valid[n]]
    uf = UnionFind(nodes)
    event_set = set()
    for a, b, kind, direction in grid_pairs(t, h, w):
        if not (valid[a] and valid[b]):
            continue
        c = cosine(x[a], x[b])
        c = 0.0 if c is None else c
        if kind == "temporal" and events and c < tau_diff:
            event_set.add(b)
        use = (kind == "temporal" and temporal) or (
            kind == "spatial" and spatial and (right if direction == "right" else bottom))
        if use and c > tau_sim:
            uf.union(a, b)
    communities = uf.groups()
    if max_size is not None:
        split = []
        for group in communities:
            k = math.ceil(len(group) / max_size)
            pieces: dict[int, list[int]] = {}
            for r, v in enumerate(group):
                pieces.setdefault(r * k // len(group), []).append(v)
            split.extend(pieces.values())
        communities = split
    reps = set()
    for group in communities:
        keep = math.ceil(Fraction(repr(ratio)) * len(group)) if not isinstance(ratio, Fraction) \
            else math.ceil(ratio * len(group))
        if len(group) == 1:
            reps.update(group)
            continue
        cos = pair_cosines(x, group)
        central = {i: math.fsum(cos[i, j] for j in group if j != i) / (len(group) - 1) for i in group}
        ranked = sorted(group, key=lambda i: (-central[i], i))
        reps.update(ranked[:keep])
    return reps, event_set


def trim(candidates: set[int], valid: list[bool], importance: list[float], count: int) -> set[int]:
    """Keep ``count`` tokens: best candidates by importance, then fill with the best others."""
    ranked = sorted(candidates, key=lambda i: (-importance[i], i))
    kept = set(ranked[:count])
    others = sorted((i for i in range(len(valid)) if valid[i] and i not in candidates),
                    key=lambda i: (-importance[i], i))
    kept.update(others[:max(count - len(kept), 0)])
    return kept


def reference_stage1(x: torch.Tensor, valid: list[bool], grid, *, cost, num_layers, tau_sim=0.8,
                     tau_diff=0.2, spatial=True, temporal=True, right=True, bottom=True, strategy=3):
    """One sample, the official stage 1 loop. Returns (dropped set, sparsity list)."""
    t, h, w = grid
    n_visual = sum(valid)
    events = set()
    edges = []
    for a, b, kind, direction in grid_pairs(t, h, w):
        if not (valid[a] and valid[b]):
            continue
        c = cosine(x[a], x[b])
        if kind == "temporal":
            if c is None:  # NaN upstream: neither an edge nor an event
                continue
            if -2 < c < tau_diff:
                events.add(b)
            if temporal and c >= tau_sim:
                edges.append((a, b))
        elif spatial and (right if direction == "right" else bottom) and (0.0 if c is None else c) > tau_sim:
            edges.append((a, b))
    if not edges:
        return set(), []
    uf = UnionFind({v for e in edges for v in e})
    for a, b in edges:
        uf.union(a, b)
    components = uf.groups()
    weights, scores = [], []
    for comp in components:
        cos = pair_cosines(x, comp)
        n = len(comp)
        weights.append({i: math.fsum(cos[i, j] for j in comp) / n for i in comp})
        total = math.fsum(cos[i, j] for i in comp for j in comp)
        if strategy == 1:
            scores.append(float(sum(comp)))
        elif strategy == 2:
            scores.append(total / 2 / (n - 1))
        else:
            scores.append((total - n) / (n - 1) / n)
    s_max = cost_prune_ratio([], cost, num_layers)
    order = sorted(range(len(components)), key=lambda c: (-scores[c], components[c][0]))
    dropped: set[int] = set()
    merged = 0
    for c in order:
        comp = components[c]
        m = math.ceil(len(comp) * s_max)
        if (merged + m) / n_visual > s_max:
            break
        ranked = sorted(comp, key=lambda i: (-weights[c][i], i))
        for token in ranked[len(comp) - m:]:
            if token in events:
                m -= 1
                continue
            dropped.add(token)
        merged += m
    return dropped, [merged / n_visual]


def reference_stage2(valid_after: list[bool], importance: list[float], sparsity, *, cost, num_layers):
    """One sample, the official stage 2: round(n_left (1 - p)) by importance among survivors."""
    left = [i for i, ok in enumerate(valid_after) if ok]
    p = cost_prune_ratio(sparsity, cost, num_layers)
    k = max(min(round(len(left) * (1 - p)), len(left)), 1)
    return set(sorted(left, key=lambda i: (-importance[i], i))[:k])
