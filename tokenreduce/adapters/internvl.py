"""InternVL (2.5, 3, 3.5 in their Hugging Face form): tiles of image tokens, video frames as one-tile images.

InternVL's processor cuts an image into tiles (crops plus a thumbnail) and writes it as one block
``<img> <IMG_CONTEXT>... </img>`` of ``s x s`` tokens per tile (``s = image_size / patch_size *
downsample_ratio``, 16 for InternVL3). A video becomes ``Frame1: <img>...</img>\\nFrame2: <img>...``: one
one-tile block per frame, with a few text tokens between; nothing else in the forward call says which
blocks are frames. The family reads:

* a run of two or more one-tile blocks separated by at most ``frame_gap`` text tokens (default 8, the
  processor's ``\\nFrameN: ``) as one video, grid ``(frames, s, s)``;
* every other block as an image whose tiles are each their own grid ``(1, s, s)`` (the tile mosaic's
  shape is not in the call).

``tr.apply(model, reducer, frame_gap=-1)`` reads every block as an image. The vision tower (InternViT,
CLS token, optional q/k norms) encodes all tiles and frames in one call, in prompt order; an LLM token's
encoder signal is the mean over the 2x2 patches the pixel shuffle concatenates into it. Position ids
are 1-D.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from tokenreduce.adapters import hf
from tokenreduce.adapters.base import ModelAdapter
from tokenreduce.adapters.encoder import EncoderRecord, split_signals, stack_signals, vit_patch_signals
from tokenreduce.adapters.media import MediaItem
from tokenreduce.registry import register_adapter


@dataclass(frozen=True)
class Block:
    """One ``<img>...</img>`` block: its sample, sequence positions and whether it is a video frame."""

    sample: int
    positions: torch.Tensor
    video: int  # index of the video it is a frame of, -1 for an image


@register_adapter("internvl")
class InternVLAdapter(ModelAdapter):
    """InternVL (videos read from runs of one-tile frames; images as one grid per tile)."""

    model_classes: ClassVar[tuple[str, ...]] = ("InternVLForConditionalGeneration",)
    options: ClassVar[tuple[str, ...]] = ("frame_gap",)
    modalities: ClassVar[tuple[str, ...]] = ("image", "video")
    encoder_modalities: ClassVar[tuple[str, ...]] = ("image", "video")
    encoded_as: ClassVar[dict[str, str]] = {"video": "image"}
    vision_tower_path: ClassVar[str | None] = "model.vision_tower"
    vision_blocks_path: ClassVar[str] = "encoder.layer"
    vision_attention_name: ClassVar[str] = "attention"

    def __init__(self, model: nn.Module, frame_gap: int = 8) -> None:
        super().__init__(model)
        if isinstance(frame_gap, bool) or not isinstance(frame_gap, int):
            raise TypeError(f"frame_gap must be an int (text tokens between two frames of a video), got {frame_gap!r}")
        self.frame_gap = frame_gap

    def tile_side(self) -> int:
        """``s``: LLM tokens per tile side."""
        vision = self.model.config.vision_config
        size, patch = vision.image_size, vision.patch_size
        patches = int(size[0] if isinstance(size, (list, tuple)) else size) // int(
            patch[0] if isinstance(patch, (list, tuple)) else patch)
        return round(patches * float(self.model.config.downsample_ratio))

    def blocks(self, call: dict[str, Any]) -> list[Block]:
        """Every image-token block of the call, in sample and sequence order, frames marked by video."""
        tile = self.tile_side() ** 2
        out, videos = [], 0
        for sample, row in enumerate(super().placeholders(call, "image")):
            positions = row.nonzero().flatten().cpu()
            runs = torch.tensor_split(positions, ((positions[1:] - positions[:-1]) > 1).nonzero().flatten() + 1)
            runs = [r for r in runs if r.numel()]
            if any(r.numel() % tile for r in runs):
                raise ValueError(f"an <img> block of InternVL image tokens is not a whole number of {tile}-token tiles")
            frame = [r.numel() == tile for r in runs]
            joined = [i > 0 and frame[i] and frame[i - 1] and int(runs[i][0] - runs[i - 1][-1]) - 1 <= self.frame_gap
                      for i in range(len(runs))]
            for i, run in enumerate(runs):
                in_video = joined[i] or (i + 1 < len(runs) and joined[i + 1])
                if in_video and not joined[i]:
                    videos += 1
                out.append(Block(sample, run, videos - 1 if in_video else -1))
        return out

    # ----- media --------------------------------------------------------------------------------
    def placeholders(self, call: dict[str, Any], modality: str) -> torch.Tensor:
        input_ids = call[hf.INPUT_IDS]
        mask = torch.zeros(input_ids.shape, dtype=torch.bool)
        for block in self.blocks(call):
            if (block.video >= 0) == (modality == "video"):
                mask[block.sample, block.positions] = True
        return mask.to(input_ids.device)

    def feature_placeholders(self, call: dict[str, Any], encoding: str) -> torch.Tensor:
        return super().placeholders(call, "image")  # frames and tiles, all encoded in one call, in order

    def has_media(self, call: dict[str, Any], modality: str) -> bool:
        encoded = call.get(hf.PIXEL_VALUES) is not None or hf.encoded_media(call, "image") is not None
        return encoded and hf.INPUT_IDS in call and any((b.video >= 0) == (modality == "video")
                                                        for b in self.blocks(call))

    def media_items(self, call: dict[str, Any], modality: str, embeds: torch.Tensor) -> list[MediaItem]:
        side = self.tile_side()
        tile = side * side
        blocks = [b for b in self.blocks(call) if (b.video >= 0) == (modality == "video")]
        if modality == "video":
            frames = torch.bincount(torch.tensor([b.video for b in blocks])).tolist()
            return [MediaItem.grid("video", (count, side, side)) for count in frames if count]
        return [MediaItem("image", b.positions.numel(),
                          tuple(((1, side, side), torch.arange(tile) + k * tile)
                                for k in range(b.positions.numel() // tile))) for b in blocks]

    # ----- encoder stage ----------------------------------------------------------------------
    def encoder_token_signals(self, record: EncoderRecord, layer: int, modality: str,
                              call: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = self.capture.layer_inputs(record, layer)
        attention = self.vision_attention_of(self.vision_blocks()[layer])
        importance, keys = vit_patch_signals(attention, inputs, cls_token=True)  # [tiles, P*P], [tiles, P*P, d]
        tiles, patches = importance.shape
        side = round(patches ** 0.5)
        grid = stack_signals(importance, keys).transpose(1, 2).reshape(tiles, -1, side, side)
        factor = side // self.tile_side()  # the pixel shuffle concatenates factor x factor patches
        pooled = nn.functional.avg_pool2d(grid, kernel_size=factor, stride=factor)
        return split_signals(pooled.flatten(2).transpose(1, 2).reshape(-1, grid.shape[1]))
