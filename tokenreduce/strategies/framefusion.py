"""``framefusion``: FrameFusion (Fu et al., 2024), merge similar tokens layer by layer, then prune.

The official schedule (thu-nics/FrameFusion, ``framefusion/main.py``), per sample:

- At every merge point (before layer 0, then once per following layer) while merging is not
  finished: each remaining visual token is compared with the previous *remaining* token of the
  same grid position (temporal chain; the first one of a position has no neighbour). With ``n``
  remaining visual tokens and ``above`` the fraction whose cosine similarity is at least
  ``similarity_lower_bound``, and ``s_max = cost_prune_ratio(sparsity, cost, num_layers)``:

  * ``above < s_max``: every such token is merged; ``above`` is appended to ``sparsity``; when
    ``above < ratio_lower_bound`` merging is finished.
  * otherwise only the ``int(s_max * n)`` most similar tokens are merged and both merging and
    pruning are finished.

  Merging averages each run of consecutive marked tokens of a chain together with the unmarked
  token just before it, into that earlier token (``MERGED``); the run is removed (``ABSORBED``).
- At the first merge point after merging finished: keep the ``round(n * (1 - p))`` visual tokens
  with the highest ``importance`` (the last query's head-averaged attention of the layer just
  run), ``p = cost_prune_ratio(sparsity, cost, num_layers)``. Kept tokens keep their positions.

Adapters drive it with ``start``/``step`` (see ``LayerwiseReducer``): ``step(state, 0, tokens)``
before decoder layer 0 on the input embeddings, then ``step(state, l, tokens)`` for l = 1, 2, ...
with the current hidden states and, when ``state.wants_importance``, the last-query attention of
layer l-1 as ``importance``. With ``position="after_attention"`` (the default, as upstream) step
l runs inside layer l-1, right after its attention block (residual added) and before its MLP;
``"before_layer"`` runs it between the layers, after layer l-1's MLP. ``reduce(tokens)`` runs
the same schedule on fixed features and importance.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F

from tokenreduce.budget import check_ratio, cost_prune_ratio, scaled_count
from tokenreduce.errors import ConfigError, MissingSignalError
from tokenreduce.graph.blocked import pair_dots
from tokenreduce.interfaces import BudgetConfig, InLLMConfig, LayerwiseReducer, Signal
from tokenreduce.pipeline import combine
from tokenreduce.registry import register_strategy
from tokenreduce.selection import at_least_float32, top_k_mask
from tokenreduce.tokens import Reduction, Role, VisualTokens

NO_NEIGHBOUR = -2.0  # similarity of a token without a temporal neighbour (never merged)
DEFAULT_COST = 0.3  # upstream's default


@dataclasses.dataclass
class FrameFusionState:
    """Per-forward schedule state of a batch: one entry per sample."""

    num_layers: int
    cost: list[float]
    sparsity: list[list[float]]
    merging_done: list[bool]
    pruning_done: list[bool]

    @property
    def done(self) -> bool:
        """Every sample finished merging and pruning: the adapter stops calling ``step``."""
        return all(self.pruning_done)

    @property
    def wants_importance(self) -> bool:
        """The next ``step`` prunes some sample: it needs the attention probe as ``importance``."""
        return any(m and not p for m, p in zip(self.merging_done, self.pruning_done))


def previous_in_chain(valid: torch.Tensor) -> torch.Tensor:
    """Long ``[B, T, H, W]``: the frame of each token's previous valid token at its grid position
    (-1 where there is none)."""
    t = valid.shape[1]
    frame = torch.arange(t, device=valid.device).view(1, t, 1, 1)
    last_valid = torch.where(valid, frame, -1).cummax(dim=1).values
    return torch.cat([torch.full_like(last_valid[:, :1], -1), last_valid[:, :-1]], dim=1)


def temporal_similarity(features: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``[B, T, H, W]``: cosine similarity of each valid token to the previous valid token of its
    grid position (``NO_NEIGHBOUR`` where there is none, and at invalid tokens).

    The cosine is ``dot / (|a| * |b|)`` without epsilon, as upstream; a zero vector gives NaN,
    which is replaced by ``NO_NEIGHBOUR`` (never merged). It is computed in ``at_least_float32``
    precision and returned in it: in fp16 the product of two norms overflows once they pass
    ~256 (decoder hidden states do), and a similarity rounded back to fp16 could cross the
    threshold, so half-precision inputs merge exactly the tokens their fp32 values merge. Only
    the token pairs that exist are read, in place (``pair_dots``: the dots of each token with
    its neighbour and with itself), so later merge points (fewer tokens left) cost less.
    """
    b, t, h, w, d = features.shape
    n = t * h * w
    previous = previous_in_chain(valid)
    has = valid & (previous >= 0)
    flat = at_least_float32(features.reshape(b * n, d))
    node = torch.arange(b * n, device=valid.device).reshape(valid.shape)
    frame = torch.arange(t, device=valid.device).view(1, t, 1, 1)
    later, earlier, own = node[has], (node - (frame - previous) * (h * w))[has], node[valid]
    rows, cols = torch.cat([later, own]), torch.cat([earlier, own])
    order = torch.argsort(rows * (b * n) + cols)  # pair_dots takes pairs sorted by (row, column)
    dots = torch.empty_like(rows, dtype=flat.dtype)
    dots[order] = pair_dots(flat, flat, rows[order], cols[order])
    squares = torch.zeros(b * n, dtype=flat.dtype, device=features.device)
    squares[own] = dots[later.shape[0]:]
    cosine = dots[:later.shape[0]] / (squares[later].sqrt() * squares[earlier].sqrt())
    similarity = torch.full(valid.shape, NO_NEIGHBOUR, dtype=flat.dtype, device=features.device)
    similarity[has] = cosine.masked_fill(cosine.isnan(), NO_NEIGHBOUR)
    return similarity


