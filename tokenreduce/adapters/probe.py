"""The attention probe: the last queries' attention over all keys, recomputed for one layer.

Fused attention kernels (sdpa, flash) never materialise attention weights, so asking the model
for ``output_attentions`` would force the slow eager path for the whole forward. The probe
instead recomputes only the rows it needs from the layer's own projections: ``q_proj`` of the
last ``n`` queries (without the output gate of a gated attention, Qwen3.5) and ``k_proj`` of all
keys, the per-head ``q_norm``/``k_norm`` when the layer has them (Qwen3), the layer's own rotary
function with the position embeddings it received (M-RoPE included: the rotary embedding already
merged the rows), grouped-query heads, scaling and the attention mask. The result equals the eager
attention rows.

A prefill whose layers ran in chunks (``chunked_prefill.py``) keeps only what the probe reads: the
key states of every slot, computed chunk by chunk, and the inputs of the last queries.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tokenreduce.adapters import hf


@dataclass
class AttentionInputs:
    """What one self-attention module received: its (normed) hidden states and arguments.

    With ``keys`` (the rotated key states of all ``L`` slots, ``[B, kv_heads, L, head_dim]``),
    ``hidden_states`` may hold only the last rows of the ``L``: those of the queries probed.
    """

    hidden_states: torch.Tensor  # [B, L, D], or its last rows when keys are given
    position_embeddings: tuple[torch.Tensor, torch.Tensor]  # over all L slots
    attention_mask: torch.Tensor | None
    keys: torch.Tensor | None = None

    @property
    def length(self) -> int:
        """``L``: the slots the attention saw."""
        return int(self.hidden_states.shape[1] if self.keys is None else self.keys.shape[2])


def _batched(embedding: torch.Tensor, batch: int) -> torch.Tensor:
    """A rotary ``cos`` or ``sin`` with its batch axis (before the sequence axis) expanded to ``batch``."""
    shape = list(embedding.shape)
    shape[hf.rotary_sequence_dim(embedding) - 1] = batch
    return embedding.expand(shape)


def _heads(states: torch.Tensor, norm: nn.Module | None) -> torch.Tensor:
    """``[B, L, heads, head_dim]`` states, normed per head when the layer has the norm, as ``[B, heads, L, d]``."""
    if norm is not None:
        states = norm(states)
    return states.transpose(1, 2)


def _rotated(attention: nn.Module, inputs: AttentionInputs, kind: str, rows: slice = slice(None)) -> torch.Tensor:
    """``[B, heads, L', head_dim]``: the layer's query (``kind="q"``) or key (``"k"``) states of ``rows``
    (of the ``L`` slots), rotary applied."""
    x = inputs.hidden_states
    first, stop, _ = rows.indices(inputs.length)
    offset = inputs.length - x.shape[1]  # hidden_states may hold only the last rows
    x = x[:, first - offset:stop - offset]
    cos, sin = (_batched(e, x.shape[0])[..., first:stop, :] for e in inputs.position_embeddings)
    head_dim = int(attention.head_dim)
    projected = (hf.attention_queries(attention, x, head_dim) if kind == "q"
                 else attention.k_proj(x).view(*x.shape[:2], -1, head_dim))
    states = _heads(projected, getattr(attention, f"{kind}_norm", None))
    return hf.rotary_function(attention)(states, states, cos, sin)[0]


def rotated_keys(attention: nn.Module, inputs: AttentionInputs) -> torch.Tensor:
    """``[B, kv_heads, L, head_dim]``: the layer's key states of every slot, rotary applied."""
    return inputs.keys if inputs.keys is not None else _rotated(attention, inputs, "k")


def key_states(attention: nn.Module, inputs: AttentionInputs) -> torch.Tensor:
    """``[B, L, kv_heads * head_dim]``: the layer's key states of every slot, rotary applied, the
    key heads side by side (what the layer writes to its KV cache, as DART reads it)."""
    keys = rotated_keys(attention, inputs)
    return keys.transpose(1, 2).reshape(keys.shape[0], keys.shape[2], -1)


def last_query_attention(attention: nn.Module, inputs: AttentionInputs, num_queries: int = 1) -> torch.Tensor:
    """Float32 ``[B, heads, L]``: attention of the last ``num_queries`` queries, averaged over them.

    ``attention`` is a decoder self-attention module (``q_proj``, ``k_proj``, ``head_dim``,
    ``scaling``, optional ``q_norm``/``k_norm``) and ``inputs`` what it received in a prefill
    without a cache, so queries and keys are the same ``L`` slots.
    """
    x = inputs.hidden_states
    length = inputs.length
    n = min(max(int(num_queries), 1), length)
    q = _rotated(attention, inputs, "q", slice(length - n, length))
    k = rotated_keys(attention, inputs)
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1)
    scores = torch.matmul(q, k.transpose(2, 3)) * float(attention.scaling)  # [B, heads, n, L]
    mask = inputs.attention_mask
    if mask is None:
        query_pos = torch.arange(length - n, length, device=x.device)
        allowed = torch.arange(length, device=x.device)[None, :] <= query_pos[:, None]
        scores = scores.masked_fill(~allowed, float("-inf"))
    else:
        rows = mask[:, :, -n:, :length]
        if rows.dtype == torch.bool:
            scores = scores.masked_fill(~rows, float("-inf"))
        else:
            scores = scores + rows
    weights = torch.softmax(scores.float(), dim=-1)
    return weights.mean(dim=2)
