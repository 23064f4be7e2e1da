"""``flashvid``: FlashVID (Fan et al., ICLR 2026), attention-diversity selection and tree-based
spatio-temporal merging, with FastV-style pruning deep in the LLM.

Official semantics (Fanziyang-v/FlashVID, ``flashvid/utils.py``: ``flashvid_compression``,
``segment_compression``, ``segment``, ``spatiotemporal_compression``, ``dpc_knn``, ``fastv_prune``;
``flashvid/token_selection.py``: ``attn_div[_v2]_based_token_selection``), two steps of one strategy:

1. Before the LLM (``FlashVIDCompress``, encoder stage: it needs the encoder's attention per token
   as ``importance``), per video with a per-frame budget ``b``: ``a = ceil(b · alpha)`` tokens per
   frame by attention-calibrated max-min diversity (ADTS, ``graph/diversity.py``); the frames are
   cut into segments where the mean frame changes (DySeg, ``graph/video_segments.py``); inside a
   segment the other tokens link to their most similar token of the previous frame and merge into
   trees (TSTM, ``graph/redundancy_trees.py``) so that the segment keeps at least ``b`` tokens per
   frame; then each frame's remaining tokens become ``ceil(n · (b - a) · F / R)`` DPC-kNN clusters
   (``R`` = the segment's remaining tokens, ``F`` its frames), each the mean of its members placed
   at its centre.
2. Inside the LLM (``FlashVIDPrune``, before decoder ``layer``, default 20 as upstream; left out
   with ``layer=None``): the ``ceil(n · llm_ratio)`` visual tokens with the highest last-query
   attention of layer ``layer - 1`` stay.

Budget: ``ratio`` r (the fraction of the video's tokens entering the LLM: ``b = ceil(r · N / T)``),
``count`` (``b = ceil(count / T)``) or upstream's ``retention_ratio`` with ``expansion``
(``b = ceil(P · retention_ratio · expansion)``; upstream evaluates ``retention_ratio`` as the
average over layers of the pruned model). A frame keeps ``a`` + its clusters, each rounded up, so a
video keeps ``T · b`` tokens plus less than one per frame. See docs/strategies.md for the
differences from the official code.
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction
from typing import Any, ClassVar, Literal

import torch

from tokenreduce.budget import check_ratio
from tokenreduce.errors import ConfigError
from tokenreduce.graph.density_peaks import cluster_sums, density_peak_clusters
from tokenreduce.graph.diversity import (
    ATTENTION_SCALE,
    calibrated_distances,
    max_min_diverse,
    segment_relevance,
)
from tokenreduce.graph.redundancy_trees import grow_trees, merge_links, previous_frame_links
from tokenreduce.graph.video_segments import frame_means, segment_cuts, segment_ids
from tokenreduce.interfaces import BudgetConfig, EncoderConfig, InLLMConfig, Reducer, Signal, Stage
from tokenreduce.pipeline import run_in_order
from tokenreduce.registry import register_strategy
from tokenreduce.strategies.attention_prune import AttentionShare
from tokenreduce.tokens import Reduction, Role, VisualTokens

DEFAULT_RETENTION_RATIO = 0.25  # upstream's ``flashvid()`` defaults
DEFAULT_EXPANSION = 1.25
NEIGHBOURS = 7  # upstream's DPC-kNN ``k = min(clusters, 7)``


@dataclasses.dataclass
class CompressFields(EncoderConfig, BudgetConfig):
    """The settings of FlashVID's step before the LLM; upstream's ``retention_ratio`` with its
    ``expansion`` (default 1.25) is the alternative budget to ``ratio`` / ``count``."""

    retention_ratio: float | None = None
    expansion: float | None = None
    alpha: float = 0.7
    temporal_threshold: float = 0.8
    selection: Literal["attn_div", "attn_div_v2"] = "attn_div_v2"
    segment: bool = True
    segment_threshold: float = 0.9
    min_segments: int = 8
    complementary: bool = True
    encoder_layer: int = -1

    default_ratio: ClassVar[float | None] = None  # no budget: upstream's retention_ratio 0.25, expansion 1.25
    alternative_budgets: ClassVar[tuple[str, ...]] = ("retention_ratio", "expansion")

    def validate(self) -> None:
        super().validate()
        if self.retention_ratio is not None:
            check_ratio(self.retention_ratio, f"{self.name}.retention_ratio")
        if self.expansion is not None and self.expansion <= 0:
            raise ConfigError(f"{self.name}.expansion must be > 0, got {self.expansion}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"{self.name}.alpha must be in [0, 1], got {self.alpha}")
        if not -1.0 <= self.temporal_threshold < 1.0:
            raise ConfigError(f"{self.name}.temporal_threshold must be in [-1, 1) (upstream divides by zero "
                              f"at 1), got {self.temporal_threshold}")
        if not -1.0 <= self.segment_threshold <= 1.0:
            raise ConfigError(f"{self.name}.segment_threshold must be in [-1, 1], got {self.segment_threshold}")
        if self.min_segments < 1:
            raise ConfigError(f"{self.name}.min_segments must be >= 1, got {self.min_segments}")


class FlashVIDCompress(Reducer):
    """FlashVID before the LLM: ADTS per frame, DySeg, TSTM trees and DPC-kNN clusters per segment."""

    stage: ClassVar[Stage] = Stage.ENCODER
    requires: ClassVar[frozenset[Signal]] = frozenset({Signal.IMPORTANCE})
    Config = CompressFields

    def frame_budgets(self, tokens: VisualTokens) -> torch.Tensor:
        """Long ``[B]``: the tokens each frame may keep (before the per-frame rounding)."""
        cfg = self.config
        t, h, w = tokens.grid
        if cfg.count is not None:
            budgets = [math.ceil(cfg.count / t)] * tokens.batch_size
        elif cfg.ratio is not None:
            budgets = [math.ceil(Fraction(repr(cfg.ratio)) * base / t) for base in tokens.budget_counts().tolist()]
        else:
            rate = cfg.retention_ratio if cfg.retention_ratio is not None else DEFAULT_RETENTION_RATIO
            expansion = cfg.expansion if cfg.expansion is not None else DEFAULT_EXPANSION
            budgets = [math.ceil(h * w * rate * expansion)] * tokens.batch_size
        return torch.tensor(budgets, dtype=torch.long, device=tokens.device)

    def keeps_everything(self, tokens: VisualTokens, budget: torch.Tensor) -> torch.Tensor:
        """Bool ``[B]``: the budget covers the whole video (``ratio`` 1, ``count`` >= its tokens, or a
        frame budget no frame exceeds); every token stays (upstream fails there)."""
        t = tokens.grid[0]
        largest = tokens.flat_valid().reshape(tokens.batch_size, t, -1).sum(dim=2).amax(dim=1)
        covered = budget >= largest
        if self.config.ratio == 1:
            covered |= True
        if self.config.count is not None:
            covered |= tokens.valid_counts() <= self.config.count
        return covered

    def reduce(self, tokens: VisualTokens) -> Reduction:
        cfg = self.config
        b, (t, h, w) = tokens.batch_size, tokens.grid
        p = h * w
        valid = tokens.flat_valid().reshape(b, t, p)
        features = tokens.features.reshape(b, t, p, -1)
        budget = self.frame_budgets(tokens)
        everything = self.keeps_everything(tokens, budget).view(b, 1, 1)
        valid_here = valid & ~everything
        selecting = torch.tensor([math.ceil(n * cfg.alpha) for n in budget.tolist()], device=tokens.device)
        merging = budget - selecting

        cuts = torch.zeros(b, max(t - 1, 0), dtype=torch.bool, device=tokens.device)
        if cfg.segment and t > 1:
            cuts = segment_cuts(frame_means(features, valid), cfg.segment_threshold, cfg.min_segments,
                                cfg.complementary)
        segment = segment_ids(cuts)
        selected = self._select(features, tokens.flat_importance().reshape(b, t, p), valid_here, segment, selecting)
        eligible = valid_here & ~selected
        keep, values, roles = self._merge(features, valid_here, eligible, segment, cuts, budget, merging)
        keep = (keep | selected | (valid & everything)).reshape(b, -1)
        roles |= torch.where(selected, int(Role.IMPORTANT), 0).to(torch.int32)
        return Reduction(keep, roles.reshape(b, -1), grid=tokens.grid, valid=tokens.flat_valid(),
                         features=values.reshape(b, t * p, -1), info={"segments": segment.tolist()})

    def _select(self, features: torch.Tensor, attention: torch.Tensor, valid: torch.Tensor, segment: torch.Tensor,
                counts: torch.Tensor) -> torch.Tensor:
        """Bool ``[B, T, P]``: the ADTS picks of every frame."""
        b, t, p, _ = features.shape
        if self.config.alpha == 0:
            return torch.zeros_like(valid)
        terms = [attention.float() * ATTENTION_SCALE]
        if self.config.selection == "attn_div_v2":
            terms.append(segment_relevance(features, valid, segment))
        distances = calibrated_distances(features.reshape(b * t, p, -1), valid.reshape(b * t, p),
                                         [term.reshape(b * t, p) for term in terms])
        per_frame = torch.minimum(counts.view(b, 1), valid.sum(dim=2)).reshape(-1)
        picked = max_min_diverse(distances, valid.reshape(b * t, p), per_frame,
                                 exclude_picked=self.config.selection == "attn_div")
        return picked.reshape(b, t, p)

    def _merge(self, features: torch.Tensor, valid: torch.Tensor, eligible: torch.Tensor, segment: torch.Tensor,
               cuts: torch.Tensor, budget: torch.Tensor, merging: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """TSTM trees and DPC-kNN clusters: ``(keep [B, T, P], values [B, T, P, D], roles [B, T, P])``."""
        b, t, p, d = features.shape
        device = features.device
        roles = torch.zeros(b, t, p, dtype=torch.int32, device=device)
        eligible = eligible & (merging > 0).view(b, 1, 1)  # with no merge budget upstream keeps the ADTS tokens only
        if not bool(eligible.any()):
            return torch.zeros_like(valid), features, roles
        first = torch.nn.functional.pad(cuts, (1, 0), value=True)
        frames = torch.zeros(b, t, dtype=torch.long, device=device).scatter_add_(1, segment, torch.ones_like(segment))
        similarity, anchor = previous_frame_links(features, eligible, first)
        linked = merge_links(similarity, valid, segment, self.config.temporal_threshold, budget.view(b, 1) * frames)
        trees = grow_trees(features, linked & eligible, anchor, eligible)
        roots = trees.roots

        # per segment: how many clusters each frame's roots become
        left = torch.zeros(b, t, dtype=torch.long, device=device).scatter_add_(1, segment, roots.sum(dim=2))
        wanted = (merging.view(b, 1) * frames).double()
        adaptive = (wanted / left.clamp(min=1).double()).gather(1, segment)  # [B, T]
        clusters = torch.ceil(roots.sum(dim=2).double() * adaptive).long()
        clustering = (adaptive < 1.0) & (clusters > 0) & (left.gather(1, segment) > 0)
        clusters = torch.where(clustering, clusters, 0).reshape(-1)

        members = roots.reshape(b * t, p)
        values = trees.values.reshape(b * t, p, d)
        centers = members & ~clustering.reshape(-1, 1)
        merged = values.clone()
        rows = (clusters > 0).nonzero().flatten()
        if rows.numel():
            found = density_peak_clusters(values[rows], members[rows], clusters[rows],
                                          clusters[rows].clamp(max=NEIGHBOURS))
            sums, counts = cluster_sums(values[rows], found.assignment, members[rows])
            merged[rows] = torch.where(found.centers.unsqueeze(-1), sums / counts.clamp(min=1).unsqueeze(-1),
                                       values[rows])
            centers[rows] = found.centers
        centers = centers.reshape(b, t, p)
        absorbed = trees.merged | (roots & ~centers)
        roles |= torch.where(absorbed, int(Role.ABSORBED), 0).to(torch.int32)
        roles |= torch.where(centers & ((trees.children > 0) | clustering.unsqueeze(-1)), int(Role.MERGED), 0).to(
            torch.int32)
        roles |= torch.where(centers & clustering.unsqueeze(-1), int(Role.REPRESENTATIVE), 0).to(torch.int32)
        return centers, merged.reshape(b, t, p, d), roles


class FlashVIDPrune(AttentionShare):
    """FlashVID inside the LLM: keep ``ceil(n · llm_ratio)`` tokens by last-query attention."""

    @dataclasses.dataclass
    class Config(InLLMConfig):
        layer: int = 20
        llm_ratio: float = 0.3

    def kept_count(self, present: int) -> int:
        return math.ceil(present * self.config.llm_ratio)

    def reduce(self, tokens: VisualTokens) -> Reduction:
        keep = self.most_attended(tokens)
        return Reduction(keep, torch.full_like(keep, int(Role.IMPORTANT), dtype=torch.int32), grid=tokens.grid,
                         valid=tokens.flat_valid())


@register_strategy("flashvid")
class FlashVID(Reducer):
    """FlashVID: ADTS selection and TSTM merging before the LLM, attention pruning at layer 20.

    Parameters: one budget, ``ratio``, ``count`` or ``retention_ratio`` (default 0.25) with
    ``expansion`` (1.25); ``alpha`` (0.7), ``temporal_threshold`` (0.8), ``selection``
    (``"attn_div_v2"``, or ``"attn_div"`` as upstream runs Qwen2.5-VL), ``segment`` (True),
    ``segment_threshold`` (0.9), ``min_segments`` (8; upstream uses 4 for Qwen2.5-VL),
    ``complementary`` (True), ``encoder_layer`` (-1); ``layer`` (upstream's ``pruning_layer``, 20;
    ``None`` leaves the in-LLM pruning out) and ``llm_ratio`` (``llm_retention_ratio``, 0.3).
    """

    stage: ClassVar[Stage] = Stage.ENCODER
    requires: ClassVar[frozenset[Signal]] = frozenset({Signal.IMPORTANCE})

    @dataclasses.dataclass
    class Config(CompressFields, InLLMConfig):
        layer: int | None = 20
        llm_ratio: float = 0.3

        def validate(self) -> None:
            super().validate()
            check_ratio(self.llm_ratio, f"{self.name}.llm_ratio")

    @classmethod
    def examples(cls) -> list[dict[str, Any]]:
        return [{"ratio": 0.3, "layer": 1}, {"retention_ratio": 0.3, "expansion": 1.0, "layer": None},
                {"count": 8, "selection": "attn_div", "segment": False, "alpha": 0.0, "llm_ratio": 0.5},
                {"ratio": 0.5, "alpha": 1.0, "min_segments": 1, "position": "after_attention"}]

    def budget_steps(self) -> list[Reducer]:
        """The compression before the LLM: ``ratio`` is the share that enters it (the pruning at
        ``layer`` then keeps ``llm_ratio`` of that)."""
        return self.steps()[:1]

    def steps(self) -> list[Reducer]:
        fields = {f.name: getattr(self.config, f.name) for f in dataclasses.fields(CompressFields)}
        compress = FlashVIDCompress(**fields)
        if self.config.layer is None or self.config.ratio == 1:
            return [compress]
        return [compress, FlashVIDPrune(layer=self.config.layer, position=self.config.position,
                                        llm_ratio=self.config.llm_ratio)]

    def reduce(self, tokens: VisualTokens) -> Reduction:
        return run_in_order(self.steps(), tokens)
