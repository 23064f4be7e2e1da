"""The decode phase: generating on the cache a reduced prefill filled. Nothing is pruned again; each
step gets the positions that continue the prefill's and attention masks sized to every layer's
(shorter) cache."""

from __future__ import annotations

from typing import Any

import torch

from tokenreduce.adapters import hf
from tokenreduce.adapters.llm_input import shift_positions
from tokenreduce.adapters.state import ForwardState


class Decode:
    """Prepares the model, language-model and decoder-layer inputs of one decode step."""

    def __init__(self, adapter: Any) -> None:
        self.adapter = adapter

    def model_input(self, state: ForwardState, args: tuple, kwargs: dict[str, Any]):
        """Give the step the position ids after the prefill's when the caller passed none."""
        if kwargs.get(hf.POSITION_IDS) is not None or state.next_position is None:
            return None
        start = state.next_position + state.decoded
        positions = start[:, None] + torch.arange(hf.query_length(hf.call_arguments(args, kwargs)),
                                                  device=start.device)
        rows = self.adapter.position_rows
        kwargs = dict(kwargs)
        kwargs[hf.POSITION_IDS] = positions if rows is None else positions.unsqueeze(0).expand(rows, -1, -1)
        return args, kwargs

    def language_model_input(self, state: ForwardState, args: tuple, kwargs: dict[str, Any]):
        """The 2-D mask over the pruned prefill plus the decoded tail; contiguous positions shifted."""
        kwargs = dict(kwargs)
        mask = kwargs.get(hf.ATTENTION_MASK)
        query = hf.query_length(kwargs)
        if mask is not None and isinstance(mask, torch.Tensor) and mask.ndim == 2:
            tail = mask[:, state.seq_len:].to(torch.bool)
        else:
            tail = torch.ones(state.visual.batch_size, state.decoded + query, dtype=torch.bool,
                              device=state.lm_layout.valid.device)
        state.tail_valid = tail
        if state.position_shift is not None and kwargs.get(hf.POSITION_IDS) is not None:
            positions = kwargs[hf.POSITION_IDS]
            kwargs[hf.POSITION_IDS] = shift_positions(positions, state.position_shift.to(positions.device))
        if state.lm_changed:
            dtype = mask.dtype if isinstance(mask, torch.Tensor) else torch.long
            kwargs[hf.ATTENTION_MASK] = torch.cat([state.lm_layout.valid, tail], dim=1).to(dtype)
        return args, kwargs

    def before_layer(self, state: ForwardState, index: int, args: tuple, kwargs: dict[str, Any]):
        """A layer whose cache in-LLM pruning shortened gets a mask sized to that cache."""
        layout = state.layer_layouts.get(index)
        if layout is None:
            return None
        hidden = args[0] if args else kwargs[hf.HIDDEN_STATES]
        key_valid = torch.cat([layout.valid, state.tail_valid.to(layout.valid.device)], dim=1)
        kwargs = dict(kwargs)
        kwargs[hf.ATTENTION_MASK] = hf.causal_mask(self.adapter.text_config, key_valid, hidden.shape[1],
                                                   hidden.dtype)
        return args, kwargs
