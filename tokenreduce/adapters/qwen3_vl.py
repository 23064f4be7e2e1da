"""Qwen3-VL: the Qwen2-VL layout plus per-frame timestamp tokens and deepstack features.

Each frame of a video is wrapped in its own vision-start/end tokens with a timestamp between
frames; the placeholders of one video are therefore not contiguous, but still in grid order, so
the Qwen2-VL mapping applies unchanged (timestamps are text and always kept). Deepstack adds
vision features to the hidden states of the visual tokens after the first decoder layers; the
adapter prunes ``visual_pos_masks`` and ``deepstack_visual_embeds`` with the sequence, and keeps
them aligned after in-LLM pruning by remapping them in the deepstack method (a method, not a
module, so no hook can reach it; the instance attribute is removed on exit).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from tokenreduce.adapters import hf
from tokenreduce.adapters.qwen_vl import Qwen2VLAdapter
from tokenreduce.adapters.state import Phase
from tokenreduce.registry import register_adapter


def select_visual(mask: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-index a visual-position mask ``[B, L]`` by ``index`` ``[B, L']`` (-1: padding).

    Returns the new mask and the rows of the per-visual-token tensor (ordered like the ``True``
    entries of ``mask``, batch-major) that the new mask's ``True`` entries correspond to.
    """
    rank = mask.flatten().long().cumsum(0).view_as(mask) - 1
    source = index.clamp(min=0)
    new_mask = (index >= 0) & mask.gather(1, source)
    return new_mask, rank.gather(1, source)[new_mask]


@register_adapter("qwen3_vl")
class Qwen3VLAdapter(Qwen2VLAdapter):
    """``Qwen3VLForConditionalGeneration``."""

    model_classes: ClassVar[tuple[str, ...]] = ("Qwen3VLForConditionalGeneration",)

    def prune_language_inputs(self, kwargs: dict[str, Any], index: torch.Tensor) -> None:
        mask = kwargs.get(hf.VISUAL_POS_MASKS)
        if mask is None:
            return
        new_mask, rows = select_visual(mask.to(index.device), index)
        kwargs[hf.VISUAL_POS_MASKS] = new_mask
        embeds = kwargs.get(hf.DEEPSTACK_VISUAL_EMBEDS)
        if embeds is not None:
            kwargs[hf.DEEPSTACK_VISUAL_EMBEDS] = [e[rows.to(e.device)] for e in embeds]

    def install(self, session: Any) -> list[Any]:
        undo = super().install(session)

        def aligned(original):
            def deepstack_process(hidden_states, visual_pos_masks, visual_embeds):
                state = session.state
                if session.phase is Phase.PREFILL and state is not None and state.current is not None:
                    index = state.current.layout.slots_in(state.lm_layout)
                    visual_pos_masks, rows = select_visual(visual_pos_masks.to(index.device), index)
                    visual_embeds = visual_embeds[rows.to(visual_embeds.device)]
                return original(hidden_states, visual_pos_masks, visual_embeds)
            return deepstack_process

        return [*undo, hf.wrap_deepstack(self.language_model, aligned)]
