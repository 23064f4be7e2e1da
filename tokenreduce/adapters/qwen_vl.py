"""Qwen2-VL and Qwen2.5-VL: ``(T, H, W)`` patch grids merged 2x2, M-RoPE position ids.

The LLM grid of a video is ``(T, H / m, W / m)`` for a ``video_grid_thw`` row ``(T, H, W)`` (``T``
already counts temporal patches of ``temporal_patch_size`` frames), of an image ``(1, H / m, W / m)``;
their tokens are the video / image placeholders of ``input_ids`` in grid order. Position ids have 3
rows (temporal, height, width), or 4 during ``generate`` (a text row first); both are pruned alike
and kept tokens keep their values. Qwen2.5-VL's ViT runs on merged tokens grouped by attention window;
its encoder signals are mapped back to the LLM order.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from tokenreduce.adapters import hf
from tokenreduce.adapters.encoder import EncoderRecord
from tokenreduce.adapters.grid_thw import GridThwFamily
from tokenreduce.registry import register_adapter


@register_adapter("qwen2_vl")
class Qwen2VLAdapter(GridThwFamily):
    """Qwen2-VL and Qwen2.5-VL (videos and images)."""

    model_classes: ClassVar[tuple[str, ...]] = (
        "Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration")

    def encoder_token_signals(self, record: EncoderRecord, layer: int, modality: str,
                              call: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        importance, keys = super().encoder_token_signals(record, layer, modality, call)
        visual = self.vision_tower
        if getattr(visual, "window_size", None) is None:
            return importance, keys
        order = torch.argsort(hf.vision_window_index(record.info, visual))  # ViT position of each LLM token
        return importance[order], keys[order]
