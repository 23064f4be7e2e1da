"""``evs``: Efficient Video Sampling as vLLM 0.32 runs it (``vllm/multimodal/video_prune/evs.py``).

On the merged LLM-input grid (the projector output), every token is scored by its dissimilarity
``1 − cos`` to the token at the same ``(h, w)`` in the previous frame; the first frame scores 255
(always ahead). The tokens are ranked by a stable descending sort of the scores in flat order and
the first ``count`` are kept. With ``prune_ratio=q`` the count is vLLM's
``max(H·W, int(T·H·W·(1 − q)))``, which depends on shapes only (an engine sizes the prompt with it
before the encoder runs); ``ratio`` / ``count`` are the usual exact budgets on the same ranking.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tokenreduce.graph.blocked import row_blocks
from tokenreduce.registry import register_strategy
from tokenreduce.selection import top_k_mask
from tokenreduce.strategies.pruning_rate import PruningRateReducer
from tokenreduce.tokens import Reduction, Role, VisualTokens

#: The score of a token with no earlier token at its position (vLLM's first-frame value).
NO_PREVIOUS = 255.0


def previous_frame_positions(valid: torch.Tensor) -> torch.Tensor:
    """Long ``[B, T, H, W]``: the latest earlier frame whose token at the same ``(h, w)`` is valid,
    or −1 when there is none (every token of the first frame; the first valid token of a
    position when padding or an earlier step removed tokens)."""
    frame = torch.arange(valid.shape[1], device=valid.device).view(1, -1, 1, 1)
    latest = torch.where(valid, frame, -1).cummax(dim=1).values  # latest valid frame <= t
    return F.pad(latest[:, :-1], (0, 0, 0, 0, 1, 0), value=-1)  # ... < t


def temporal_dissimilarity(features: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``[B, T, H, W]`` in the features' dtype: ``1 − cos`` of each valid token and the previous
    valid token at its position (``previous_frame_positions``), ``NO_PREVIOUS`` without one.
    Values at invalid tokens are meaningless.

    The cosine is ``torch.nn.functional.cosine_similarity`` in the input dtype (each vector divided
    by ``max(‖x‖, 1e-8)``, then the dot product), as vLLM computes it: EVS's stable sort turns the
    last bit of this score into the kept set on static content, so no other formula will do. It is
    taken row by row, so it runs on cache-sized blocks of rows (``row_blocks``) with the same result.
    """
    b, t, h, w, d = features.shape
    previous = previous_frame_positions(valid)
    frame = torch.arange(t, device=valid.device).view(1, -1, 1, 1)
    rows = torch.arange(b * t * h * w, device=valid.device).view(b, t, h, w)
    partner = torch.where(previous >= 0, rows - (frame - previous) * (h * w), rows).flatten()
    flat = features.reshape(-1, d)
    similarity = torch.empty(flat.shape[0], dtype=features.dtype, device=features.device)
    for start, stop in row_blocks(flat.shape[0], flat.device):
        similarity[start:stop] = F.cosine_similarity(flat[start:stop], flat[partner[start:stop]], dim=-1)
    return torch.where(previous >= 0, 1 - similarity.view(b, t, h, w), NO_PREVIOUS)


@register_strategy("evs")
class EVS(PruningRateReducer):
    """Keep the tokens that changed most since the previous frame; the first frame first.

    Parameters: one budget — ``ratio`` (default 0.5, ceil) or ``count``, or ``prune_ratio`` q for
    vLLM's own count ``max(H·W, int(N · (1 − q)))``. Equal scores keep the lower flat index (vLLM's
    stable sort), so below one frame's worth the first frame is kept in raster order.
    Roles: tokens without a previous one are ``SAMPLED`` (kept whatever their content), the others
    ``EVENT``.
    """

    def minimum_counts(self, tokens: VisualTokens) -> torch.Tensor:
        """Tokens with no earlier valid token at their position: one frame's worth on a full grid."""
        return tokens.flat_valid().reshape(tokens.batch_size, tokens.grid[0], -1).any(dim=1).sum(dim=1)

    def reduce(self, tokens: VisualTokens) -> Reduction:
        b, t, h, w = tokens.batch_size, *tokens.grid
        valid = tokens.valid if tokens.valid is not None else tokens.flat_valid().reshape(b, t, h, w)
        score = temporal_dissimilarity(tokens.features, valid).reshape(b, -1)
        flat_valid = valid.reshape(b, -1)
        keep = top_k_mask(score, self.keep_counts(tokens), flat_valid)
        first = (previous_frame_positions(valid) < 0).reshape(b, -1)
        roles = torch.where(first, int(Role.SAMPLED), int(Role.EVENT)).to(torch.int32)
        return Reduction(keep, roles, grid=tokens.grid, valid=flat_valid)
