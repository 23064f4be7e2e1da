"""``holitom``: HoliTom (Shao et al., NeurIPS 2025), holistic token merging outside and inside the LLM.

Official semantics (cokeshao/HoliTom, ``holitom/llava_arch.py`` and ``holitom/modeling_qwen2.py``),
two steps of one strategy (``steps()``):

1. Outside the LLM (``HoliTomOuter``, encoder stage: it needs the encoder's attention per token as
   ``importance``), per video: frames are split into static windows (``graph/static_windows.py``:
   a position is static over a window when its cosine to the next frame exceeds ``tau`` at every
   step). With ``r`` the retain ratio and ``saved`` the tokens the windows save, every part keeps
   ``r' = min(r / ((N - saved) / N), 1)`` of its tokens:

   - the static positions of a window become one token each (the mean over the window's frames),
     clustered with DPC-kNN (``round(n · r')`` clusters, ``min(k, clusters)`` neighbours); each
     cluster is ``beta · centre + (1 - beta) · mean(other members)`` (the centre alone when it has
     none), placed at the centre's position in the window's first frame;
   - the other (dynamic) tokens of every frame: ``c = ceil(n · r')`` of them stay, ``round(c · (1 -
     contextual))`` by the highest ``importance``, and the rest are ``c - dominant`` DPC-kNN clusters
     of the remaining dynamic tokens (merged as above), at their centres' positions.

2. Inside the LLM (``HoliTomMerge``, before decoder ``layer``; left out with ``layer=None``): of the
   ``n`` visual tokens present, the ``round(n · (1 - merge_ratio))`` with the highest last-query
   attention of layer ``layer - 1`` stay; every other one is averaged into the kept token it is most
   cosine-similar to, in sequence order (``h_kept = (h_kept + h_merged) / 2`` each time), as upstream.

Budget: ``ratio`` r (the fraction of the video's tokens that enter the LLM: upstream's
``RETAIN_RATIO``) or ``count`` (r = count / N). The count is decided per part (``ceil`` per frame,
``round`` per window), so a video keeps about ``r · N`` tokens: at most one more per frame, and
``± 1/2`` per window. See docs/strategies.md for the differences from the official code.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch

from tokenreduce.errors import ConfigError
from tokenreduce.frames import frame_top_k, sample_rows
from tokenreduce.graph.blocked import next_frame_cosine
from tokenreduce.graph.density_peaks import cluster_sums, density_peak_clusters
from tokenreduce.graph.static_windows import select_static_windows
from tokenreduce.interfaces import BudgetConfig, EncoderConfig, InLLMConfig, Reducer, Signal, Stage
from tokenreduce.pipeline import run_in_order
from tokenreduce.registry import register_strategy
from tokenreduce.selection import at_least_float32
from tokenreduce.strategies.attention_prune import AttentionShare
from tokenreduce.tokens import Reduction, Role, VisualTokens

DEFAULT_RATIO = 0.15


@dataclasses.dataclass(frozen=True)
class BlendedClusters:
    """DPC-kNN clusters of frame rows merged HoliTom's way: ``centers`` bool ``[R, P]``,
    ``absorbed`` bool ``[R, P]`` (members that are not centres), ``merged`` ``[R, P, D]``."""

    centers: torch.Tensor
    absorbed: torch.Tensor
    merged: torch.Tensor


def blended_clusters(features: torch.Tensor, members: torch.Tensor, clusters: torch.Tensor, neighbours: int,
                     beta: float) -> BlendedClusters:
    """Cluster the ``members`` of each row of ``features`` ``[R, P, D]`` into ``clusters[r]``
    clusters (rows with 0 clusters keep nothing) and blend each: ``beta · centre + (1 - beta) ·
    mean(other members)``."""
    centers = torch.zeros_like(members)
    merged = features.clone()
    rows = (clusters > 0).nonzero().flatten()
    if rows.numel():
        found = density_peak_clusters(features[rows], members[rows], clusters[rows],
                                      clusters[rows].clamp(max=neighbours))
        others = members[rows] & ~found.centers
        sums, counts = cluster_sums(features[rows], found.assignment, others)
        means = sums / counts.clamp(min=1).unsqueeze(-1)
        blended = beta * features[rows] + (1 - beta) * means
        merged[rows] = torch.where((counts > 0).unsqueeze(-1), blended, features[rows])
        centers[rows] = found.centers
    return BlendedClusters(centers, members & ~centers, merged)


def ceil_times(counts: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """``math.ceil(n * r)`` in float64, per element (``ratio`` broadcasts)."""
    return torch.ceil(counts.double() * ratio).long()


def round_times(counts: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """Python's ``round(n * r)`` (half to even) in float64, per element."""
    return torch.round(counts.double() * ratio).long()


