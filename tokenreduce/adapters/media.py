"""Media items: how the placeholder tokens of one image or video form its grids.

A model puts the LLM tokens of each image and video on placeholder tokens of ``input_ids``, in the
order of the media. A family describes each item of one modality as a ``MediaItem``: how many
placeholder tokens it takes and, for each of its grids, which of those tokens hold the grid's
positions (the others — a newline after each row, a newline after a video — are off the grid and
always kept). ``spans_from_items`` walks the placeholders of a batch and turns the items into
``VideoSpan`` s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tokenreduce.adapters.layout import VideoSpan, VisualLayout

Grid = tuple[int, int, int]


@dataclass(frozen=True)
class MediaItem:
    """One image or video: ``tokens`` placeholder tokens and its grids.

    ``grids`` holds ``(grid, offsets)`` pairs: ``offsets`` ``[T*H*W]`` is, for each flat grid position,
    the index of its token among the item's placeholders (``-1``: the position has no token).
    """

    modality: str
    tokens: int
    grids: tuple[tuple[Grid, torch.Tensor], ...]

    @classmethod
    def grid(cls, modality: str, grid: Grid, extra: int = 0) -> MediaItem:
        """An item whose placeholders are one grid in flat order, then ``extra`` off-grid tokens."""
        count = grid[0] * grid[1] * grid[2]
        return cls(modality, count + extra, ((grid, torch.arange(count)),))

    @classmethod
    def present(cls, modality: str, grid: Grid, present: torch.Tensor) -> MediaItem:
        """An item with tokens only at the grid positions ``present`` ``[T*H*W]`` marks (in flat order)."""
        present = present.flatten().bool().cpu()
        offsets = torch.where(present, present.long().cumsum(0) - 1, -1)
        return cls(modality, int(present.sum()), ((grid, offsets),))

    @classmethod
    def rows_with_newline(cls, modality: str, grid: Grid, start: int = 0) -> tuple[int, torch.Tensor]:
        """``(tokens, offsets)`` of a grid whose every row is followed by one newline token, starting at
        placeholder ``start`` (LLaVA's any-resolution crops)."""
        t, h, w = grid
        flat = torch.arange(t * h * w)
        row = flat // w
        return t * h * (w + 1), start + flat + row


def spans_from_items(placeholders: torch.Tensor, items: Sequence[MediaItem]) -> list[VideoSpan]:
    """Spans of ``items`` laid over the ``True`` positions of ``placeholders`` ``[B, S]``.

    Items take the placeholders in batch order (sample 0 first); an item never crosses a sample.
    """
    per_sample = [row.nonzero().flatten() for row in placeholders.cpu()]
    modality = items[0].modality if items else "video"
    spans, sample, used = [], 0, 0
    for item in items:
        while sample < len(per_sample) and used >= per_sample[sample].numel():
            sample, used = sample + 1, 0
        if sample >= len(per_sample) or used + item.tokens > per_sample[sample].numel():
            raise ValueError(f"input_ids hold too few {modality} placeholder tokens for the {modality} grids "
                             f"{[g for i in items for g, _ in i.grids]}")
        chunk = per_sample[sample][used:used + item.tokens]
        for grid, offsets in item.grids:
            positions = torch.where(offsets >= 0, chunk[offsets.clamp(min=0)], -1)
            spans.append(VideoSpan(sample, grid, positions, item.modality))
        used += item.tokens
    remaining = sum(p.numel() for p in per_sample[sample:]) - used
    if remaining:
        raise ValueError(f"input_ids hold {remaining} {modality} placeholder tokens more than the {modality} grids "
                         f"{[g for i in items for g, _ in i.grids]} account for")
    return spans


def placeholder_ranks(placeholders: torch.Tensor) -> torch.Tensor:
    """``[B, S]``: the index of each placeholder among all placeholders of the batch (sample-major), the
    order in which a model scatters encoder features onto them."""
    flat = placeholders.flatten().long()
    return (flat.cumsum(0) - 1).view_as(placeholders)


def media_layout(adapter, call: dict, modalities: Sequence[str], embeds: torch.Tensor) -> VisualLayout | None:
    """The grids of every modality of ``modalities`` that the call carries; ``None`` when it carries none."""
    spans, found = [], False
    for modality in adapter.modalities:
        if modality not in modalities or not adapter.has_media(call, modality):
            continue
        found = True
        spans += spans_from_items(adapter.placeholders(call, modality), adapter.media_items(call, modality, embeds))
    if not found:
        return None
    batch, length = embeds.shape[:2]
    return VisualLayout.from_spans(int(batch), int(length), sorted(spans, key=_span_order))


def _span_order(span: VideoSpan) -> tuple[int, int]:
    """Spans in sample order, then in the order of their first token in the sequence."""
    return span.sample, int(span.positions[span.positions >= 0].min())
