"""Running a reducer's steps on the videos of a sequence and turning results into sequence edits.

Videos of one grid size are reduced together as one ``VisualTokens`` batch (samples of different
sizes simply form different groups). Each group remembers which of its tokens are still present,
so a later step (or a later layer of a ``LayerwiseReducer``) sees earlier drops as ``valid``, and
ratio budgets keep referring to the original token count, as in ``Pipeline``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from tokenreduce.adapters.layout import SequenceLayout, VisualLayout
from tokenreduce.adapters.record import StepTrace
from tokenreduce.interfaces import LayerwiseReducer, Reducer, Signal
from tokenreduce.tokens import Reduction, VisualTokens


@dataclass
class VideoGroup:
    """Videos sharing one grid: their samples ``[G]``, positions ``[G, N]`` and present tokens."""

    grid: tuple[int, int, int]
    span_ids: list[int]
    samples: torch.Tensor
    positions: torch.Tensor
    present: torch.Tensor
    embeddings: torch.Tensor | None = None
    layerwise: dict[int, Any] = field(default_factory=dict)
    inserted: list[int] = field(default_factory=list)  # per video: new tokens inserted (Reduction.extra)
    roles: torch.Tensor | None = None  # int32 [G, N]: the Role flags every step gave each token
    trace: list[StepTrace] = field(default_factory=list)  # one entry per step call, for the session's record

    def __post_init__(self) -> None:
        self.inserted = self.inserted or [0] * len(self.span_ids)
        if self.roles is None:
            self.roles = torch.zeros(self.positions.shape, dtype=torch.int32, device=self.positions.device)

    @property
    def num_tokens(self) -> int:
        return int(self.positions.shape[1])


@dataclass
class SequenceEdit:
    """What a round of steps decided: original positions to keep ``[B, S]`` and new features."""

    keep: torch.Tensor
    rows: list[torch.Tensor] = field(default_factory=list)
    cols: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)
    extras: list[tuple[int, int, torch.Tensor]] = field(default_factory=list)  # (sample, anchor, [E, D])

    @property
    def drops(self) -> bool:
        return not bool(self.keep.all())

    @property
    def changes(self) -> bool:
        return self.drops or bool(self.values) or bool(self.extras)

    def apply_features(self, hidden: torch.Tensor, layout: SequenceLayout) -> torch.Tensor:
        """``hidden`` (laid out as ``layout``) with the merged features written at their slots."""
        if not self.values:
            return hidden
        hidden = hidden.clone()
        for rows, cols, values in zip(self.rows, self.cols, self.values):
            hidden[rows, layout.slot_of[rows, cols]] = values.to(hidden.dtype)
        return hidden


def video_groups(visual: VisualLayout, device: torch.device) -> list[VideoGroup]:
    groups = []
    for grid, span_ids in visual.grid_groups().items():
        spans = [visual.spans[i] for i in span_ids]
        positions = torch.stack([s.positions.to(device) for s in spans])
        samples = torch.tensor([s.sample for s in spans], device=device)
        present = torch.ones(positions.shape, dtype=torch.bool, device=device)
        groups.append(VideoGroup(grid, span_ids, samples, positions, present))
    return groups


def _grid_view(values: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    return values.reshape(values.shape[0], *grid, *values.shape[2:])


def run_steps(
    steps: list[tuple[Reducer, int | None]],
    groups: list[VideoGroup],
    hidden: torch.Tensor,
    layout: SequenceLayout,
    *,
    importance: torch.Tensor | None = None,
    num_layers: int | None = None,
    encoder_signals: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] | None = None,
    sequence_signals: dict[str, torch.Tensor] | None = None,
) -> SequenceEdit:
    """Run ``steps`` (each with the decoder layer it runs at, or None) on every video group.

    ``hidden`` ``[B, L, D]`` is laid out as ``layout``; ``importance`` ``[B, L]`` (the probe) is
    given inside the LLM. ``encoder_signals`` maps ``id(step)`` of an encoder step to its
    ``(importance [N], keys [N, Dk])`` per video span. ``sequence_signals`` are other in-LLM
    signals ``[B, L, ...]`` by ``Signal`` value (``"keys"``, ``"normed"``): a step that declares one
    gets it for its grid tokens, and one that declares ``Signal.CONTEXT`` gets them (with the
    hidden states as ``"features"``) for the tokens after its video as ``VisualTokens.context``.
    A ``LayerwiseReducer`` is started at its first layer and stepped at every later call until its
    state is done.
    """
    keep = torch.ones(layout.source.shape[0], layout.seq_len, dtype=torch.bool, device=hidden.device)
    edit = SequenceEdit(keep)
    for group in groups:
        rows = group.samples[:, None].expand_as(group.positions)
        merged = None  # features merged by an earlier step of this round
        for step, layer in steps:
            slots = layout.slot_of[rows, group.positions]
            present = group.present & (slots >= 0)
            where = slots.clamp(min=0)
            features = hidden[rows, where] if merged is None else merged.to(hidden.dtype)
            features = features.masked_fill(~present[..., None], 0.0)
            signals = {}
            if Signal.EMBEDDINGS in step.requires and group.embeddings is None:
                raise RuntimeError("the LLM input embeddings of the visual tokens were not recorded")
            if Signal.EMBEDDINGS in step.requires | step.optional and group.embeddings is not None:
                signals[Signal.EMBEDDINGS.value] = _grid_view(group.embeddings, group.grid)
            wanted = {signal.value for signal in step.requires | step.optional}
            for name, values in (sequence_signals or {}).items():
                if name in wanted:
                    signals[name] = _grid_view(values[rows, where].masked_fill(~present[..., None], 0.0), group.grid)
            context = None
            if Signal.CONTEXT.value in wanted and sequence_signals is not None:
                context = _context_after(rows[:, 0], torch.where(present, slots, -1), hidden, layout,
                                         sequence_signals)
            step_importance = None if importance is None else importance[rows, where]
            if encoder_signals is not None and id(step) in encoder_signals:
                per_span = [encoder_signals[id(step)][i] for i in group.span_ids]
                step_importance = torch.stack([imp for imp, _ in per_span]).to(hidden.device)
                signals[Signal.KEYS.value] = _grid_view(torch.stack([k for _, k in per_span]).to(hidden.device),
                                                        group.grid)
            tokens = VisualTokens.trusted(
                _grid_view(features, group.grid),
                valid=_grid_view(present, group.grid),
                importance=None if step_importance is None else _grid_view(
                    step_importance.masked_fill(~present, 0.0), group.grid),
                signals=signals,
                budget_base=torch.full((len(group.span_ids),), group.num_tokens, device=hidden.device),
                num_layers=num_layers,
                context=context,
            )
            started = _clock(hidden.device)
            reduction = _call_step(step, layer, group, tokens)
            if reduction is None:
                continue
            inserted = list(group.inserted)
            _record(edit, group, rows, present, reduction)
            group.trace.append(_trace(step, layer, tokens, group, inserted, _clock(hidden.device) - started))
            merged = reduction.features if reduction.features is not None else merged
    return edit


def _context_after(samples: torch.Tensor, slots: torch.Tensor, hidden: torch.Tensor,
                   layout: SequenceLayout, sequence_signals: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``VisualTokens.context`` of a group: the slots after each video's last present token that
    take part in attention, with ``hidden`` as ``"features"`` and the ``sequence_signals``."""
    position = torch.arange(layout.length, device=hidden.device)
    after = (position > slots.amax(dim=1, keepdim=True)) & layout.valid[samples]
    width = max(int(after.sum(dim=1).max()), 1)
    order = torch.sort((~after).to(torch.int8), dim=1, stable=True).indices[:, :width]  # after-slots first
    valid = after.gather(1, order)
    rows = samples[:, None].expand_as(order)
    context = {"valid": valid, "features": hidden[rows, order]}
    context.update({name: values[rows, order] for name, values in sequence_signals.items()})
    return context


