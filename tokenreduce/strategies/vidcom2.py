"""``vidcom2``: VidCom2 (Liu et al., EMNLP 2025) as vLLM 0.32 runs it (``vllm/multimodal/video_prune/vidcom2.py``).

Per video of ``N = T·P`` tokens (``P = H·W`` per frame) on the merged LLM-input grid:

1. keep the ``max(1, int(D/2))`` channels of lowest (biased) variance over the video's tokens and
   L2-normalise each token on them;
2. a token's similarity is ``g(x, video mean) + g(x, its frame's mean)`` with the multi-scale
   Gaussian ``g(x, c) = Σ_α exp(−‖x − c‖² / 2α)``, α ∈ {1/8, 1/4, 1/2, 1, 2} (high = redundant);
3. frame budgets: ``p = softmax((s − max s) / 0.01)`` over the frame scores ``s_t = −mean g(x, video
   mean)``, ``k_t = round(min(1, ρ·(1 + p_t − mean p)) · P)`` clamped to ``[1, P]``, ρ the retention;
4. each frame keeps its ``k_t`` least similar tokens (``torch.topk``, as upstream);
5. the sample is reconciled to its exact count: the most similar kept tokens are dropped, or the
   least similar others added (``torch.topk`` again).

Every step runs in the input dtype with the same torch operations as vLLM, so the kept set is
vLLM's to the bit, ties included: equal similarities are resolved as ``torch.topk`` resolves them
on the device (on CPU, libstdc++'s partial sort / nth_element: deterministic, but not by index).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tokenreduce.registry import register_strategy
from tokenreduce.selection import at_least_float32
from tokenreduce.strategies.pruning_rate import PruningRateReducer
from tokenreduce.tokens import Reduction, Role, VisualTokens

ALPHAS = tuple(2.0**k for k in range(-3, 2))  # the Gaussian bandwidths
LOW_VARIANCE_SHARE = 0.5  # share of the channels the scores use
TEMPERATURE = 0.01  # of the softmax over frame scores


def valid_mean(x: torch.Tensor, valid: torch.Tensor, dim: int | tuple[int, ...]) -> torch.Tensor:
    """``x.mean(dim, keepdim=True)`` over the entries where ``valid`` (broadcast to ``x``).

    A group whose entries are all valid gets torch's own ``mean`` (bit for bit what a dense
    reference computes); a partly valid one the mean of its valid entries (0 when none).
    """
    plain = x.mean(dim=dim, keepdim=True)
    complete = valid.all(dim=dim, keepdim=True)
    if bool(complete.all()):
        return plain
    mask = valid.expand_as(x)
    total = at_least_float32(x).masked_fill(~mask, 0).sum(dim=dim, keepdim=True)
    count = mask.sum(dim=dim, keepdim=True).clamp(min=1)
    return torch.where(complete, plain, (total / count).to(x.dtype))


def valid_variance(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``[B, D]``: the biased variance over the tokens of ``x`` ``[B, N, D]`` where ``valid`` ``[B, N]``
    (torch's ``var`` for a sample without padding)."""
    plain = x.var(dim=1, unbiased=False)
    complete = valid.all(dim=1, keepdim=True)
    if bool(complete.all()):
        return plain
    wide, mask = at_least_float32(x), valid.unsqueeze(-1)
    centred = wide - valid_mean(wide, mask, 1)
    return torch.where(complete, plain, valid_mean(centred * centred, mask, 1).squeeze(1).to(x.dtype))


