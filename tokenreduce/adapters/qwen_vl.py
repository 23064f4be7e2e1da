"""Qwen2-VL and Qwen2.5-VL: M-RoPE position ids, ``video_grid_thw`` and the 2x2 patch merge.

The LLM grid of a video is ``(T, H / m, W / m)`` for a ``video_grid_thw`` row ``(T, H, W)``
(``T`` already counts temporal patches of ``temporal_patch_size`` frames) and spatial merge size
``m``; its tokens are the video placeholders of ``input_ids`` in grid order. Position ids have 3
rows (temporal, height, width), or 4 during ``generate`` (a text row first); both are pruned
alike and kept tokens keep their values.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from tokenreduce.adapters import hf
from tokenreduce.adapters.base import ModelAdapter, spans_from_token_runs
from tokenreduce.adapters.encoder import qwen_patch_signals
from tokenreduce.adapters.layout import VisualLayout
from tokenreduce.registry import register_adapter


@register_adapter("qwen2_vl")
class Qwen2VLAdapter(ModelAdapter):
    """``Qwen2VLForConditionalGeneration`` and ``Qwen2_5_VLForConditionalGeneration``."""

    model_classes: ClassVar[tuple[str, ...]] = (
        "Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration")
    position_rows: ClassVar[int | None] = 3

    def llm_grids(self, video_grid_thw) -> list[tuple[int, int, int]]:
        merge = int(self.model.config.vision_config.spatial_merge_size)
        return [(int(t), int(h) // merge, int(w) // merge) for t, h, w in video_grid_thw.tolist()]

    def _encoded_grids(self, encoded: Any) -> torch.Tensor | None:
        """``video_grid_thw`` of videos ``generate`` encoded before the prefill.

        The recorded grids belong to the vision-tower call; ``generate`` may have repeated videos
        for beams or ``num_return_sequences``. Every entry of its features is a view into the
        tower's output, so its first row tells which recorded video it is.
        """
        grid_thw = self.encoder_info_for(encoded)
        if grid_thw is None:
            return None
        merge = int(self.model.config.vision_config.spatial_merge_size) ** 2
        starts = torch.cat([grid_thw.new_zeros(1), (grid_thw.prod(-1) // merge).cumsum(0)[:-1]]).tolist()
        videos = [starts.index(out.storage_offset() // max(out.stride(0), 1)) for out in hf.encoded_features(encoded)]
        return grid_thw[videos]

    @property
    def vision_tower(self):
        return self.model.model.visual

    def encoder_call_info(self, args, kwargs) -> Any:
        return kwargs.get("grid_thw", args[1] if len(args) > 1 else None)

    def visual_layout(self, call: dict[str, Any]) -> VisualLayout | None:
        encoded = hf.encoded_video(call)
        if call.get(hf.PIXEL_VALUES_VIDEOS) is None and encoded is None:
            return None
        input_ids = call.get(hf.INPUT_IDS)
        grid_thw = call.get(hf.VIDEO_GRID_THW)
        if grid_thw is None and encoded is not None:
            grid_thw = self._encoded_grids(encoded)
        if input_ids is None or grid_thw is None:
            raise ValueError("token reduction on a video needs input_ids and video_grid_thw to locate the "
                             "video tokens")
        spans = spans_from_token_runs(input_ids, int(self.model.config.video_token_id), self.llm_grids(grid_thw))
        return VisualLayout.from_spans(input_ids.shape[0], input_ids.shape[1], spans)

    # ----- encoder stage ----------------------------------------------------------------------
    supports_encoder: ClassVar[bool] = True

    def _window_order(self, grid_thw: torch.Tensor) -> torch.Tensor | None:
        """For a windowed ViT (Qwen2.5-VL), the ViT position of each LLM-order token, else None."""
        visual = self.vision_tower
        if getattr(visual, "window_size", None) is None:
            return None
        return torch.argsort(hf.vision_window_index(grid_thw, visual))

    def vision_blocks(self) -> nn.ModuleList:
        return self.vision_tower.blocks

    def vision_attention_of(self, block: nn.Module) -> nn.Module:
        return block.attn

    def encoder_token_signals(self, record: Any, layer: int, num_videos: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        inputs = self.capture.layer_inputs(record, layer)
        attention = self.vision_attention_of(self.vision_blocks()[layer])
        importance, keys = qwen_patch_signals(attention, inputs)
        window = int(self.model.config.vision_config.spatial_merge_size) ** 2  # patches per LLM token
        importance = importance.view(-1, window).mean(dim=1)
        keys = keys.view(-1, window, keys.shape[-1]).mean(dim=1)
        order = self._window_order(record.info)
        if order is not None:  # Qwen2.5-VL: the ViT runs on merged tokens grouped by attention window
            importance, keys = importance[order], keys[order]
        sizes = [t * h * w for t, h, w in self.llm_grids(record.info)]
        return list(zip(importance.split(sizes), keys.split(sizes)))