def _clock(device: torch.device) -> float:
    """Seconds of a wall clock, after the device's queued work (CUDA) finished."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _trace(step: Reducer, layer: int | None, tokens: VisualTokens, group: VideoGroup, inserted_before: list[int],
           seconds: float) -> StepTrace:
    """What one step call did to a group, for the session's record (importance on the CPU, NaN at
    tokens the step did not see)."""
    importance = None
    if tokens.importance is not None:
        importance = torch.where(tokens.flat_valid(), tokens.flat_importance().float(), float("nan")).cpu()
    return StepTrace(step.registered_name or type(step).__name__, step.stage.name.lower(), layer, importance,
                     group.present.sum(dim=1).tolist(), [a - b for a, b in zip(group.inserted, inserted_before)],
                     seconds)


def _call_step(step: Reducer, layer: int | None, group: VideoGroup, tokens: VisualTokens) -> Reduction | None:
    if not isinstance(step, LayerwiseReducer):
        return step(tokens)
    # a layerwise reducer checks its own signals: it needs importance only at some layers
    key = id(step)
    if key not in group.layerwise:
        group.layerwise[key] = step.start(tokens)
    state = group.layerwise[key]
    if getattr(state, "done", False):
        return None
    return step.step(state, layer, tokens)


def _record(edit: SequenceEdit, group: VideoGroup, rows: torch.Tensor, present: torch.Tensor,
            reduction: Reduction) -> None:
    kept = reduction.keep_mask & present
    dropped = present & ~kept
    edit.keep[rows[dropped], group.positions[dropped]] = False
    if reduction.features is not None:
        edit.rows.append(rows[kept])
        edit.cols.append(group.positions[kept])
        edit.values.append(reduction.features[kept])
    group.present = kept
    group.roles |= reduction.roles
    if reduction.extra is not None:
        extra_valid = getattr(reduction, "extra_valid", None)
        for row in range(reduction.extra.shape[0]):  # a loop over the videos of the group
            tokens = reduction.extra[row] if extra_valid is None else reduction.extra[row][extra_valid[row]]
            edit.extras.append((int(group.samples[row]), int(group.positions[row, -1]), tokens))
            group.inserted[row] += int(tokens.shape[0])
