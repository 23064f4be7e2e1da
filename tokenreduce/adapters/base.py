"""The model-adapter base: what a family adapter knows about a model, and nothing else.

A family adapter says which classes it supports, where the language model and its decoder layers
are, and where the visual tokens of each video sit in the input sequence (``visual_layout``).
Everything else — running the steps, the attention probe, pruning sequences, positions, masks and
caches — is shared (``session.py``), so a new model family is one short file.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from tokenreduce.adapters.encoder import EncoderCapture
from tokenreduce.adapters.layout import VideoSpan, VisualLayout


class ModelAdapter:
    """Base class of model adapters; subclasses implement ``visual_layout``.

    Class attributes:
        model_classes: names of the supported model classes (subclasses match too).
        position_rows: rows of the position ids the model's forward takes (3 for M-RoPE,
            ``None`` for 1-D ``[B, L]``).
    """

    model_classes: ClassVar[tuple[str, ...]] = ()
    position_rows: ClassVar[int | None] = None
    registered_name: ClassVar[str | None] = None

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.capture: EncoderCapture | None = None

    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        return any(klass.__name__ in cls.model_classes for klass in type(model).__mro__)

    # ----- where things are ------------------------------------------------------------------
    @property
    def top(self) -> nn.Module:
        """The module whose forward ``generate`` calls."""
        return self.model

    @property
    def language_model(self) -> nn.Module:
        return self.model.model.language_model

    @property
    def layers(self) -> nn.ModuleList:
        return self.language_model.layers

    @property
    def text_config(self) -> Any:
        return self.language_model.config

    def attention_of(self, layer: nn.Module) -> nn.Module:
        return layer.self_attn

    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden`` through the language model's final norm (what its LM head reads):
        ``Signal.NORMED``."""
        norm = getattr(self.language_model, "norm", None)
        if not isinstance(norm, nn.Module):
            raise TypeError(f"{type(self.language_model).__name__} has no final norm ('norm'); steps that "
                            "declare Signal.NORMED need one")
        return norm(hidden)

    def post_attention_norm_of(self, layer: nn.Module) -> nn.Module:
        """The norm a decoder layer applies to ``residual + attention`` before its MLP."""
        return _child(layer, "post_attention_layernorm")

    def mlp_of(self, layer: nn.Module) -> nn.Module:
        return _child(layer, "mlp")

    def language_model_device(self) -> torch.device:
        return next(self.language_model.parameters()).device

    # ----- what subclasses provide -----------------------------------------------------------
    def visual_layout(self, call: dict[str, Any]) -> VisualLayout | None:
        """Where the videos of this forward call sit; ``None`` when the call carries no video."""
        raise NotImplementedError

    def prune_language_inputs(self, kwargs: dict[str, Any], index: torch.Tensor) -> None:
        """Prune extra per-token language-model inputs (``index`` ``[B, L']``: new slot -> old slot)."""

    # ----- the vision tower (generate encodes videos before the prefill forward) --------------
    @property
    def vision_tower(self) -> nn.Module | None:
        """The vision module whose outputs ``generate`` hands to the prefill (``hf.encoded_video``)."""
        return None

    def encoder_call_info(self, args: tuple, kwargs: dict[str, Any]) -> Any:
        """What the adapter needs to remember about one vision-tower call (e.g. its grid)."""
        return None

    def encoder_info_for(self, encoded: Any) -> Any:
        """The recorded call info of the vision-tower output ``encoded`` (matched by identity)."""
        record = self.capture.find(encoded) if self.capture is not None else None
        return None if record is None else record.info

    # ----- encoder-stage signals (adapters that support Stage.ENCODER override these) -----------
    supports_encoder: ClassVar[bool] = False

    def vision_blocks(self) -> nn.ModuleList:
        raise NotImplementedError

    def vision_attention_of(self, block: nn.Module) -> nn.Module:
        raise NotImplementedError

    def encoder_token_signals(self, record: Any, layer: int, num_videos: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per video of the recorded call (``num_videos`` of them): ``(importance [N], keys [N, Dk])``
        on its LLM grid."""
        raise NotImplementedError

    def install(self, session: Any) -> list[Any]:
        """Hooks and patches beyond the session's own; returns callables that undo them."""
        layers = session.encoder_layers
        if layers and not self.supports_encoder:
            raise NotImplementedError(f"encoder-stage steps (Stage.ENCODER) are not supported for "
                                      f"{type(self.model).__name__} yet")
        tower = self.vision_tower
        if tower is None:
            return []
        self.capture = EncoderCapture(self.vision_blocks() if layers else None, layers, self.vision_attention_of)

        def record(module, args, kwargs, output):
            self.capture.finish(output, self.encoder_call_info(args, kwargs))

        handle = tower.register_forward_hook(record, with_kwargs=True)

        def undo() -> None:
            handle.remove()
            self.capture.remove()
            self.capture = None

        return [undo]


def _child(layer: nn.Module, name: str) -> nn.Module:
    module = getattr(layer, name, None)
    if not isinstance(module, nn.Module):
        raise TypeError(f"{type(layer).__name__} has no {name}: steps with position='after_attention' need "
                        "Llama/Qwen-style decoder layers (attention, residual, post_attention_layernorm, mlp, "
                        "residual); use position='before_layer'")
    return module


def spans_from_token_runs(input_ids: torch.Tensor, token_id: int, grids: list[tuple[int, int, int]],
                          extra_per_video: int = 0, extra_at_end: bool = True) -> list[VideoSpan]:
    """Video spans from the placeholder tokens of ``input_ids`` ``[B, S]``.

    Videos are assigned in batch order: each video takes the next ``T*H*W + extra_per_video``
    placeholder tokens of the current sample (the extra ones — e.g. a trailing newline — are off
    the grid and always kept). The placeholders of one video need not be contiguous.
    """
    per_sample = [(row == token_id).nonzero().flatten() for row in input_ids]
    spans, sample, used = [], 0, 0
    for grid in grids:
        count = grid[0] * grid[1] * grid[2]
        while sample < len(per_sample) and used >= per_sample[sample].numel():
            sample, used = sample + 1, 0
        if sample >= len(per_sample) or used + count + extra_per_video > per_sample[sample].numel():
            raise ValueError(f"input_ids hold too few video placeholder tokens (id {token_id}) for video grids "
                             f"{grids}")
        chunk = per_sample[sample][used:used + count + extra_per_video]
        grid_part = chunk[:count] if extra_at_end else chunk[extra_per_video:]
        spans.append(VideoSpan(sample, grid, grid_part))
        used += count + extra_per_video
    remaining = sum(p.numel() for p in per_sample[sample:]) - used
    if remaining:
        raise ValueError(f"input_ids hold {remaining} video placeholder tokens (id {token_id}) more than the "
                         f"video grids {grids} account for")
    return spans
