"""LLaVA-OneVision (how LLaVA-Video-7B-Qwen2 loads) and LLaVA-NeXT-Video: pooled frame grids and
any-resolution images.

Videos: every frame becomes a pooled ``s x s`` grid (OneVision: bilinear to ``ceil(P/2)``; NeXT-Video:
pooling with ``spatial_pool_stride``, ``P = image_size // patch_size``), and a video's tokens are its
frames in order, so the LLM grid is ``(frames, s, s)``. OneVision appends one ``image_newline`` token
after each video: it is not on the grid and is always kept.

Images (any resolution): the model places the base image, ``P x P`` tokens, then the crops stitched
into one unpadded (OneVision: possibly downscaled) mosaic of ``Hc x Wc`` tokens with an
``image_newline`` token after each row; an image seen as one crop is its ``P x P`` tokens and one
newline. Each of the base image and the mosaic is its own grid (``T = 1``); newlines are off the grid
and always kept. The newline tokens are found by their embedding (exactly the model's
``image_newline``), so the layout needs no image sizes. Position ids are 1-D.

Encoder signals of an image go through the model's own packing: while encoder steps run, the model's
``pack_image_features`` is wrapped on the instance to note how it packed each call (patches per image,
image sizes, options), and the patch signals are packed the same way (unpadding and downscaling
included), with zeros for the newlines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from tokenreduce.adapters import hf
from tokenreduce.adapters.base import ModelAdapter, attribute
from tokenreduce.adapters.encoder import EncoderRecord, stack_signals, split_signals, vit_patch_signals
from tokenreduce.adapters.media import MediaItem
from tokenreduce.registry import register_adapter


@dataclass
class Packing:
    """How the model packed the images of one vision-tower call (``pack_image_features``)."""

    pack: Any  # the model's own packing method
    patches: list[int]  # crops (base image included) per image
    args: tuple
    kwargs: dict[str, Any]


class LlavaVideoAdapter(ModelAdapter):
    """Shared by the LLaVA video families; subclasses give the pooled side, how frames pool, and the
    off-grid tokens after a video."""

    modalities: ClassVar[tuple[str, ...]] = ("image", "video")
    encoder_modalities: ClassVar[tuple[str, ...]] = ("image", "video")
    vision_tower_path: ClassVar[str | None] = "model.vision_tower"
    vision_blocks_path: ClassVar[str] = "encoder.layers"
    vision_attention_name: ClassVar[str] = "self_attn"
    extra_tokens: ClassVar[int] = 0  # off-grid tokens after each video
    newline_path: ClassVar[str] = "model.image_newline"  # the embedding after each row of an image mosaic
    packing_path: ClassVar[str] = "model"  # the module whose pack_image_features packs image crops

    def pooled_side(self) -> int:
        raise NotImplementedError

    def pool_grid(self, values: torch.Tensor) -> torch.Tensor:
        """Patch-grid values ``[F, C, P, P]`` on the pooled grid ``[F, C, s, s]``, pooled as the model pools."""
        raise NotImplementedError

    def patch_side(self) -> int:
        vision = self.model.config.vision_config
        return int(vision.image_size) // int(vision.patch_size)

    def vision_blocks(self) -> nn.ModuleList:
        tower = self.vision_tower
        return getattr(tower, "vision_model", tower).encoder.layers

    # ----- media --------------------------------------------------------------------------------
    def media_items(self, call: dict[str, Any], modality: str, embeds: torch.Tensor) -> list[MediaItem]:
        if modality == "video":
            videos, frames = self._videos_and_frames(call)
            side = self.pooled_side()
            return [MediaItem.grid("video", (frames, side, side), self.extra_tokens)] * videos
        newline = attribute(self.model, self.newline_path).to(embeds.dtype)
        items = []
        for sample, row in enumerate(self.placeholders(call, "image")):
            positions = row.nonzero().flatten()
            is_newline = (embeds[sample, positions.to(embeds.device)] == newline).all(dim=-1).cpu()
            runs = torch.tensor_split(torch.arange(positions.numel()),
                                      ((positions[1:] - positions[:-1]) > 1).nonzero().flatten().cpu() + 1)
            for run in runs:  # a contiguous run of image tokens: one or more images
                items += self._any_resolution_items(is_newline[run])
        return items

    def _any_resolution_items(self, is_newline: torch.Tensor) -> list[MediaItem]:
        """The images of one contiguous run of image tokens: a base grid each, then one newline, or a
        mosaic of rows that each end in a newline."""
        side, items, i, count = self.patch_side(), [], 0, is_newline.numel()
        base = side * side
        newlines = is_newline.nonzero().flatten().tolist()
        while i < count:
            ends = [n for n in newlines if n >= i + base]
            if not ends or bool(is_newline[i:i + base].any()):
                raise ValueError(f"image tokens do not form a {side}x{side} base image followed by newline-ended rows")
            width = ends[0] - (i + base)
            grids = [((1, side, side), torch.arange(base))]
            if width == 0:  # one crop: the base image and one newline
                tokens = base + 1
            else:
                rows = 0
                while rows < len(ends) and ends[rows] == i + base + (rows + 1) * (width + 1) - 1:
                    rows += 1
                tokens, offsets = MediaItem.rows_with_newline("image", (1, rows, width), start=base)
                tokens += base
                grids.append(((1, rows, width), offsets))
            items.append(MediaItem("image", tokens, tuple(grids)))
            i += tokens
        return items

    def _videos_and_frames(self, call: dict[str, Any]) -> tuple[int, int]:
        pixels = call.get(hf.PIXEL_VALUES_VIDEOS)
        if pixels is not None:
            return int(pixels.shape[0]), int(pixels.shape[1])
        features = hf.encoded_features(hf.encoded_media(call, "video"))
        videos, count = int(features.shape[0]), int(features.shape[1]) - self.extra_tokens
        side = self.pooled_side()
        if count % (side * side):
            raise ValueError(f"{count} video tokens per video do not form frames of {side}x{side} pooled tokens")
        return videos, count // (side * side)

    # ----- encoder stage ----------------------------------------------------------------------
    def install(self, session: Any) -> list[Any]:
        if not session.encoder_layers:
            return []

        def noting(pack):
            def packing(image_features, *args, **kwargs):
                if self.capture is not None and self.capture.records:
                    self.capture.records[-1].info = Packing(pack, [int(f.shape[0]) for f in image_features], args,
                                                            kwargs)
                return pack(image_features, *args, **kwargs)
            return packing

        return [hf.wrap_method(attribute(self.model, self.packing_path), hf.PACK_IMAGE_FEATURES, noting)]

    def encoder_token_signals(self, record: EncoderRecord, layer: int, modality: str,
                              call: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = self.capture.layer_inputs(record, layer)
        attention = self.vision_attention_of(self.vision_blocks()[layer])
        has_cls = "CLIP" in type(self.vision_tower).__name__
        if has_cls and self.model.config.vision_feature_select_strategy == "full":
            raise NotImplementedError("encoder steps need the CLS token dropped (vision_feature_select_strategy="
                                      "'default') for CLIP towers")
        importance, keys = vit_patch_signals(attention, inputs, has_cls)  # [F, P*P], [F, P*P, d]
        frames, side = importance.shape[0], self.patch_side()
        if importance.shape[1] != side * side:
            raise ValueError(f"{importance.shape[1]} patches per frame do not form the {side}x{side} patch grid")
        values = stack_signals(importance, keys)  # [F, P*P, 1 + d]
        if modality == "image":
            return self._packed_image_signals(record, values)
        grid = values.transpose(1, 2).reshape(frames, -1, side, side)
        pooled = self.pool_grid(grid).flatten(2).transpose(1, 2)  # [F, s*s, 1 + d]
        videos = self._videos_and_frames(call)[0]
        per_video = pooled.reshape(videos, -1, pooled.shape[-1])
        extra = per_video.new_zeros(videos, self.extra_tokens, pooled.shape[-1])  # the newline after a video
        return split_signals(torch.cat([per_video, extra], dim=1).flatten(0, 1))

    @staticmethod
    def _packed_image_signals(record: EncoderRecord, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The crops' patch signals packed as the model packed their features (zeros for newlines)."""
        packing = record.info
        if not isinstance(packing, Packing):
            raise RuntimeError("the image crops of this vision-tower call were not packed while the reducer was "
                               "applied")
        kwargs = {**packing.kwargs, hf.IMAGE_NEWLINE: values.new_zeros(values.shape[-1])}
        packed = packing.pack(list(values.split(packing.patches)), *packing.args, **kwargs)[0]
        return split_signals(torch.cat(list(packed)))


