"""What one reduced forward decided: the phase a model call is in and the state a prefill leaves for
the decode steps on its cache."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import torch

from tokenreduce.adapters.layout import SequenceLayout, VisualLayout
from tokenreduce.adapters.probe import AttentionInputs
from tokenreduce.adapters.steps import VideoGroup


class Phase(str, enum.Enum):
    """What a model call under a reducer is: a prefill with video (a reduction from scratch) or a
    decode step on the cache that prefill filled (never re-pruned). Other calls have no phase."""

    PREFILL = "prefill"
    DECODE = "decode"


@dataclass
class LayoutInputs:
    """The per-layer arguments of one pruned layout during prefill."""

    layout: SequenceLayout
    position_embeddings: Any
    position_ids: torch.Tensor | None
    attention_mask: Any


@dataclass
class ForwardState:
    """Everything one prefill decided; decode steps read it."""

    call: dict[str, Any]  # the model's forward arguments
    visual: VisualLayout | None = None  # the reduced grids, known once the language model is called
    groups: list[VideoGroup] = field(default_factory=list)
    lm_layout: SequenceLayout | None = None  # layout the decoder layers start from
    lm_changed: bool = False  # the pre-LLM steps changed the LLM input
    current: LayoutInputs | None = None  # in-LLM layout in force (None: the LM's own)
    layer_layouts: dict[int, SequenceLayout] = field(default_factory=dict)
    next_position: torch.Tensor | None = None  # [B] position of the first generated token
    position_shift: torch.Tensor | None = None  # subtracted from later positions (contiguous; shift_positions)
    seq_len: int = 0
    cache: Any = None
    decoded: int = 0  # tokens decoded on top of the prefill
    decode_steps: int = 0  # decode forwards recognised since the prefill
    tail_valid: torch.Tensor | None = None
    probe_inputs: dict[int, AttentionInputs] = field(default_factory=dict)
    importance: dict[int, torch.Tensor] = field(default_factory=dict)  # probe results by layer
    keys: dict[int, torch.Tensor] = field(default_factory=dict)  # [B, L, Dk] key states by layer (Signal.KEYS)
    layer_counts: dict[int, int] = field(default_factory=dict)  # sequence length each layer saw
    chunks: dict[int, int] = field(default_factory=dict)  # chunks each chunked layer ran in (chunked_prefill.py)
    layer_kwargs: dict[str, Any] | None = None  # what the running decoder layer received
    mid: list[torch.Tensor] = field(default_factory=list)  # [reduced residual, MLP output] inside a layer
    labels: torch.Tensor | None = None  # [B, S] labels of the prefill call, applied to the reduced sequence
    loss_kwargs: dict[str, Any] = field(default_factory=dict)  # what the model's loss would get besides them

    @property
    def current_layout(self) -> SequenceLayout:
        """The layout the running decoder layer sees."""
        return self.current.layout if self.current is not None else self.lm_layout

    def layerwise_active(self) -> bool:
        """A layer-wise step (FrameFusion) of this prefill has not finished."""
        return any(not getattr(s, "done", False) for g in self.groups for s in g.layerwise.values())

    def layerwise_wants_importance(self) -> bool:
        """An unfinished layer-wise step reads the attention probe."""
        return any(getattr(s, "wants_importance", True) for g in self.groups for s in g.layerwise.values()
                   if not getattr(s, "done", False))