def merge_runs(features: torch.Tensor, valid: torch.Tensor, merge: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge each run of ``merge`` tokens of a temporal chain into the unmarked token before it.

    ``features`` ``[B, T, H, W, D]``; ``valid``/``merge`` bool ``[B, T, H, W]`` (``merge`` never
    holds the first valid token of a grid position). Returns ``(features, anchors)``: a copy of
    the features with every anchor replaced by the mean of itself and its run (summed in run
    order, then divided, as upstream; half precision is summed in fp32), and bool ``[B, N]``:
    the anchors that absorbed a token. Only the anchors and their runs are read (one
    ``embedding_bag``), besides the copy.
    """
    b, t, h, w, d = features.shape
    n = t * h * w
    frame = torch.arange(t, device=features.device).view(1, t, 1, 1)
    anchor_frame = torch.where(valid & ~merge, frame, -1).cummax(dim=1).values
    flat_anchor = (anchor_frame * (h * w) + torch.arange(h * w, device=features.device).view(1, 1, h, w))
    sample, member = merge.reshape(b, n).nonzero(as_tuple=True)
    rows = sample * n + member
    targets = sample * n + flat_anchor.reshape(b, n)[sample, member]
    flat = at_least_float32(features.reshape(b * n, d))  # a half-precision sum of large states overflows
    anchor_rows = torch.unique(targets)  # ascending
    # each anchor's bag: the anchor itself, then its run in flat (= run) order
    bag = torch.cat([torch.arange(anchor_rows.shape[0], device=features.device),
                     torch.searchsorted(anchor_rows, targets)])
    members = torch.cat([anchor_rows, rows])[torch.argsort(bag, stable=True)]
    counts = torch.bincount(bag, minlength=anchor_rows.shape[0])
    sums = F.embedding_bag(members, flat, counts.cumsum(0) - counts, mode="sum")
    merged = features.reshape(b * n, d).clone()
    merged[anchor_rows] = (sums / counts.to(flat.dtype).unsqueeze(-1)).to(features.dtype)
    anchors = torch.zeros(b * n, dtype=torch.bool, device=features.device)
    anchors[anchor_rows] = True
    return merged.reshape(features.shape), anchors.reshape(b, n)


@register_strategy("framefusion")
class FrameFusion(LayerwiseReducer):
    """FrameFusion: merge temporally similar tokens layer by layer, then prune by attention.

    Parameters: one budget: ``cost`` (FrameFusion's FLOP-style budget), ``ratio`` (read as the
    cost: the share of the video that the layers after the pruning point see, about ``ratio``) or
    ``count`` (the cost ``count / N`` of a video of ``N`` tokens); default cost 0.3.
    ``similarity_lower_bound`` (default 0.6), ``ratio_lower_bound`` (default 0.1), ``num_layers``
    (the LLM's layer count used by the cost formula; default: ``VisualTokens.num_layers``),
    ``layer`` (the first merge point, default 0 = before the first decoder layer), ``position``
    (where a model runs merge points >= 1: ``"after_attention"`` of the previous layer, default,
    or ``"before_layer"``).
    """

    requires = frozenset({Signal.IMPORTANCE})

    @dataclasses.dataclass
    class Config(BudgetConfig, InLLMConfig):
        cost: float | None = None
        similarity_lower_bound: float = 0.6
        ratio_lower_bound: float = 0.1
        num_layers: int | None = None
        layer: int = 0
        position: Literal["before_layer", "after_attention"] = "after_attention"

        default_ratio: ClassVar[float | None] = None
        alternative_budgets: ClassVar[tuple[str, ...]] = ("cost",)
        first_layer: ClassVar[int] = 0

        def validate(self) -> None:
            super().validate()
            if self.cost is not None:
                check_ratio(self.cost, f"{self.name}.cost")
            if not -1.0 <= self.similarity_lower_bound <= 1.0:
                raise ConfigError(f"{self.name}.similarity_lower_bound must be in [-1, 1], "
                                  f"got {self.similarity_lower_bound}")
            if not 0.0 <= self.ratio_lower_bound <= 1.0:
                raise ConfigError(f"{self.name}.ratio_lower_bound must be in [0, 1], got {self.ratio_lower_bound}")
            if self.num_layers is not None and self.num_layers < 1:
                raise ConfigError(f"{self.name}.num_layers must be >= 1, got {self.num_layers}")

        def costs(self, base: list[int]) -> list[float]:
            """The cost of every sample whose video has ``base`` tokens (``count / N`` for a count)."""
            if self.count is not None:
                return [min(1.0, self.count / max(n, 1)) for n in base]
            value = next((v for v in (self.cost, self.ratio) if v is not None), DEFAULT_COST)
            return [value] * len(base)

    @classmethod
    def examples(cls) -> list[dict[str, Any]]:
        return [{"ratio": 0.5}, {"cost": 0.4, "similarity_lower_bound": 0.9, "position": "before_layer"},
                {"count": 6, "ratio_lower_bound": 0.0}]

    # ----- schedule ------------------------------------------------------------------------
    def start(self, tokens: VisualTokens) -> FrameFusionState:
        num_layers = self.config.num_layers or tokens.num_layers
        if num_layers is None:
            raise ConfigError("framefusion needs the LLM's layer count for its cost formula: set "
                              "num_layers in the config or VisualTokens(..., num_layers=L) "
                              "(inside a model tr.apply provides it)")
        if self.config.layer >= num_layers:
            raise ConfigError(f"framefusion.layer={self.config.layer} is not a layer of a "
                              f"{num_layers}-layer LLM")
        batch = tokens.batch_size
        costs = self.config.costs(tokens.budget_counts().tolist())
        return FrameFusionState(num_layers, costs, [[] for _ in range(batch)], [False] * batch, [False] * batch)

    def _prune_ratio(self, state: FrameFusionState, b: int) -> float:
        return cost_prune_ratio(state.sparsity[b], state.cost[b], state.num_layers, clamp=True)

    def _plan_merge(self, state: FrameFusionState, b: int, marked: int, n_visual: int) -> int | None:
        """Sample ``b``'s merge decision: ``None`` = merge every marked token, else merge only the
        returned count of the most similar ones. Updates the schedule state."""
        above = marked / n_visual
        upper = self._prune_ratio(state, b)
        if above < upper:
            state.sparsity[b].append(above)
            state.merging_done[b] = above < self.config.ratio_lower_bound
            return None
        state.merging_done[b] = state.pruning_done[b] = True
        return int(upper * n_visual)

    def _prune(self, state: FrameFusionState, layer: int, valid: torch.Tensor, importance: torch.Tensor | None,
               rows: list[bool]) -> torch.Tensor:
        """Bool ``[B, N]``: what the ``rows`` samples keep by attention (all valid tokens elsewhere)."""
        if importance is None:
            raise MissingSignalError(f"framefusion prunes at layer {layer}: pass the last query's "
                                     "attention of the previous layer as importance=[B, T, H, W]")
        n_visual = valid.sum(dim=1).tolist()
        counts = [max(1, scaled_count(n, 1 - self._prune_ratio(state, b), "round")) if rows[b] else 0
                  for b, n in enumerate(n_visual)]
        kept = top_k_mask(importance.reshape(valid.shape), torch.tensor(counts, device=valid.device), valid)
        for b, pruned in enumerate(rows):
            state.pruning_done[b] = state.pruning_done[b] or pruned
        return torch.where(torch.tensor(rows, device=valid.device).unsqueeze(1), kept, valid)

    def _merge(self, state: FrameFusionState, features: torch.Tensor, valid: torch.Tensor,
               rows: list[bool]) -> tuple[torch.Tensor, ...]:
        """Merge the ``rows`` samples: ``(absorbed [B, N], anchors [B, N], features [B, N, D])``."""
        grid_valid = valid.reshape(features.shape[:4])
        similarity = temporal_similarity(features, grid_valid).reshape(valid.shape)
        marked = valid & (similarity >= self.config.similarity_lower_bound)
        n_visual, marked_counts = valid.sum(dim=1).tolist(), marked.sum(dim=1).tolist()
        plans = [self._plan_merge(state, b, marked_counts[b], n_visual[b]) if rows[b] else 0
                 for b in range(len(rows))]
        device = valid.device
        top = top_k_mask(similarity, torch.tensor([p or 0 for p in plans], device=device), marked)
        every = torch.tensor([p is None for p in plans], device=device).unsqueeze(1)
        absorbed = torch.where(every, marked, top)
        merged, anchors = merge_runs(features, grid_valid, absorbed.reshape(grid_valid.shape))
        return absorbed, anchors, merged.reshape(*valid.shape, -1)

    def step(self, state: FrameFusionState, layer: int, tokens: VisualTokens) -> Reduction:
        """One merge point: prune the samples whose merging finished earlier, merge the others."""
        if len(state.sparsity) != tokens.batch_size:
            raise ValueError(f"framefusion state was started for batch size {len(state.sparsity)}, "
                             f"step got {tokens.batch_size}")
        return self._step(state, layer, tokens.features, tokens.flat_valid(), tokens.importance)

    def _step(self, state: FrameFusionState, layer: int, features: torch.Tensor, valid: torch.Tensor,
              importance: torch.Tensor | None) -> Reduction:
        """``step`` on checked tensors: ``features`` ``[B, T, H, W, D]``, ``valid`` bool ``[B, N]``,
        ``importance`` ``[B, T, H, W]`` or None."""
        keep, merged = valid, features.reshape(*valid.shape, -1)
        roles = torch.zeros(valid.shape, dtype=torch.int32, device=valid.device)
        pruning = [m and not p for m, p in zip(state.merging_done, state.pruning_done)]
        merging = [not m for m in state.merging_done]
        if any(pruning):
            keep = self._prune(state, layer, valid, importance, pruning)
            rows = torch.tensor(pruning, device=valid.device).unsqueeze(1)
            roles |= torch.where(rows & keep, int(Role.IMPORTANT), 0).to(torch.int32)
        if any(merging):
            absorbed, anchors, merged = self._merge(state, features, valid, merging)
            keep = keep & ~absorbed
            roles |= (torch.where(anchors, int(Role.MERGED), 0) | torch.where(absorbed, int(Role.ABSORBED), 0)).to(
                torch.int32)
        info: dict[str, Any] = {"layer": layer, "sparsity": [list(s) for s in state.sparsity]}
        return Reduction(keep, roles, grid=tuple(features.shape[1:4]), valid=valid, features=merged, info=info)

    def reduce(self, tokens: VisualTokens) -> Reduction:
        """Run the whole schedule with fixed features and importance (no model in between).

        ``tokens`` were checked when they were made; the steps in between hand the kept tokens and
        merged features on as tensors, without building (and re-checking) ``VisualTokens`` again.
        """
        state = self.start(tokens)
        valid = tokens.flat_valid()
        result = Reduction(valid.clone(), grid=tokens.grid, valid=valid)
        features, present = tokens.features, valid
        for layer in range(self.config.layer, state.num_layers):
            if state.done:
                break
            latest = self._step(state, layer, features, present, tokens.importance)
            result = combine(result, latest)
            features, present = latest.features.reshape(features.shape), latest.keep_mask
        return result
