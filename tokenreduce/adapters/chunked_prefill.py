"""Chunked prefill: the decoder layers before the first in-LLM reduction read the sequence in chunks.

A step that prunes inside the LLM before layer K (FastV, ST-SimDiff's trim) leaves layers 0..K-1
to see every token. Run at once, their attention and MLP intermediates over the whole video set the
prefill's peak memory, and pruning later only shrinks what comes after. So during a reduced prefill
each of those layers runs on consecutive chunks of ``prefill_chunk`` slots, in order, each chunk
attending to the keys and values the earlier chunks wrote to the layer's cache (a scratch cache when
the call has none), with its rows of the layer's own attention mask, rotary embeddings and position
ids. The layer's output and cache are what the unchunked layer computes, up to floating-point
rounding. Of layer K-1's attention inputs the probe keeps what it reads (``probe.py``): the rotated
key states of every slot, computed chunk by chunk, and the inputs of the last ``probe_queries``
queries. From layer K on the reduced sequence runs as before.

Layer by layer rather than chunk by chunk through all K layers: the steps at K read every slot's
hidden states, so each layer's whole output exists anyway, and the model's own code between layers
(Qwen3-VL's deepstack) sees whole layers.

A recurrent layer (Qwen3.5's Gated-DeltaNet linear attention) runs its chunks through the same cache:
the layer itself starts each chunk from the convolution and recurrent states the earlier chunks left
there, as it continues from them when decoding, with its chunk of the 2-D padding mask.

A prefill runs unchunked where chunking would change what the model returns or cannot be done
exactly: no in-LLM step, or one at layer 0 (nothing runs before it); a sequence of at most
``prefill_chunk`` slots; ``output_attentions`` (transformers records one attention map per call);
an attention mask that is not the 4-D ``[B, 1, queries, keys]`` of the sdpa and eager backends (for a
recurrent layer: not its 2-D ``[B, slots]`` padding mask).
``ReductionSession.chunked_layers`` reports, per prefill, which layers ran in how many chunks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from tokenreduce.adapters import hf
from tokenreduce.adapters.probe import AttentionInputs, rotated_keys
from tokenreduce.adapters.schedule import Schedule
from tokenreduce.adapters.state import ForwardState
from tokenreduce.errors import InputError, brief

#: Slots per chunk unless ``tr.apply(..., prefill_chunk=...)`` says otherwise.
DEFAULT_PREFILL_CHUNK = 256


def check_prefill_chunk(value: Any) -> int | None:
    """``prefill_chunk`` checked: a positive int (slots per chunk), or ``None`` for no chunking."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"prefill_chunk must be a positive int (sequence slots per chunk) or None (no "
                         f"chunking), got {brief(value)}")
    return value


def first_reduced_layer(schedule: Schedule) -> int:
    """The first decoder layer whose input a step may change (0 without in-LLM steps): layer K for a
    step before layer K, K-1 for one inside layer K-1 after its attention block."""
    starts = [layer - 1 if schedule.runs_mid_layer(step, layer) else layer
              for layer, steps in schedule.in_steps.items() for step in steps]
    return min(starts, default=0)


