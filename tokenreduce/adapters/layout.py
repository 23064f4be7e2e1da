"""Where the visual tokens sit in a model's sequence, and how a pruned sequence is laid out.

``VisualLayout`` says which sequence positions hold the tokens of each video or image and on which
``(T, H, W)`` grid (one entry per grid, per sample; an image is a grid with ``T = 1``); every other
position (text, newline and timestamp tokens, padding, media the user does not reduce) is never
dropped. ``SequenceLayout`` describes a (possibly pruned, left re-padded) sequence by the original
position of every slot, so that hidden states, position ids, masks and caches of different lengths
can be related to each other without loops over tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


MODALITIES = ("video", "image")


@dataclass(frozen=True)
class VideoSpan:
    """One grid of one video or image in one sample: the grid and the sequence positions of its tokens.

    ``positions`` is a long tensor ``[T*H*W]`` in flat grid order ``t*H*W + h*W + w``; the
    positions need not be contiguous (Qwen3-VL puts timestamp tokens between frames). ``-1`` marks a
    grid position that has no token in the sequence (a model that compressed it away before the LLM,
    as VideoLLaMA3 does); such positions are never valid for a reducer. ``modality`` is ``"video"``
    or ``"image"`` (an image is a grid with ``T = 1``).
    """

    sample: int
    grid: tuple[int, int, int]
    positions: torch.Tensor
    modality: str = "video"

    def __post_init__(self) -> None:
        t, h, w = self.grid
        if min(self.grid) < 1:
            raise ValueError(f"a {self.modality} grid needs positive sizes, got {self.grid}")
        if self.positions.ndim != 1 or self.positions.numel() != t * h * w:
            raise ValueError(f"{self.modality} grid {self.grid} has {t * h * w} tokens but "
                             f"{self.positions.numel()} sequence positions were given")
        if self.modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {self.modality!r}")
        if bool((self.positions < -1).any()):
            raise ValueError("span positions must be >= 0, or -1 for a grid position without a token")
        if not bool((self.positions >= 0).any()):
            raise ValueError(f"{self.modality} grid {self.grid} has no token in the sequence")

    @property
    def present(self) -> torch.Tensor:
        """``[T*H*W]`` bool: grid positions that have a token in the sequence."""
        return self.positions >= 0


@dataclass(frozen=True)
class VisualLayout:
    """All reduced grids of a batch: ``spans`` in sample order (several per sample allowed)."""

    batch_size: int
    seq_len: int
    spans: tuple[VideoSpan, ...]

    @classmethod
    def from_spans(cls, batch_size: int, seq_len: int, spans: Sequence[VideoSpan]) -> VisualLayout:
        taken = torch.zeros(batch_size, seq_len, dtype=torch.bool)
        for span in spans:
            if not 0 <= span.sample < batch_size:
                raise ValueError(f"{span.modality} span of sample {span.sample} outside batch size {batch_size}")
            pos = span.positions.cpu()
            pos = pos[pos >= 0]
            if bool((pos >= seq_len).any()):
                raise ValueError(f"{span.modality} span positions must lie in [0, {seq_len}), got "
                                 f"[{int(pos.min())}, {int(pos.max())}]")
            if bool(taken[span.sample, pos].any()) or pos.unique().numel() != pos.numel():
                raise ValueError(f"video or image spans of sample {span.sample} overlap")
            taken[span.sample, pos] = True
        return cls(batch_size, seq_len, tuple(spans))

    def grid_groups(self) -> dict[tuple[int, int, int], list[int]]:
        """Span indices grouped by grid, so grids of one size are reduced as one batch."""
        groups: dict[tuple[int, int, int], list[int]] = {}
        for i, span in enumerate(self.spans):
            groups.setdefault(span.grid, []).append(i)
        return groups

    def only(self, modalities) -> VisualLayout:
        """The spans of the given modalities."""
        return VisualLayout(self.batch_size, self.seq_len, tuple(s for s in self.spans if s.modality in modalities))


NEW_TOKEN = -2  # source of a slot holding a token that did not exist before (Reduction.extra)


class SequenceLayout:
    """A sequence of ``L`` slots per sample, each an original position (``-1``: new padding).

    Args:
        source: long ``[B, L]`` original position of every slot, ``-1`` for padding added by
            re-padding, ``NEW_TOKEN`` for inserted new tokens (always kept). Real slots are in
            increasing original order within a row.
        valid: bool ``[B, L]``: the slot takes part in attention (the 2-D attention mask).
        seq_len: the original sequence length ``S``.
    """

    def __init__(self, source: torch.Tensor, valid: torch.Tensor, seq_len: int) -> None:
        self.source = source
        self.valid = valid
        self.seq_len = seq_len
        slot = torch.full((source.shape[0], seq_len), -1, dtype=torch.long, device=source.device)
        rows, cols = (source >= 0).nonzero(as_tuple=True)
        slot[rows, source[rows, cols]] = cols
        self.slot_of = slot  # [B, S]: slot of each original position, -1 when dropped

    @classmethod
    def identity(cls, batch_size: int, seq_len: int, attention_mask: torch.Tensor | None,
                 device: torch.device) -> SequenceLayout:
        source = torch.arange(seq_len, device=device).expand(batch_size, -1).clone()
        valid = (torch.ones(batch_size, seq_len, dtype=torch.bool, device=device) if attention_mask is None
                 else attention_mask.to(device=device, dtype=torch.bool).clone())
        return cls(source, valid, seq_len)

    @property
    def length(self) -> int:
        return int(self.source.shape[1])

    @property
    def padded(self) -> bool:
        return not bool(self.valid.all())

    def keep(self, keep_original: torch.Tensor) -> tuple[SequenceLayout, torch.Tensor]:
        """The layout keeping only slots whose original position is in ``keep_original`` [B, S].

        Returns the new layout and ``index`` ``[B, L']``: the slot of this layout each new slot
        comes from (``-1`` for new left padding).
        """
        kept = (self.source == NEW_TOKEN) | ((self.source >= 0) & keep_original.gather(1, self.source.clamp(min=0)))
        counts = kept.sum(dim=1)
        new_len = int(counts.max())
        dest = (new_len - counts).unsqueeze(1) + kept.long().cumsum(dim=1) - 1
        index = torch.full((self.source.shape[0], new_len), -1, dtype=torch.long, device=self.source.device)
        rows, cols = kept.nonzero(as_tuple=True)
        index[rows, dest[rows, cols]] = cols
        real = index >= 0
        source = torch.where(real, self.source.gather(1, index.clamp(min=0)), -1)
        valid = real & self.valid.gather(1, index.clamp(min=0))
        return SequenceLayout(source, valid, self.seq_len), index

    def insert_after(self, anchors: list[torch.Tensor]) -> tuple[SequenceLayout, torch.Tensor, list[torch.Tensor]]:
        """Insert new tokens: sample ``b`` gets one after the slot of each original position in
        ``anchors[b]`` (several after one anchor keep their order), then re-pad on the left.

        Returns the new layout, ``index`` ``[B, L']`` (source slot of this layout, ``-1`` for new
        tokens and padding) and, per sample, the slots the new tokens landed in (anchor order).
        """
        batch, device = self.source.shape[0], self.source.device
        orders, counts = [], []
        for b in range(batch):  # a loop over samples: each has its own number of new tokens
            slots = (self.source[b] != -1).nonzero().flatten()
            keys = torch.cat([2 * self.source[b, slots], 2 * anchors[b].to(device) + 1])
            tags = torch.cat([slots, -1 - torch.arange(anchors[b].numel(), device=device)])
            orders.append(tags[torch.sort(keys, stable=True).indices])
            counts.append(orders[-1].numel())
        length = max(counts)
        index = torch.full((batch, length), -1, dtype=torch.long, device=device)
        source = torch.full((batch, length), -1, dtype=torch.long, device=device)
        valid = torch.zeros((batch, length), dtype=torch.bool, device=device)
        new_slots = []
        for b, order in enumerate(orders):
            start = length - order.numel()
            real = order >= 0
            index[b, start:] = torch.where(real, order, -1)
            source[b, start:] = torch.where(real, self.source[b, order.clamp(min=0)], NEW_TOKEN)
            valid[b, start:] = torch.where(real, self.valid[b, order.clamp(min=0)], True)
            new_at = (~real).nonzero().flatten() + start
            new_slots.append(new_at[torch.argsort(-1 - order[~real])])
        return SequenceLayout(source, valid, self.seq_len), index, new_slots

    def slots_in(self, earlier: SequenceLayout) -> torch.Tensor:
        """``[B, L]``: the slot of ``earlier`` each slot of this layout comes from (``-1``: padding)."""
        found = earlier.slot_of.gather(1, self.source.clamp(min=0))
        return torch.where(self.source >= 0, found, -1)


def gather_slots(values: torch.Tensor, index: torch.Tensor, dim: int, fill: float | None = None) -> torch.Tensor:
    """``values`` re-indexed along ``dim`` (the sequence axis) by ``index`` ``[B, L']``.

    ``values`` has the batch axis at ``dim - 1`` (``[B, L, ...]`` with ``dim=1``, or
    ``[R, B, L]`` position ids with ``dim=2``); a batch axis of size 1 is broadcast. Slots with
    index ``-1`` get ``fill`` (or an arbitrary real slot's value when ``fill`` is None).
    """
    batch_axis = dim - 1
    shape = list(values.shape)
    shape[batch_axis] = index.shape[0]
    values = values.expand(shape)
    view = [1] * values.ndim
    view[batch_axis], view[dim] = index.shape
    idx_shape = list(values.shape)
    idx_shape[dim] = index.shape[1]
    idx = index.clamp(min=0).view(view).expand(idx_shape)
    out = values.gather(dim, idx)
    if fill is not None:
        pad = (index < 0).view(view).expand(idx_shape)
        out = out.masked_fill(pad, fill)
    return out
