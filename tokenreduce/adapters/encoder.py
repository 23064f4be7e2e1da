"""Encoder-stage signals: what a vision-tower layer's attention says about each LLM visual token.

Encoder steps (VisionZip, FasterVLM) rank tokens by the attention they receive inside the vision
encoder and compare them by the encoder's key states. ``EncoderCapture`` records, with forward
pre-hooks, the inputs of the chosen vision attention layers for every vision-tower call; the rows
needed are then recomputed from the layer's own projections and rotary embedding, so it works under
sdpa as under eager. Two kinds of towers:

* packed (Qwen ViTs, GLM-4V, VideoLLaMA3): all patches in one sequence, attention within segments
  (``cu_seqlens``: a frame, or a window); no CLS token, so a patch's importance is the attention it
  receives, averaged over the queries of its segment and over heads (``packed_patch_signals``);
* batched (CLIP, SigLIP, InternViT): one row per frame, tile or crop; with a CLS token the importance
  is the CLS query's attention, else the attention received (``vit_patch_signals``).

A family pools the patch values of one tower call onto the LLM tokens that call makes, in the order
the model places them on the placeholder tokens; ``media_signals`` hands each span its rows.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tokenreduce.adapters import hf
from tokenreduce.adapters.concurrency import PerThread
from tokenreduce.adapters.layout import VisualLayout
from tokenreduce.adapters.media import placeholder_ranks
from tokenreduce.errors import ConfigError


@dataclass
class EncoderRecord:
    """One vision-tower call: its output object, the family's note about it and the captured attention
    inputs per layer."""

    output: Any = None
    info: Any = None
    layers: dict[int, dict[str, Any]] = field(default_factory=dict)


class EncoderCapture:
    """Records the inputs of vision attention layers ``layers`` during each vision-tower call
    (per thread: a thread finds the records of its own calls)."""

    records: list[EncoderRecord] = PerThread(list)  # type: ignore[assignment]
    _pending: EncoderRecord = PerThread(EncoderRecord)  # type: ignore[assignment]
    _mark: int = PerThread(int)  # type: ignore[assignment]  # records before the running forward's calls

    KEPT = 8  # records kept: the calls of one prefill (and of generate's encoding just before it)

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
        self.records.append(self._pending)
        dropped = max(len(self.records) - self.KEPT, 0)
        self.records = self.records[dropped:]
        self._mark = max(self._mark - dropped, 0)
        self._pending = EncoderRecord()

    def mark(self) -> None:
        """A model forward starts: later records are the tower calls of this forward."""
        self._mark = len(self.records)

    def find(self, output: Any | None) -> EncoderRecord | None:
        """The record of ``output`` (by identity), or the latest one when ``output`` is None."""
        if output is None:
            return self.records[-1] if self.records else None
        return next((r for r in reversed(self.records) if r.output is output), None)

    def for_call(self, call: dict[str, Any], encodings: tuple[str, ...]) -> dict[str, EncoderRecord]:
        """The record of each encoding (a modality whose pixels the forward call carries): the output
        ``generate`` encoded beforehand (found by identity), else the tower calls of this forward, taken in
        the order of ``encodings`` (the order the family's forward encodes them)."""
        found, fresh = {}, iter(self.records[self._mark:])
        for modality in encodings:
            encoded = hf.encoded_media(call, modality)
            record = self.find(encoded) if encoded is not None else next(fresh, None)
            if record is None:
                raise RuntimeError(f"encoder steps need the vision tower to encode the {modality} inputs while the "
                                   "reducer is applied (pass pixel values, not features encoded before tr.apply)")
            found[modality] = record
        return found

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


def install_capture(adapter: Any, layers: set[int]) -> list[Any]:
    """Record every call of the family's vision tower (and, for ``layers``, the inputs of those vision
    attention layers) while a session runs; returns the undo."""
    if layers and not adapter.encoder_modalities:
        raise NotImplementedError(f"encoder-stage steps (Stage.ENCODER) are not supported for "
                                  f"{type(adapter.model).__name__} yet")
    tower = adapter.vision_tower
    if tower is None:
        return []
    adapter.capture = EncoderCapture(adapter.vision_blocks() if layers else None, layers, adapter.vision_attention_of)

    def record(module, args, kwargs, output):
        adapter.capture.finish(output, adapter.encoder_call_info(args, kwargs))

    handle = tower.register_forward_hook(record, with_kwargs=True)

    def undo() -> None:
        handle.remove()
        adapter.capture.remove()
        adapter.capture = None

    return [undo]


def media_signals(adapter: Any, call: dict[str, Any], visual: VisualLayout, layer: int
                  ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per span of ``visual``: ``(importance [N], keys [N, d])`` on its grid from vision layer ``layer``."""
    present = {s.modality for s in visual.spans}
    unsupported = sorted(m for m in present if m not in adapter.encoder_modalities)
    if unsupported:
        raise NotImplementedError(f"encoder-stage steps on {unsupported[0]} inputs are not supported for "
                                  f"{type(adapter.model).__name__}; reduce them with modalities="
                                  f"{tuple(sorted(present - set(unsupported)))} or use another stage")
    encodings = tuple(dict.fromkeys(adapter.encoded_as.get(m, m) for m in adapter.modalities
                                    if adapter.has_media(call, m)))
    records = adapter.capture.for_call(call, encodings)
    per_encoding = {}
    for encoding in {adapter.encoded_as.get(m, m) for m in present}:
        importance, keys = adapter.encoder_token_signals(records[encoding], layer, encoding, call)
        placeholders = adapter.feature_placeholders(call, encoding)
        count = int(placeholders.sum())
        if importance.shape[0] != count:
            raise NotImplementedError(f"the vision-tower call ({importance.shape[0]} {encoding} tokens) does not match "
                                      f"the prompt's {count} one to one (generate repeats the media for beams / "
                                      "num_return_sequences); encoder steps need one encoded copy per prompt")
        per_encoding[encoding] = (importance, keys, placeholder_ranks(placeholders))
    out = []
    for span in visual.spans:
        importance, keys, ranks = per_encoding[adapter.encoded_as.get(span.modality, span.modality)]
        rows = ranks[span.sample, span.positions.clamp(min=0).to(ranks.device)].to(importance.device)
        out.append((importance[rows], keys[rows]))
    return out


# ----- patch signals of one vision attention layer -------------------------------------------------
def packed_patch_signals(attention: nn.Module, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Importance ``[P]`` and head-averaged keys ``[P, d]`` of every patch for a packed ViT attention.

    The importance is the attention a patch receives, averaged over heads and over the queries of its
    ``cu_seqlens`` segment; the keys are the projected keys before the rotary embedding. The layer
    projects with one ``qkv`` linear (Qwen, GLM) or with ``q_proj`` / ``k_proj`` (VideoLLaMA3).
    """
    hidden = inputs[hf.HIDDEN_STATES]
    length = hidden.shape[0]
    heads = int(attention.num_heads)
    if hasattr(attention, "qkv"):
        q, k, _ = attention.qkv(hidden).reshape(length, 3, heads, -1).permute(1, 0, 2, 3).unbind(0)
    else:
        q = attention.q_proj(hidden).view(length, heads, -1)
        k = attention.k_proj(hidden).view(length, heads, -1)
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


def vit_patch_signals(attention: nn.Module, inputs: dict[str, Any], cls_token: bool
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Importance ``[F, P]`` and head-averaged keys ``[F, P, d]`` for a CLIP/SigLIP/InternViT attention layer.

    ``inputs`` hold its hidden states ``[F, P(+1), C]`` (one row per frame, tile or crop). With a CLS
    token (``cls_token``) the importance is the CLS query's attention to each patch, averaged over
    heads (VisionZip / FasterVLM); without one the attention each patch receives, averaged over
    queries and heads. A full-width ``q_norm`` / ``k_norm`` (InternViT) is applied as the layer does.
    The CLS position itself is dropped from both outputs.
    """
    hidden = inputs[hf.HIDDEN_STATES]
    frames, length = hidden.shape[:2]
    head_dim = int(attention.head_dim)
    q, k = attention.q_proj(hidden), attention.k_proj(hidden)
    q, k = getattr(attention, "q_norm", nn.Identity())(q), getattr(attention, "k_norm", nn.Identity())(k)
    q = q.view(frames, length, -1, head_dim).transpose(1, 2).float()
    k = k.view(frames, length, -1, head_dim).transpose(1, 2).float()
    scale = float(getattr(attention, "scale", getattr(attention, "scaling", head_dim ** -0.5)))
    queries = q[:, :, :1] if cls_token else q
    weights = torch.softmax(queries @ k.transpose(2, 3) * scale, dim=-1)  # [F, heads, q, P(+1)]
    importance = weights.mean(dim=(1, 2))
    keys = k.mean(dim=1)
    start = 1 if cls_token else 0
    return importance[:, start:], keys[:, start:]


def window_mean(values: torch.Tensor, window: int) -> torch.Tensor:
    """Means over consecutive groups of ``window`` rows: ``[P, ...] -> [P / window, ...]`` (the patches a
    packed ViT's merger combines into one LLM token)."""
    return values.reshape(-1, window, *values.shape[1:]).mean(dim=1)


def stack_signals(importance: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """``[..., 1 + d]``: importance and keys as channels of one tensor, to be pooled together."""
    return torch.cat([importance[..., None], keys], dim=-1)


def split_signals(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of ``stack_signals``."""
    return values[..., 0], values[..., 1:]
