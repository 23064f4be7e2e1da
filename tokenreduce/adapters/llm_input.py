"""Pre-LLM reduction of a language model's input: embeddings, position ids and 2-D mask together.

Shared by the model sessions (inside a forward) and by ``reduce_sequence`` (the generic path,
called by hand before any Hugging Face decoder).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tokenreduce.adapters.layout import SequenceLayout, gather_slots
from tokenreduce.adapters.steps import VideoGroup, run_steps
from tokenreduce.interfaces import Reducer


@dataclass
class ReducedInput:
    """The language-model input after the pre-LLM steps.

    ``index`` ``[B, L]`` is the original position of every new slot's source (``-1``: padding
    added by re-padding), ``None`` when no token was dropped; ``changed`` is False when the
    steps changed nothing (the input is returned as given).
    """

    inputs_embeds: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor
    layout: SequenceLayout
    index: torch.Tensor | None
    changed: bool
    next_position: torch.Tensor  # [B] original position of the first token after the input
    position_shift: torch.Tensor | None  # original minus renumbered next position, per row (row_next_positions)


def next_position(positions: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``[B]``: one more than the largest position of a valid token (M-RoPE: over the 3 rope rows)."""
    rope = positions[-3:] if positions.ndim == 3 else positions[None]
    masked = rope.masked_fill(~valid[None], torch.iinfo(rope.dtype).min)
    return masked.amax(dim=(0, 2)) + 1


def row_next_positions(positions: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``next_position`` for every row of ``positions``: ``[B]`` for 1-D positions, ``[R, B]`` for
    ``[R, B, S]`` ones. The three M-RoPE rows share the next text position; a fourth row in front
    (the plain sequence position ``generate`` passes along since transformers 5.24) has its own."""
    following = next_position(positions, valid)
    if positions.ndim == 2:
        return following
    rows = [following] * min(positions.shape[0], 3)
    if positions.shape[0] > 3:
        rows = [next_position(positions[:-3], valid)] * (positions.shape[0] - 3) + rows
    return torch.stack(rows)


def shift_positions(positions: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Subtract a ``row_next_positions``-shaped ``shift`` from later positions ``[B, q]`` or ``[R', B, q]``
    (``R'`` may omit the leading rows the shift has)."""
    if positions.ndim == 2:
        return positions - (shift if shift.ndim == 1 else shift[-1])[:, None]
    rows = shift[-positions.shape[0]:] if shift.ndim == 2 else shift.expand(positions.shape[0], -1)
    return positions - rows[:, :, None]


def reduce_llm_input(
    embeds: torch.Tensor,
    positions: torch.Tensor | None,
    mask: torch.Tensor | None,
    groups: list[VideoGroup],
    steps: list[Reducer],
    *,
    num_layers: int | None,
    positions_policy: str = "original",
    encoder_signals: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] | None = None,
    record_embeddings: bool = True,
) -> ReducedInput:
    """Run the pre-LLM ``steps`` on the videos of ``embeds`` ``[B, S, D]`` and prune the input.

    ``positions``: ``[B, S]`` or ``[R, B, S]`` (default ``0..S-1``); ``mask``: 2-D or None. With
    ``record_embeddings`` every group records the input embeddings of its tokens
    (``Signal.EMBEDDINGS`` for later steps; a copy of the video's rows, so only when a step reads them).
    Encoder steps run here too (dropping a merged token equals dropping its patches), with
    ``encoder_signals`` as in ``run_steps``.
    """
    if mask is not None and (not isinstance(mask, torch.Tensor) or mask.ndim != 2):
        raise NotImplementedError("token reduction needs a 2-D attention_mask (or none); prepared 4-D masks "
                                  "(static caches, compiled generation) are not supported")
    batch, length = embeds.shape[:2]
    layout = SequenceLayout.identity(batch, length, mask, embeds.device)
    if positions is None:
        positions = torch.arange(length, device=embeds.device).expand(batch, -1)
    following = next_position(positions, layout.valid)
    for group in groups if record_embeddings else []:
        group.embeddings = _embeddings_of(embeds, group)
    edit = run_steps([(s, None) for s in steps], groups, embeds, layout, num_layers=num_layers,
                     encoder_signals=encoder_signals) if steps else None
    mask_dtype = mask.dtype if mask is not None else torch.long
    if (edit is None or not edit.changes) and positions_policy == "original":
        unchanged = layout.valid.to(mask_dtype) if mask is None else mask
        return ReducedInput(embeds, positions, unchanged, layout, None, False, following, None)
    index = None
    new_layout = layout
    given_positions = positions
    if edit is not None and (edit.drops or edit.extras):
        new_layout, index = layout.keep(edit.keep)
        new_slots: list[torch.Tensor] = []
        if edit.extras:
            new_layout, index, new_slots = _insert_extras(new_layout, index, edit, batch)
        embeds = gather_slots(embeds, index, dim=1, fill=0.0)
        positions = gather_slots(positions, index, dim=positions.ndim - 1, fill=1)
        if edit.extras:
            embeds, positions = _write_extras(embeds, positions, given_positions, edit, new_slots)
    if edit is not None:
        embeds = edit.apply_features(embeds, new_layout)
    shift = None
    if positions_policy == "contiguous":
        contiguous = (new_layout.valid.long().cumsum(1) - 1).masked_fill(~new_layout.valid, 1)
        positions = contiguous.expand(positions.shape[0], -1, -1) if positions.ndim == 3 else contiguous
        shift = row_next_positions(given_positions, layout.valid) - row_next_positions(positions, new_layout.valid)
    return ReducedInput(embeds, positions, new_layout.valid.to(mask_dtype), new_layout, index, True, following,
                        shift)


