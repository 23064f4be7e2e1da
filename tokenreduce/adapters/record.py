"""What a reduced model run decided, kept after the ``with`` block: per prefill and per video, the
kept flat indices, the roles, the importance each step used, the budget and the time.

``StepTrace`` is collected while the steps run (``steps.run_steps``, one per step call and video
group); when the prefill ends the session turns the groups into one ``PrefillRecord`` of
``VideoRecord`` s. Every record is plain data (CPU tensors) with ``to_dict()`` giving JSON-ready
values, so a run can be saved (``ReductionSession.save_report``), drawn (``visualize --model``) and
compared later.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tokenreduce.tokens import ROLE_NAMES, Reduction, Role


@dataclass
class StepTrace:
    """One step call on one group of videos: its importance ``[G, N]`` (``None`` when it read none;
    NaN at tokens it did not see), the tokens present after it ``[G]``, the new tokens it inserted
    ``[G]`` and the wall time of the call (shared by the group's videos)."""

    name: str
    stage: str
    layer: int | None
    importance: torch.Tensor | None
    present: list[int]
    inserted: list[int]
    seconds: float


@dataclass(frozen=True)
class StepRecord:
    """One step as one video saw it."""

    name: str
    stage: str
    layer: int | None  # the decoder layer it ran before (in-LLM steps), else None
    importance: torch.Tensor | None  # float32 [N], NaN at tokens the step did not see
    kept: int  # grid tokens of the video present after the step
    inserted: int  # new tokens the step inserted for the video
    seconds: float  # wall time of the step call, shared by the videos reduced with this one

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "stage": self.stage, "layer": self.layer, "kept": self.kept,
                "inserted": self.inserted, "seconds": self.seconds,
                "importance": None if self.importance is None else _floats(self.importance)}


@dataclass(frozen=True)
class VideoRecord:
    """One video or image grid of one prefill: where it was, what was kept of it and why."""

    sample: int  # batch row
    grid: tuple[int, int, int]  # (T, H, W) token grid in the language model (an image: T = 1)
    kept: torch.Tensor  # long [K]: flat grid indices t*H*W + h*W + w that reached the later layers
    roles: torch.Tensor  # int32 [N]: Role flags of every grid token (KEPT exactly on ``kept``)
    inserted: int  # new tokens handed on after the video (Reduction.extra)
    budget: dict[str, Any]  # the reducer's budget fields that are set ({"ratio": 0.3}, {"cost": 0.3}, ...)
    steps: tuple[StepRecord, ...]
    seconds: float  # wall time of the steps that reduced this video (shared with its group)
    modality: str = "video"  # "video" or "image"
    offered: int | None = None  # grid tokens the sequence held (fewer than T*H*W where the model dropped some)

    @property
    def tokens(self) -> int:
        """Grid tokens the language model was offered."""
        return math.prod(self.grid) if self.offered is None else self.offered

    @property
    def share(self) -> float:
        """Tokens handed on (kept plus inserted) over the video's grid tokens."""
        return (int(self.kept.numel()) + self.inserted) / self.tokens

    @property
    def importance(self) -> torch.Tensor | None:
        """The importance the last step that read one used (``[N]``), e.g. FastV's attention probe."""
        used = [step.importance for step in self.steps if step.importance is not None]
        return used[-1] if used else None

    def role_counts(self) -> dict[str, int]:
        """Kept tokens per role name (``ABSORBED``: every absorbed token)."""
        counts = {}
        for role in ROLE_NAMES:
            flagged = (self.roles & int(role)) != 0
            if role is not Role.ABSORBED:
                flagged &= (self.roles & int(Role.KEPT)) != 0
            counts[role.name] = int(flagged.sum())
        return counts

    def reduction(self) -> Reduction:
        """The video's outcome as a one-sample ``Reduction`` (kept mask, roles, the inserted tokens as
        featureless ``extra`` slots), e.g. to draw a model run with ``tokenreduce.viz``."""
        keep = torch.zeros(1, math.prod(self.grid), dtype=torch.bool)
        keep[0, self.kept] = True
        extra = torch.zeros(1, self.inserted, 1) if self.inserted else None
        return Reduction(keep, self.roles.unsqueeze(0), grid=self.grid, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        return {"sample": self.sample, "modality": self.modality, "grid": list(self.grid), "tokens": self.tokens,
                "kept": self.kept.tolist(), "inserted": self.inserted, "share": self.share,
                "roles": self.roles.tolist(), "role_counts": self.role_counts(), "budget": self.budget,
                "seconds": self.seconds, "steps": [step.to_dict() for step in self.steps]}


@dataclass(frozen=True)
class PrefillRecord:
    """One reduced prefill: its videos (in the adapter's span order), the sequence length each
    decoder layer received and the layers it ran in chunks, with their chunk counts."""

    videos: tuple[VideoRecord, ...]
    layer_lengths: dict[int, int] = field(default_factory=dict)
    chunked_layers: dict[int, int] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        """Wall time of every step call of the prefill."""
        return sum({id(s): s.seconds for v in self.videos for s in v.steps}.values()) if self.videos else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"videos": [video.to_dict() for video in self.videos],
                "layer_lengths": {str(k): v for k, v in self.layer_lengths.items()},
                "chunked_layers": {str(k): v for k, v in self.chunked_layers.items()}}


def video_records(groups: list[Any], spans: Sequence[Any], budget: dict[str, Any]) -> tuple[VideoRecord, ...]:
    """The ``VideoRecord`` of every video or image span (``VisualLayout.spans``) from the groups a prefill
    reduced."""
    out: list[VideoRecord | None] = [None] * len(spans)
    for group in groups:
        for row, span_id in enumerate(group.span_ids):
            present = group.present[row].cpu()
            roles = group.roles[row].cpu()
            roles = torch.where(present, roles | int(Role.KEPT), roles & ~int(Role.KEPT)).to(torch.int32)
            steps = tuple(StepRecord(t.name, t.stage, t.layer,
                                     None if t.importance is None else t.importance[row],
                                     t.present[row], t.inserted[row], t.seconds) for t in group.trace)
            out[span_id] = VideoRecord(int(group.samples[row]), group.grid, present.nonzero().flatten(), roles,
                                       group.inserted[row], dict(budget), steps,
                                       sum(t.seconds for t in group.trace), spans[span_id].modality,
                                       int(group.base[row]))
    return tuple(out)  # type: ignore[arg-type]


def report(reducer_config: dict[str, Any], records: list[PrefillRecord]) -> dict[str, Any]:
    """A JSON-ready report of a session: the reducer's config and every prefill."""
    return {"reducer": reducer_config, "prefills": [record.to_dict() for record in records]}


def save_report(data: dict[str, Any], path: str | Path) -> Path:
    """Write ``report(...)`` as JSON (NaN importance as ``null``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data) + "\n", encoding="utf-8")
    return path


def _floats(values: torch.Tensor) -> list[float | None]:
    """A float tensor as a JSON list, NaN (tokens a step did not see) as ``None``."""
    return [None if math.isnan(v) else v for v in values.tolist()]
