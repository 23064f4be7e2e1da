"""VideoLLaMA3: ``(T, H, W)`` patch grids with a merge size per item, and the processor's own token
compression.

Each image and video comes with a patch grid (``image_grid_thw`` / ``video_grid_thw``) and a merge
size (``image_merge_sizes`` / ``video_merge_sizes``; the released processor merges video frames 2x2
and images not at all). The LLM grid is ``(T, H / m, W / m)``; a video's frames follow their
``Time t:`` text. The processor may already drop video tokens that repeat the previous frame
(``video_compression_mask``, VideoLLaMA3's differential frame pruning): those grid positions have no
token, are never valid for a reducer, and ratio budgets refer to the tokens the video has left.
Encoder signals are pooled onto the LLM grid by the bilinear resize the model uses. Position ids are
1-D.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from tokenreduce.adapters import hf
from tokenreduce.adapters.encoder import EncoderRecord, packed_patch_signals, split_signals, stack_signals
from tokenreduce.adapters.grid_thw import GridThwFamily
from tokenreduce.adapters.media import MediaItem
from tokenreduce.registry import register_adapter

COMPRESSION_MASK = "video_compression_mask"


@register_adapter("video_llama3")
class VideoLlama3Adapter(GridThwFamily):
    """VideoLLaMA3 (videos, also after its own token compression, and images)."""

    model_classes: ClassVar[tuple[str, ...]] = ("VideoLlama3ForConditionalGeneration",)
    position_rows: ClassVar[int | None] = None
    vision_tower_path: ClassVar[str | None] = "model.vision_model"
    vision_blocks_path: ClassVar[str] = "encoder.layers"
    vision_attention_name: ClassVar[str] = "self_attn"

    def encoder_call_info(self, args: tuple, kwargs: dict[str, Any]) -> Any:
        """The tower call's ``(grid_thw, merge_sizes)``."""
        return kwargs.get("grid_thw", args[1] if len(args) > 1 else None), kwargs.get(
            "merge_sizes", args[2] if len(args) > 2 else None)

    def recorded_grids(self, record: EncoderRecord) -> tuple[torch.Tensor, list[int]]:
        grids, merges = record.info
        return grids, (grids.prod(-1) // merges ** 2).tolist()

    def merge_sizes(self, call: dict[str, Any], modality: str) -> list[int]:
        merges = call.get(f"{modality}_merge_sizes")
        if merges is None:
            record = self.capture.find(hf.encoded_media(call, modality)) if self.capture is not None else None
            merges = None if record is None else record.info[1]
        if merges is None:
            raise ValueError(f"token reduction on VideoLLaMA3 {modality} inputs needs {modality}_merge_sizes")
        return merges.tolist()

    def media_items(self, call: dict[str, Any], modality: str, embeds: torch.Tensor) -> list[MediaItem]:
        grids = self.patch_grids(call, modality).tolist()
        merges = self.merge_sizes(call, modality)
        llm = [(t, h // m, w // m) for (t, h, w), m in zip(grids, merges)]
        compression = call.get(COMPRESSION_MASK) if modality == "video" else None
        if compression is None:
            return [MediaItem.grid(modality, grid) for grid in llm]
        masks = compression.cpu().split([t * h * w for t, h, w in llm])
        return [MediaItem.present(modality, grid, mask) for grid, mask in zip(llm, masks)]

    def encoder_token_signals(self, record: EncoderRecord, layer: int, modality: str,
                              call: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = self.capture.layer_inputs(record, layer)
        importance, keys = packed_patch_signals(self.vision_attention_of(self.vision_blocks()[layer]), inputs)
        values, pooled = stack_signals(importance, keys), []
        grids, merges = record.info
        for chunk, (t, h, w), m in zip(values.split(grids.prod(-1).tolist()), grids.tolist(), merges.tolist()):
            # the tower's patch order groups m x m windows; back to (t, h, w), then the model's bilinear resize
            image = chunk.view(t, h // m, w // m, m, m, -1).permute(0, 1, 3, 2, 4, 5).reshape(t, h, w, -1)
            resized = nn.functional.interpolate(image.permute(0, 3, 1, 2), size=(h // m, w // m), mode="bilinear")
            pooled.append(resized.permute(0, 2, 3, 1).reshape(-1, values.shape[-1]))
        pooled = torch.cat(pooled)
        compression = call.get(COMPRESSION_MASK) if modality == "video" else None
        if compression is not None:  # the model drops those features before placing the others
            pooled = pooled[compression.to(pooled.device)]
        return split_signals(pooled)
