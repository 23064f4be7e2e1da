"""Qwen3.5 and Qwen3.5-MoE: a hybrid decoder behind the Qwen3-VL media layout.

The decoder has three Gated-DeltaNet (linear attention) layers for every full-attention layer. Media
are laid out as in Qwen3-VL (per-frame timestamps; no deepstack). What the engine does differently
(see ``schedule.py`` and docs/models.md):

* in-LLM steps that read the attention probe run right after a full-attention layer: a step asked to
  run before layer K whose layer K-1 is a linear-attention layer runs after the first full-attention
  layer at or after K-1 (Qwen3.5's layer 3 for FastV's K = 2);
* layers after a reduction get the reduced sequence: full-attention layers with a causal mask sized
  to it, linear-attention layers with its 2-D padding mask; their convolution and recurrent states
  (the cache they decode from) therefore summarise the reduced sequence, exactly what an uncached
  run of the reduced sequence computes;
* the attention probe drops the output gate the full-attention layers project with their queries;
* a chunked prefill runs the linear-attention layers before the reduction chunk by chunk too, each
  chunk starting from the states the earlier ones left in the cache (``chunked_prefill.py``).
"""

from __future__ import annotations

from typing import ClassVar

from tokenreduce.adapters.grid_thw import GridThwFamily
from tokenreduce.registry import register_adapter


@register_adapter("qwen3_5")
class Qwen3_5Adapter(GridThwFamily):
    """Qwen3.5 and Qwen3.5-MoE (hybrid linear/full-attention decoder; videos and images)."""

    model_classes: ClassVar[tuple[str, ...]] = ("Qwen3_5ForConditionalGeneration",
                                                "Qwen3_5MoeForConditionalGeneration")
