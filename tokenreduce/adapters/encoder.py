"""Encoder-stage signals: what a vision-tower layer's attention says about each LLM visual token.

Encoder steps (VisionZip, FasterVLM) rank tokens by the attention they receive inside the vision
encoder and compare them by the encoder's key states. ``EncoderCapture`` records, with forward
pre-hooks, the inputs of the chosen vision attention layers for every vision-tower call; the rows
needed are then recomputed from the layer's own ``qkv`` projection and rotary embedding, so it
works under sdpa as under eager. For encoders without a CLS token (the Qwen ViTs) the importance of
a patch is the attention it receives, averaged over the queries of its attention segment (one
frame) and over heads; an LLM token's importance and keys are the means over the patches the
projector merges into it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tokenreduce.adapters import hf
from tokenreduce.adapters.concurrency import PerThread
from tokenreduce.errors import ConfigError


@dataclass
class EncoderRecord:
    """One vision-tower call: its output object and the captured attention inputs per layer."""

    output: Any = None
    info: Any = None
    layers: dict[int, dict[str, Any]] = field(default_factory=dict)


class EncoderCapture:
    """Records the inputs of vision attention layers ``layers`` during each vision-tower call
    (per thread: a thread finds the records of its own calls)."""

    records: list[EncoderRecord] = PerThread(list)  # type: ignore[assignment]
    _pending: EncoderRecord = PerThread(EncoderRecord)  # type: ignore[assignment]

    def __init__(self, blocks: nn.ModuleList | None, layers: set[int], attention_of) -> None:
        self._handles = []
        self.num_blocks = len(blocks) if blocks is not None else 0
        outside = sorted(i for i in layers if not -self.num_blocks <= i < self.num_blocks)
        if blocks is not None and outside:
            raise ConfigError(f"encoder_layer {outside[0]} is outside the vision encoder's "
                             f"{self.num_blocks} blocks (valid: {-self.num_blocks} .. {self.num_blocks - 1})")
        for index in sorted({i % len(blocks) for i in layers}) if blocks is not None else ():
            module = attention_of(blocks[index])
            self._handles.append(module.register_forward_pre_hook(self._hook(index), with_kwargs=True))

    def _hook(self, index: int):
        def hook(module, args, kwargs):
            self._pending.layers[index] = hf.call_arguments(args, kwargs, first=hf.HIDDEN_STATES)
        return hook

    def finish(self, output: Any, info: Any) -> None:
        """Close the record of the vision-tower call that returned ``output``."""
        self._pending.output, self._pending.info = output, info
        self.records = [*self.records[-3:], self._pending]
        self._pending = EncoderRecord()

    def find(self, output: Any | None) -> EncoderRecord | None:
        """The record of ``output`` (by identity), or the latest one when ``output`` is None."""
        if output is None:
            return self.records[-1] if self.records else None
        return next((r for r in reversed(self.records) if r.output is output), None)

    def layer_inputs(self, record: EncoderRecord, layer: int) -> dict[str, Any]:
        """The captured inputs of vision layer ``layer`` (negative counts from the end) in ``record``."""
        key = layer % self.num_blocks if self.num_blocks else layer
        if key not in record.layers:
            raise RuntimeError(f"vision layer {layer} was not captured in this vision-tower call")
        return record.layers[key]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self.records.clear()


def qwen_patch_signals(attention: nn.Module, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Importance ``[P]`` and head-averaged keys ``[P, d]`` of every patch for a Qwen ViT attention.

    The importance is the attention a patch receives, averaged over heads and over the queries of
    its ``cu_seqlens`` segment; the keys are the projected keys before the rotary embedding.
    """
    hidden = inputs[hf.HIDDEN_STATES]
    length = hidden.shape[0]
    heads = int(attention.num_heads)
    q, k, _ = attention.qkv(hidden).reshape(length, 3, heads, -1).permute(1, 0, 2, 3).unbind(0)
    keys = k.float().mean(dim=1)
    rotary = hf.vision_rotary_function(attention)
    cos, sin = inputs[hf.POSITION_EMBEDDINGS]
    q, k = rotary(q, k, cos, sin)
    bounds = inputs[hf.CU_SEQLENS].tolist()
    received = []
    for start, end in itertools.pairwise(bounds):  # one attention segment (a frame) at a time
        qs, ks = q[start:end].transpose(0, 1).float(), k[start:end].transpose(0, 1).float()
        weights = torch.softmax(qs @ ks.transpose(1, 2) * float(attention.scaling), dim=-1)
        received.append(weights.mean(dim=(0, 1)))
    return torch.cat(received), keys


def vit_patch_signals(attention: nn.Module, inputs: dict[str, Any], cls_token: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Importance ``[F, P]`` and head-averaged keys ``[F, P, d]`` for a CLIP/SigLIP attention layer.

    ``inputs`` hold its hidden states ``[F, P(+1), C]`` (one row per frame). With a CLS token
    (``cls_token``, CLIP) the importance is the CLS query's attention to each patch, averaged over
    heads (VisionZip / FasterVLM); without one (SigLIP) the attention each patch receives, averaged
    over queries and heads. The CLS position itself is dropped from both outputs.
    """
    hidden = inputs[hf.HIDDEN_STATES]
    frames, length = hidden.shape[:2]
    head_dim = int(attention.head_dim)
    q = attention.q_proj(hidden).view(frames, length, -1, head_dim).transpose(1, 2).float()
    k = attention.k_proj(hidden).view(frames, length, -1, head_dim).transpose(1, 2).float()
    scale = float(getattr(attention, "scale", getattr(attention, "scaling", head_dim ** -0.5)))
    queries = q[:, :, :1] if cls_token else q
    weights = torch.softmax(queries @ k.transpose(2, 3) * scale, dim=-1)  # [F, heads, q, P(+1)]
    importance = weights.mean(dim=(1, 2))
    keys = k.mean(dim=1)
    start = 1 if cls_token else 0
    return importance[:, start:], keys[:, start:]