class HoliTomOuter(Reducer):
    """HoliTom's merging before the LLM: static windows, then attention and density clusters."""

    stage: ClassVar[Stage] = Stage.ENCODER
    requires: ClassVar[frozenset[Signal]] = frozenset({Signal.IMPORTANCE})

    @dataclasses.dataclass
    class Config(EncoderConfig, BudgetConfig):
        tau: float = 0.8
        beta: float = 0.6
        contextual: float = 0.0
        neighbours: int = 7
        max_window: int = 1024
        encoder_layer: int = -1

        default_ratio: ClassVar[float | None] = DEFAULT_RATIO

        def validate(self) -> None:
            super().validate()
            if not -1.0 <= self.tau <= 1.0:
                raise ConfigError(f"{self.name}.tau must be in [-1, 1], got {self.tau}")
            for field in ("beta", "contextual"):
                if not 0.0 <= getattr(self, field) <= 1.0:
                    raise ConfigError(f"{self.name}.{field} must be in [0, 1], got {getattr(self, field)}")
            if self.neighbours < 1:
                raise ConfigError(f"{self.name}.neighbours must be >= 1, got {self.neighbours}")
            if self.max_window < 1:
                raise ConfigError(f"{self.name}.max_window must be >= 1, got {self.max_window}")

    def retain_ratios(self, tokens: VisualTokens) -> list[float]:
        """Per sample, the retain ratio ``r`` of its valid tokens (``ratio``, relative to the
        budget base, or ``count / N``)."""
        cfg = self.config
        if cfg.count is not None:
            return [cfg.count / valid for valid in tokens.valid_counts().tolist()]
        return [cfg.ratio if base == valid else cfg.ratio * base / valid
                for base, valid in zip(tokens.budget_counts().tolist(), tokens.valid_counts().tolist())]

    def reduce(self, tokens: VisualTokens) -> Reduction:
        cfg = self.config
        b, t, h, w = tokens.batch_size, *tokens.grid
        p = h * w
        valid = tokens.flat_valid().reshape(b, t, p)
        features = tokens.features.reshape(b, t, p, -1)
        steps = (next_frame_cosine(tokens.features).reshape(b, t - 1, p) > cfg.tau) & valid[:, :-1] & valid[:, 1:]
        retain = self.retain_ratios(tokens)
        everything = torch.tensor([r >= 1 for r in retain], device=tokens.device).view(b, 1, 1)
        windows = select_static_windows(steps & ~everything, cfg.max_window)
        n = tokens.valid_counts().tolist()
        keep_ratio = torch.tensor([min(r / ((v - s) / v), 1) for r, v, s in zip(retain, n, windows.saved)],
                                  dtype=torch.float64, device=tokens.device)
        static = windows.static()
        frame = torch.arange(t, device=tokens.device).view(1, t, 1)
        slots = static & (frame == windows.start.unsqueeze(-1))  # a window's static tokens, in its first frame

        # static tokens: the window mean at each static position, then density clusters
        first_frame = (windows.start + torch.arange(b, device=tokens.device).unsqueeze(1) * t).reshape(-1)
        window_sums = torch.zeros_like(features.reshape(b * t, p, -1)).index_add_(
            0, first_frame, features.reshape(b * t, p, -1))
        lengths = torch.zeros(b * t, dtype=torch.long, device=tokens.device).index_add_(
            0, first_frame, torch.ones_like(first_frame))
        means = window_sums / lengths.clamp(min=1).to(features.dtype).view(b * t, 1, 1)
        static_clusters = round_times(slots.sum(dim=2), keep_ratio.unsqueeze(1))
        dynamic = valid & ~static
        kept = ceil_times(dynamic.sum(dim=2), keep_ratio.unsqueeze(1))
        # a video that would keep nothing (static windows rounding to no cluster) keeps one cluster
        # in its first static window (upstream would hand the LLM no token of it)
        empty = (static_clusters.sum(dim=1) + kept.sum(dim=1)) == 0
        first_window = (slots.sum(dim=2) > 0).long().argmax(dim=1)
        static_clusters[empty, first_window[empty]] = 1
        stat = blended_clusters(means, slots.reshape(b * t, p), static_clusters.reshape(-1), cfg.neighbours,
                                cfg.beta)
        merged_away = static & (static_clusters.gather(1, windows.start) > 0).unsqueeze(-1)

        # dynamic tokens of every frame: by attention, then density clusters of the rest
        dominant_counts = round_times(kept, torch.tensor(1 - cfg.contextual, dtype=torch.float64))
        dominant = frame_top_k(tokens.flat_importance(), dominant_counts, dynamic.reshape(b, -1), t).reshape(b, t, p)
        rest = dynamic & ~dominant
        ctx = blended_clusters(features.reshape(b * t, p, -1), rest.reshape(b * t, p),
                               (kept - dominant_counts).reshape(-1), cfg.neighbours, cfg.beta)

        static_kept, ctx_kept = sample_rows(stat.centers, b), sample_rows(ctx.centers, b)
        dominant = dominant.reshape(b, -1)
        keep = static_kept | dominant | ctx_kept
        merged = torch.where(static_kept.unsqueeze(-1), sample_rows(stat.merged, b), sample_rows(ctx.merged, b))
        absorbed = (merged_away.reshape(b, -1) & ~static_kept) | sample_rows(ctx.absorbed, b)
        roles = (torch.where(static_kept | ctx_kept, int(Role.MERGED), 0)
                 | torch.where(static_kept, int(Role.REPRESENTATIVE), 0)
                 | torch.where(dominant, int(Role.IMPORTANT), 0)
                 | torch.where(absorbed, int(Role.ABSORBED), 0)).to(torch.int32)
        return Reduction(keep, roles, grid=tokens.grid, valid=tokens.flat_valid(), features=merged,
                         info={"windows": windows.start.tolist(), "retain_ratio": keep_ratio.tolist()})