def scaled(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``x * factor`` rounded once to ``x``'s dtype, the product taken in ``at_least_float32``
    precision: what torch computes for ``x * python_number`` (the number cast to that precision)."""
    return (at_least_float32(x) * factor.to(at_least_float32(x).dtype)).to(x.dtype)


def multi_scale_gaussian(x: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """``Σ_α exp(−‖x − center‖² / 2α)`` over the last dim, summed in ``ALPHAS`` order."""
    dist_sq = ((x - center) ** 2).sum(dim=-1)
    total = torch.exp(-dist_sq / (2.0 * ALPHAS[0]))
    for alpha in ALPHAS[1:]:
        total = total + torch.exp(-dist_sq / (2.0 * alpha))
    return total


def redundancy_scores(features: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 1-2: ``(similarity [B, T, P], video-centre score [B, T, P])`` of ``features`` ``[B, T, P, D]``."""
    b, t, p, d = features.shape
    flat = features.reshape(b, t * p, d)
    variance = valid_variance(flat, valid.reshape(b, t * p))
    channels = torch.topk(variance, max(1, int(d * LOW_VARIANCE_SHARE)), dim=-1, largest=False).indices
    chosen = flat.gather(-1, channels.unsqueeze(1).expand(b, t * p, -1))
    frames = F.normalize(chosen.reshape(b, t, p, -1), dim=-1)
    token_valid = valid.unsqueeze(-1)
    video_score = multi_scale_gaussian(frames, valid_mean(frames, token_valid, (1, 2)))
    frame_score = multi_scale_gaussian(frames, valid_mean(frames, token_valid, 2))
    return video_score + frame_score, video_score


def frame_budgets(video_score: torch.Tensor, valid: torch.Tensor, retention: torch.Tensor) -> torch.Tensor:
    """Step 3: long ``[B, T]`` tokens each frame keeps (0 for a frame without valid tokens).

    ``retention`` is float64 ``[B]``; each frame's token count is its valid count.
    """
    present = valid.any(dim=-1)
    frame_score = -valid_mean(video_score, valid, -1).squeeze(-1)
    frame_score = frame_score.masked_fill(~present, float("-inf"))
    probs = F.softmax((frame_score - frame_score.amax(dim=-1, keepdim=True)) / TEMPERATURE, dim=-1)
    spread = 1.0 + probs - valid_mean(probs, present, -1)
    scales = scaled(spread, retention.unsqueeze(-1)).clamp(max=1.0)
    sizes = valid.sum(dim=-1)
    budgets = scaled(scales, sizes).round().long()
    return budgets.clamp(min=1).minimum(sizes)


def least_similar_per_frame(similarity: torch.Tensor, valid: torch.Tensor, budgets: torch.Tensor) -> torch.Tensor:
    """Step 4: bool ``[B, T, P]``, the ``budgets[b, t]`` least similar valid tokens of each frame.

    One ``torch.topk`` call per distinct budget, over all frames that have it: a row's result is
    the one vLLM's per-frame call gets.
    """
    rows = similarity.masked_fill(~valid, float("inf")).flatten(0, 1)
    row_budgets = budgets.flatten()
    keep = torch.zeros_like(rows, dtype=torch.bool)
    for k in row_budgets.unique().tolist():
        if k == 0:
            continue
        chosen = (row_budgets == k).nonzero().squeeze(-1)
        picked = torch.topk(rows[chosen], k, dim=-1, largest=False, sorted=False).indices
        keep[chosen.unsqueeze(-1), picked] = True
    return keep.reshape(similarity.shape)


def reconcile(keep: torch.Tensor, similarity: torch.Tensor, valid: torch.Tensor,
              counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 5: ``(keep, added)``, bool ``[B, N]`` with exactly ``counts[b]`` kept tokens per sample.

    A sample with too many drops its most similar kept tokens, one with too few adds the least
    similar others, each by one ``torch.topk`` over those tokens in flat order (vLLM's call).
    """
    keep = keep.clone()
    added = torch.zeros_like(keep)
    excess = keep.sum(dim=1) - counts
    for b in excess.nonzero().squeeze(-1).tolist():
        surplus = int(excess[b])
        pool = (keep[b] if surplus > 0 else valid[b] & ~keep[b]).nonzero().squeeze(-1)
        picked = pool[torch.topk(similarity[b, pool], abs(surplus), largest=surplus > 0, sorted=False).indices]
        keep[b, picked] = surplus < 0
        added[b, picked] = surplus < 0
    return keep, added


@register_strategy("vidcom2")
class VidCom2(PruningRateReducer):
    """Keep each frame's least redundant tokens, frames that stand out getting more (VidCom2).

    Parameters: one budget — ``ratio`` (default 0.5, ceil) or ``count``, or ``prune_ratio`` q for
    vLLM's own count ``max(T, int(N · (1 − q)))``. The retention ρ of the frame budgets is
    ``1 − q``, ``ratio``, or ``count / N``. Roles: kept tokens are ``IMPORTANT``; those the
    reconciliation added are ``FILLED`` too.
    """

    def minimum_counts(self, tokens: VisualTokens) -> torch.Tensor:
        """One token per frame that has a valid token."""
        return tokens.flat_valid().reshape(tokens.batch_size, tokens.grid[0], -1).any(dim=2).sum(dim=1)

    def retention(self, tokens: VisualTokens) -> torch.Tensor:
        """float64 ``[B]``: ρ, the share of its tokens a sample's frame budgets aim at."""
        cfg = self.config
        base = tokens.budget_counts().to(torch.float64)
        if cfg.prune_ratio is not None:
            return torch.full_like(base, 1.0 - cfg.prune_ratio)  # vLLM's expression
        if cfg.count is not None:
            return (cfg.count / base).clamp(max=1.0)
        return torch.full_like(base, cfg.ratio)

    def reduce(self, tokens: VisualTokens) -> Reduction:
        b, t, h, w = tokens.batch_size, *tokens.grid
        valid = tokens.flat_valid().reshape(b, t, h * w)
        features = tokens.features.reshape(b, t, h * w, tokens.dim)
        similarity, video_score = redundancy_scores(features, valid)
        budgets = frame_budgets(video_score, valid, self.retention(tokens))
        per_frame = least_similar_per_frame(similarity, valid, budgets)
        keep, added = reconcile(per_frame.reshape(b, -1), similarity.reshape(b, -1), valid.reshape(b, -1),
                                self.keep_counts(tokens))
        roles = torch.where(added, int(Role.IMPORTANT | Role.FILLED), int(Role.IMPORTANT)).to(torch.int32)
        return Reduction(keep, roles, grid=tokens.grid, valid=valid.reshape(b, -1))