class ChunkedPrefill:
    """Runs the decoder layers before the first in-LLM reduction in chunks during reduced prefills.

    Args:
        adapter: the model adapter.
        schedule: where the reducer's steps run.
        chunk: slots per chunk; ``None`` turns chunking off.
        probe_queries: the queries the attention probe averages (the session's option).
    """

    def __init__(self, adapter: Any, schedule: Schedule, chunk: int | None, probe_queries: int = 1) -> None:
        self.adapter = adapter
        self.chunk = chunk
        self.probe_queries = probe_queries
        self.num_layers = first_reduced_layer(schedule) if chunk is not None else 0
        self.recurrent = frozenset(i for i in range(self.num_layers) if i not in schedule.softmax)

    def install(self, prefill_state: Callable[[], ForwardState | None]) -> list[Callable[[], None]]:
        """Wrap the ``forward`` of the layers to chunk (on the instances); ``prefill_state()`` gives the
        running prefill's state, ``None`` outside reduced prefills. Returns the undos."""
        return [_wrap_forward(self.adapter.layers[index], self._chunked(index, prefill_state))
                for index in range(self.num_layers)]

    def _chunked(self, index: int, prefill_state: Callable[[], ForwardState | None]):
        def wrapper(original: Callable[..., Any]) -> Callable[..., Any]:
            def forward(*args: Any, **kwargs: Any) -> Any:
                state = prefill_state()
                if state is None or not self._chunkable(index, args, kwargs):
                    return original(*args, **kwargs)
                return self._run(state, index, original, args[0] if args else kwargs.pop(hf.HIDDEN_STATES), kwargs)
            return forward
        return wrapper

    def _chunkable(self, index: int, args: tuple, kwargs: dict[str, Any]) -> bool:
        hidden = args[0] if args else kwargs.get(hf.HIDDEN_STATES)
        mask = kwargs.get(hf.ATTENTION_MASK)
        mask_dims = 2 if index in self.recurrent else 4
        return (len(args) <= 1 and isinstance(hidden, torch.Tensor) and hidden.shape[1] > self.chunk
                and (mask is None or (isinstance(mask, torch.Tensor) and mask.ndim == mask_dims))
                and not hf.records_attention_weights(self.adapter.text_config, kwargs))

    def _run(self, state: ForwardState, index: int, forward: Callable[..., Any], hidden: torch.Tensor,
             kwargs: dict[str, Any]) -> torch.Tensor:
        """Layer ``index`` on ``hidden`` ``[B, L, D]`` chunk by chunk; returns its ``[B, L, D]`` output."""
        length = hidden.shape[1]
        cache_name = hf.cache_keyword(kwargs)
        cache = kwargs.get(cache_name)
        if cache is None:  # the chunks after the first need the keys and values of the earlier ones
            cache = hf.new_cache(self.adapter.text_config)
        mask = kwargs.get(hf.ATTENTION_MASK)
        cos, sin = kwargs[hf.POSITION_EMBEDDINGS]
        seq_dim = hf.rotary_sequence_dim(cos)
        output: torch.Tensor | None = None
        keys: torch.Tensor | None = None  # what the probe reads, when a later step probes this layer
        queries: torch.Tensor | None = None  # the attention's (normed) inputs of the last probe_queries slots
        recurrent = index in self.recurrent
        attention = None if recurrent else self.adapter.attention_of(self.adapter.layers[index])
        starts = range(0, length, self.chunk)
        for start in starts:
            end = min(start + self.chunk, length)
            rows = slice(start, end)
            call = dict(kwargs)
            call[cache_name] = cache
            if recurrent:  # its 2-D padding mask: the chunk's columns
                call[hf.ATTENTION_MASK] = None if mask is None else mask[:, rows]
            else:
                call[hf.ATTENTION_MASK] = self._chunk_mask(mask, hidden, rows, length)
            call[hf.POSITION_EMBEDDINGS] = (cos.narrow(seq_dim, start, end - start),
                                            sin.narrow(seq_dim, start, end - start))
            positions = kwargs.get(hf.POSITION_IDS)
            if isinstance(positions, torch.Tensor):
                call[hf.POSITION_IDS] = positions[..., rows]
            cache_position = kwargs.get(hf.CACHE_POSITION)
            if isinstance(cache_position, torch.Tensor):
                call[hf.CACHE_POSITION] = cache_position[rows]
            result = forward(hidden[:, rows], **call)
            if not isinstance(result, torch.Tensor):
                raise TypeError(f"{type(self.adapter.layers[index]).__name__} returned {type(result).__name__}; "
                                "chunked prefill needs decoder layers that return their hidden states (a tensor): "
                                "pass prefill_chunk=None to tr.apply")
            if output is None:
                output = result.new_empty(hidden.shape[:2] + result.shape[2:])
            output[:, rows] = result
            recorded = state.probe_inputs.pop(index, None)  # only softmax layers are probed
            if recorded is not None:
                chunk_keys = rotated_keys(attention, recorded)
                if keys is None:
                    keys = chunk_keys.new_empty(chunk_keys.shape[:2] + (length,) + chunk_keys.shape[3:])
                keys[:, :, rows] = chunk_keys
                recent = recorded.hidden_states
                queries = recent if queries is None else torch.cat([queries, recent], dim=1)
                queries = queries[:, -self.probe_queries:].clone()  # not a view holding the whole chunk
        if keys is not None:
            state.probe_inputs[index] = AttentionInputs(queries, kwargs[hf.POSITION_EMBEDDINGS], mask, keys)
        state.chunks[index] = len(starts)
        return output  # type: ignore[return-value]

    def _chunk_mask(self, mask: torch.Tensor | None, hidden: torch.Tensor, rows: slice, length: int):
        """The attention mask of the queries ``rows`` over the keys up to the chunk's last query: the
        rows of the layer's own mask, or (where the backend skipped it for a causal sequence without
        padding) the causal mask the backend builds for queries that follow cached keys."""
        end = rows.stop
        if mask is not None:
            return mask[..., rows, :mask.shape[-1] - length + end]
        keys = torch.ones(hidden.shape[0], end, dtype=torch.bool, device=hidden.device)
        return hf.causal_mask(self.adapter.text_config, keys, end - rows.start, hidden.dtype)


def _wrap_forward(module: nn.Module, wrapper: Callable[[Callable[..., Any]], Callable[..., Any]]) -> Callable[[], None]:
    """Set ``module.forward`` to ``wrapper(current forward)`` on this instance; returns the undo (which
    puts back an instance ``forward`` another library had set, e.g. accelerate's, or removes ours)."""
    own = vars(module).get("forward")
    module.forward = wrapper(module.forward)

    def restore() -> None:
        if own is not None:
            module.forward = own
        else:
            del module.forward

    return restore