@register_adapter("llava_onevision")
class LlavaOnevisionAdapter(LlavaVideoAdapter):
    """LLaVA-OneVision (videos; any-resolution images as base and mosaic grids)."""

    model_classes: ClassVar[tuple[str, ...]] = ("LlavaOnevisionForConditionalGeneration",)
    extra_tokens: ClassVar[int] = 1

    def pooled_side(self) -> int:
        return math.ceil(self.patch_side() / 2)

    def pool_grid(self, values: torch.Tensor) -> torch.Tensor:
        side = self.pooled_side()
        return nn.functional.interpolate(values, size=[side, side], mode="bilinear")


@register_adapter("llava_next_video")
class LlavaNextVideoAdapter(LlavaVideoAdapter):
    """LLaVA-NeXT-Video (videos; any-resolution images as base and mosaic grids)."""

    model_classes: ClassVar[tuple[str, ...]] = ("LlavaNextVideoForConditionalGeneration",)

    def pooled_side(self) -> int:
        return self.patch_side() // int(self.model.config.spatial_pool_stride)

    def pool_grid(self, values: torch.Tensor) -> torch.Tensor:
        # average pooling (a 'max' or 'conv' pooler is approximated by the average)
        stride = int(self.model.config.spatial_pool_stride)
        return nn.functional.avg_pool2d(values, kernel_size=stride, stride=stride)