class HoliTomMerge(AttentionShare):
    """HoliTom's merging inside the LLM: keep the most attended tokens, average the others in."""

    @dataclasses.dataclass
    class Config(InLLMConfig):
        layer: int = 18
        merge_ratio: float = 0.5

    def kept_count(self, present: int) -> int:
        """``round(n · (1 - merge_ratio))``, upstream's Python ``round``."""
        return round(present * (1 - self.config.merge_ratio))

    def reduce(self, tokens: VisualTokens) -> Reduction:
        valid = tokens.flat_valid()
        keep = self.most_attended(tokens)
        merging = valid & ~keep
        hidden = tokens.flat_features()
        x = at_least_float32(hidden)
        slots = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices[:, :int(keep.sum(dim=1).max())]
        norms = torch.linalg.vector_norm(x, dim=-1)
        kept = x.gather(1, slots.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # the kept tokens, in flat order
        similarity = (x @ kept.transpose(1, 2)) / (norms.unsqueeze(2) * norms.gather(1, slots).unsqueeze(1))
        similarity = similarity.nan_to_num(nan=float("-inf")).masked_fill(~keep.gather(1, slots).unsqueeze(1),
                                                                         float("-inf"))
        target = slots.gather(1, similarity.argmax(dim=-1))  # the lowest kept index on ties
        merged = halving_merge(hidden, merging, target)
        anchors = torch.zeros_like(keep).scatter_(1, target.masked_fill(~merging, 0), merging) & keep
        roles = (torch.where(keep, int(Role.IMPORTANT), 0) | torch.where(anchors, int(Role.MERGED), 0)
                 | torch.where(merging, int(Role.ABSORBED), 0)).to(torch.int32)
        return Reduction(keep, roles, grid=tokens.grid, valid=valid, features=merged)


def halving_merge(hidden: torch.Tensor, merging: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``hidden`` ``[B, N, D]`` after ``h[target] = (h[target] + h[i]) / 2`` for every ``merging``
    token ``i`` in increasing order: a target reached ``m`` times ends as ``h / 2^m + Σ_j h_j /
    2^(m - j)`` (``j`` = 0-based rank of the merged token among its target's)."""
    b, n, _ = hidden.shape
    flat_target = (target + torch.arange(b, device=hidden.device).unsqueeze(1) * n).masked_fill(~merging, b * n)
    order = torch.arange(b * n, device=hidden.device)
    times = torch.zeros(b * n + 1, dtype=torch.long, device=hidden.device).index_add_(
        0, flat_target.reshape(-1), torch.ones(b * n, dtype=torch.long, device=hidden.device))
    by_target = torch.sort(flat_target.reshape(-1), stable=True).indices  # flat order within a target
    first = torch.cumsum(times, 0) - times
    rank = torch.empty_like(order)
    rank[by_target] = order - first[flat_target.reshape(-1)[by_target]]
    m = times[:-1]
    scale = torch.pow(2.0, -(times[flat_target.reshape(-1)] - rank).double()).to(hidden.dtype)
    out = hidden.reshape(b * n, -1) * torch.pow(2.0, -m.double()).to(hidden.dtype).unsqueeze(1)
    contrib = hidden.reshape(b * n, -1) * scale.unsqueeze(1)
    merging_rows = merging.reshape(-1)
    out = out.index_add(0, flat_target.reshape(-1)[merging_rows], contrib[merging_rows])
    return out.reshape(hidden.shape)


@register_strategy("holitom")
class HoliTom(Reducer):
    """HoliTom: static windows merged and dynamic tokens kept by attention before the LLM, then
    the less attended tokens averaged into the most similar kept ones inside it.

    Parameters: ``ratio`` (default 0.15) or ``count``; ``tau`` (0.8), ``beta`` (0.6),
    ``contextual`` (upstream's ``D``, 0.0), ``neighbours`` (upstream's ``K``, 7), ``max_window``
    (1024), ``encoder_layer`` (-1); ``layer`` (upstream's ``HOLITOM_k``, 18; ``None`` leaves the
    in-LLM merge out: "HoliTom (w/o M)") and ``merge_ratio`` (``HOLITOM_r``, 0.5).
    """

    @dataclasses.dataclass
    class Config(HoliTomOuter.Config, InLLMConfig):
        layer: int | None = 18
        merge_ratio: float = 0.5

        def validate(self) -> None:
            super().validate()
            if not 0.0 <= self.merge_ratio < 1.0:
                raise ConfigError(f"{self.name}.merge_ratio must be in [0, 1), got {self.merge_ratio}")

    @classmethod
    def examples(cls) -> list[dict[str, Any]]:
        return [{"ratio": 0.3, "layer": 1}, {"count": 6, "tau": 0.5, "contextual": 0.5, "layer": None},
                {"ratio": 0.5, "merge_ratio": 0.8, "beta": 1.0, "max_window": 2, "position": "after_attention"}]

    def budget_steps(self) -> list[Reducer]:
        """The merging before the LLM: ``ratio`` is the share that enters it (the in-LLM merge then
        keeps ``1 - merge_ratio`` of that from ``layer`` on)."""
        return self.steps()[:1]

    stage: ClassVar[Stage] = Stage.ENCODER
    requires: ClassVar[frozenset[Signal]] = frozenset({Signal.IMPORTANCE})

    def steps(self) -> list[Reducer]:
        cfg = self.config
        outer = HoliTomOuter(ratio=cfg.ratio, count=cfg.count, tau=cfg.tau, beta=cfg.beta,
                             contextual=cfg.contextual, neighbours=cfg.neighbours, max_window=cfg.max_window,
                             encoder_layer=cfg.encoder_layer)
        if cfg.layer is None or cfg.ratio == 1:
            return [outer]
        return [outer, HoliTomMerge(layer=cfg.layer, position=cfg.position, merge_ratio=cfg.merge_ratio)]

    def reduce(self, tokens: VisualTokens) -> Reduction:
        return run_in_order(self.steps(), tokens)
