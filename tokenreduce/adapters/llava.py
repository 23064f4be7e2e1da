"""LLaVA-OneVision (how LLaVA-Video-7B-Qwen2 loads) and LLaVA-NeXT-Video: pooled frame grids.

Every frame becomes a pooled ``s x s`` grid (OneVision: bilinear to ``ceil(P/2)``; NeXT-Video:
pooling with ``spatial_pool_stride``, ``P = image_size // patch_size``), and a video's tokens are
its frames in order, so the LLM grid is ``(frames, s, s)``. OneVision appends one ``image_newline``
token after each video: it is not on the grid and is always kept. Position ids are 1-D.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn

from tokenreduce.adapters import hf
from tokenreduce.adapters.base import ModelAdapter, spans_from_token_runs
from tokenreduce.adapters.encoder import vit_patch_signals
from tokenreduce.adapters.layout import VisualLayout
from tokenreduce.registry import register_adapter


class LlavaVideoAdapter(ModelAdapter):
    """Shared by the LLaVA video families; subclasses give the pooled side and off-grid tokens."""

    extra_tokens: ClassVar[int] = 0  # off-grid tokens after each video

    def pooled_side(self) -> int:
        raise NotImplementedError

    def _videos_and_frames(self, call: dict[str, Any]) -> tuple[int, int] | None:
        pixels = call.get(hf.PIXEL_VALUES_VIDEOS)
        if pixels is not None:
            return int(pixels.shape[0]), int(pixels.shape[1])
        encoded = hf.encoded_video(call)
        if encoded is None:
            return None
        features = hf.encoded_features(encoded)
        videos, count = int(features.shape[0]), int(features.shape[1]) - self.extra_tokens
        side = self.pooled_side()
        if count % (side * side):
            raise ValueError(f"{count} video tokens per video do not form frames of {side}x{side} pooled tokens")
        return videos, count // (side * side)

    def visual_layout(self, call: dict[str, Any]) -> VisualLayout | None:
        found = self._videos_and_frames(call)
        if found is None:
            return None
        input_ids = call.get(hf.INPUT_IDS)
        if input_ids is None:
            raise ValueError("token reduction on a video needs input_ids to locate the video tokens")
        videos, frames = found
        side = self.pooled_side()
        spans = spans_from_token_runs(input_ids, int(self.model.config.video_token_id), [(frames, side, side)] * videos,
                                      extra_per_video=self.extra_tokens)
        return VisualLayout.from_spans(input_ids.shape[0], input_ids.shape[1], spans)

    def _patch_side(self) -> int:
        vision = self.model.config.vision_config
        return int(vision.image_size) // int(vision.patch_size)

    # ----- encoder stage ----------------------------------------------------------------------
    supports_encoder: ClassVar[bool] = True

    @property
    def vision_tower(self) -> nn.Module:
        return self.model.model.vision_tower

    def vision_blocks(self) -> nn.ModuleList:
        tower = self.vision_tower
        return getattr(tower, "vision_model", tower).encoder.layers

    def vision_attention_of(self, block: nn.Module) -> nn.Module:
        return block.self_attn

    def pool_grid(self, values: torch.Tensor) -> torch.Tensor:
        """Patch-grid values ``[F, C, P, P]`` on the pooled grid ``[F, C, s, s]``, pooled as the model pools."""
        raise NotImplementedError

    def encoder_token_signals(self, record: Any, layer: int, num_videos: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        inputs = self.capture.layer_inputs(record, layer)
        attention = self.vision_attention_of(self.vision_blocks()[layer])
        has_cls = "CLIP" in type(self.vision_tower).__name__
        if has_cls and self.model.config.vision_feature_select_strategy == "full":
            raise NotImplementedError("encoder steps need the CLS token dropped (vision_feature_select_strategy="
                                      "'default') for CLIP towers")
        importance, keys = vit_patch_signals(attention, inputs, has_cls)  # [F, P], [F, P, d]
        frames, side = importance.shape[0], self._patch_side()
        if importance.shape[1] != side * side:
            raise ValueError(f"{importance.shape[1]} patches per frame do not form the {side}x{side} patch grid")
        grid = torch.cat([importance[:, None], keys.transpose(1, 2)], dim=1).reshape(frames, -1, side, side)
        pooled = self.pool_grid(grid).flatten(2)  # [F, 1 + d, s*s]
        importance, keys = pooled[:, 0], pooled[:, 1:].transpose(1, 2)
        per_video = max(frames // num_videos, 1)
        return [(importance[v * per_video:(v + 1) * per_video].reshape(-1),
                 keys[v * per_video:(v + 1) * per_video].reshape(-1, keys.shape[-1])) for v in range(num_videos)]


@register_adapter("llava_onevision")
class LlavaOnevisionAdapter(LlavaVideoAdapter):
    """``LlavaOnevisionForConditionalGeneration`` (video inputs; images are kept untouched)."""

    model_classes: ClassVar[tuple[str, ...]] = ("LlavaOnevisionForConditionalGeneration",)
    extra_tokens: ClassVar[int] = 1

    def pooled_side(self) -> int:
        return math.ceil(self._patch_side() / 2)

    def pool_grid(self, values: torch.Tensor) -> torch.Tensor:
        side = self.pooled_side()
        return nn.functional.interpolate(values, size=[side, side], mode="bilinear")


@register_adapter("llava_next_video")
class LlavaNextVideoAdapter(LlavaVideoAdapter):
    """``LlavaNextVideoForConditionalGeneration`` (video inputs; images are kept untouched)."""

    model_classes: ClassVar[tuple[str, ...]] = ("LlavaNextVideoForConditionalGeneration",)

    def pooled_side(self) -> int:
        return self._patch_side() // int(self.model.config.spatial_pool_stride)

    def pool_grid(self, values: torch.Tensor) -> torch.Tensor:
        # average pooling (a 'max' or 'conv' pooler is approximated by the average)
        stride = int(self.model.config.spatial_pool_stride)
        return nn.functional.avg_pool2d(values, kernel_size=stride, stride=stride)