def _embeddings_of(embeds: torch.Tensor, group: VideoGroup) -> torch.Tensor:
    """``[G, N, D]``: the input embeddings of the group's tokens; a view of ``embeds`` (no copy of the
    video) when the group is one video whose tokens are one run of slots."""
    positions = group.positions
    if positions.shape[0] == 1:
        first, count = int(positions[0, 0]), positions.shape[1]
        if int(positions[0, -1]) - first == count - 1 and bool((positions[0].diff() == 1).all()):
            return embeds[int(group.samples[0])][None, first:first + count]
    rows = group.samples[:, None].expand_as(positions)
    return embeds[rows, group.where]  # grid positions without a token read slot 0 (never valid)


def _insert_extras(layout: SequenceLayout, index: torch.Tensor, edit, batch: int):
    """New tokens of ``Reduction.extra`` go right after their video's last grid position."""
    anchors = []
    for b in range(batch):
        per = [torch.full((t.shape[0],), anchor, dtype=torch.long) for sample, anchor, t in edit.extras if sample == b]
        anchors.append(torch.cat(per) if per else torch.zeros(0, dtype=torch.long))
    inserted, inner, new_slots = layout.insert_after(anchors)
    total = torch.where(inner >= 0, index.gather(1, inner.clamp(min=0)), -1)
    return inserted, total, new_slots


def _write_extras(embeds: torch.Tensor, positions: torch.Tensor, original: torch.Tensor, edit,
                  new_slots: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Write the new tokens into their slots; they take the position ids of their anchor (the
    video's last grid token)."""
    embeds, positions = embeds.clone(), positions.clone()
    for b, slots in enumerate(new_slots):  # a loop over samples
        mine = [(anchor, tokens) for sample, anchor, tokens in edit.extras if sample == b]
        if not mine:
            continue
        embeds[b, slots] = torch.cat([tokens for _, tokens in mine]).to(embeds.dtype)
        where = torch.cat([torch.full((t.shape[0],), a, dtype=torch.long) for a, t in mine]).to(original.device)
        if original.ndim == 3:
            positions[:, b, slots] = original.expand(-1, positions.shape[1], -1)[:, b, where]
        else:
            positions[b, slots] = original.expand(positions.shape[0], -1)[b, where]
    return embeds, positions
