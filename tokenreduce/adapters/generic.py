"""The generic path: token reduction for any Hugging Face decoder fed with ``inputs_embeds``.

Models without an adapter (NVILA, remote-code models, a custom projector in front of a plain LLM)
build the LLM input themselves. The caller says where the videos are (a ``VisualLayout``) and
either

* calls ``reduce_sequence`` to get the reduced embeddings, original position ids and mask for
  pre-LLM steps, and feeds them to any decoder; or
* applies the reducer to the decoder itself with ``tr.apply(decoder, reducer, adapter="generic",
  visual=layout)``, which supports every stage the model adapters support (in-LLM pruning with the
  attention probe, pruned KV cache, generate). Set ``session.adapter.visual`` for the next input.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from tokenreduce.adapters import hf
from tokenreduce.adapters.base import ModelAdapter
from tokenreduce.adapters.layout import VideoSpan, VisualLayout
from tokenreduce.adapters.llm_input import ReducedInput, reduce_llm_input
from tokenreduce.adapters.steps import video_groups
from tokenreduce.interfaces import Reducer, Stage
from tokenreduce.registry import register_adapter


def contiguous_video(sample: int, start: int, grid: tuple[int, int, int]) -> VideoSpan:
    """A video whose ``T*H*W`` tokens occupy positions ``start, start+1, ...`` of ``sample``."""
    t, h, w = grid
    return VideoSpan(sample, (int(t), int(h), int(w)), torch.arange(start, start + t * h * w))


def reduce_sequence(
    inputs_embeds: torch.Tensor,
    visual: VisualLayout,
    reducer: Reducer,
    *,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    positions: str = "original",
    num_layers: int | None = None,
) -> ReducedInput:
    """Run ``reducer``'s pre-LLM steps on the videos of ``inputs_embeds`` ``[B, S, D]``.

    Returns the reduced ``inputs_embeds``, ``position_ids`` (the originals of the kept tokens by
    default; ``positions="contiguous"`` renumbers) and 2-D ``attention_mask`` (left re-padded
    where samples keep different counts) to pass to any decoder. In-LLM steps need the decoder:
    use ``tr.apply(decoder, reducer, adapter="generic", visual=visual)``.
    """
    if not isinstance(inputs_embeds, torch.Tensor) or inputs_embeds.ndim != 3:
        raise ValueError("inputs_embeds must be a tensor [B, S, D]")
    if tuple(inputs_embeds.shape[:2]) != (visual.batch_size, visual.seq_len):
        raise ValueError(f"inputs_embeds has shape {tuple(inputs_embeds.shape[:2])} but visual describes "
                         f"{(visual.batch_size, visual.seq_len)}")
    steps = reducer.steps()
    late = [s for s in steps if s.stage is not Stage.PRE_LLM]
    if late:
        raise ValueError(f"reduce_sequence runs pre-LLM steps only; {late[0].registered_name or late[0]} runs at "
                         f"{late[0].stage.name}: use tr.apply(decoder, reducer, adapter='generic', visual=...)")
    return reduce_llm_input(inputs_embeds, position_ids, attention_mask, video_groups(visual, inputs_embeds.device),
                            steps, num_layers=num_layers, positions_policy=positions)


@register_adapter("generic")
class GenericDecoderAdapter(ModelAdapter):
    """Any Llama-style Hugging Face decoder (``...ForCausalLM`` or its base model) fed with
    ``inputs_embeds``; the videos are where ``visual`` says. Chosen by name only."""

    options: ClassVar[tuple[str, ...]] = ("visual",)

    def __init__(self, model: nn.Module, visual: VisualLayout | None = None) -> None:
        super().__init__(model)
        if visual is not None and not isinstance(visual, VisualLayout):
            raise TypeError(f"visual must be a tokenreduce.adapters.VisualLayout, got {type(visual).__name__}")
        self.visual = visual
        inner = model if isinstance(getattr(model, "layers", None), nn.ModuleList) else getattr(model, "model", None)
        if inner is None or not isinstance(getattr(inner, "layers", None), nn.ModuleList):
            raise TypeError(f"{type(model).__name__} has no decoder layers (.layers or .model.layers); the generic "
                            "path needs a Hugging Face decoder")
        self._language_model = inner

    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        return False

    @property
    def language_model(self) -> nn.Module:
        return self._language_model

    def visual_layout(self, call: dict[str, Any]) -> VisualLayout | None:
        embeds = call.get(hf.INPUTS_EMBEDS)
        if self.visual is None or embeds is None:
            return None
        if tuple(embeds.shape[:2]) != (self.visual.batch_size, self.visual.seq_len):
            raise ValueError(f"inputs_embeds has shape {tuple(embeds.shape[:2])} but the visual layout describes "
                             f"{(self.visual.batch_size, self.visual.seq_len)}; set session.adapter.visual")
        return self.visual
