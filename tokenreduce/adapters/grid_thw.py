"""Families whose processors describe every image and video by a ``(T, H, W)`` patch grid.

Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Qwen3.5, GLM-4.1V/4.5V and VideoLLaMA3 send ``image_grid_thw`` and
``video_grid_thw``; the LLM grid of an item is ``(T, H / m, W / m)`` for merge size ``m`` (an image
has ``T = 1``), and its tokens are the modality's placeholders in grid order (timestamps or
vision-start/end tokens between frames are text and never dropped). When ``generate`` encoded the
media before the prefill, it no longer passes the grids; they are read back from the vision-tower
call that made the features (and, where ``generate`` repeated media for beams, from which of that
call's rows each repeated feature view starts at).

The vision tower is packed (all patches of one call in one sequence); an LLM token's encoder signal
is the mean over the ``m x m`` patches its merger combines (``window_mean``), unless the family pools
differently.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from tokenreduce.adapters import hf
from tokenreduce.adapters.base import ModelAdapter
from tokenreduce.adapters.encoder import EncoderRecord, packed_patch_signals, window_mean
from tokenreduce.adapters.media import Grid, MediaItem


class GridThwFamily(ModelAdapter):
    """Media as ``(T, H, W)`` patch grids merged ``m x m``; M-RoPE position ids; a packed vision tower."""

    modalities: ClassVar[tuple[str, ...]] = ("image", "video")
    encoder_modalities: ClassVar[tuple[str, ...]] = ("image", "video")
    position_rows: ClassVar[int | None] = 3
    vision_tower_path: ClassVar[str | None] = "model.visual"

    def merge_size(self) -> int:
        return int(self.model.config.vision_config.spatial_merge_size)

    def encoder_call_info(self, args: tuple, kwargs: dict[str, Any]) -> Any:
        """The ``grid_thw`` of the tower call."""
        return kwargs.get("grid_thw", args[1] if len(args) > 1 else None)

    # ----- media --------------------------------------------------------------------------------
    def patch_grids(self, call: dict[str, Any], modality: str) -> torch.Tensor:
        """``[n, 3]`` patch grids of the call's items of ``modality``."""
        grids = call.get(hf.grid_argument(modality))
        if grids is None:
            grids = self.encoded_grids(call, modality)
        if grids is None:
            raise ValueError(f"token reduction on {modality} inputs needs input_ids and {hf.grid_argument(modality)} "
                             "to locate their tokens")
        return grids

    def encoded_grids(self, call: dict[str, Any], modality: str) -> torch.Tensor | None:
        """The grids of media ``generate`` encoded before the prefill, read from the recorded tower call.

        Every feature ``generate`` hands over is a view into the tower's output: where it starts tells
        which recorded grid row it begins at; its length, how many consecutive rows it spans (GLM-4V's
        tower sees a video as one row per frame)."""
        encoded = hf.encoded_media(call, modality)
        record = self.capture.find(encoded) if encoded is not None and self.capture is not None else None
        if record is None:
            return None
        rows, sizes = self.recorded_grids(record)
        starts = [0, *torch.tensor(sizes).cumsum(0).tolist()]
        grids = []
        for view in hf.encoded_features(encoded):
            first = starts.index(view.storage_offset() // max(view.stride(0), 1))
            last = starts.index(starts[first] + view.shape[0])
            grids.append(torch.cat([rows[first:last, :1].sum(0), rows[first, 1:]]))
        return torch.stack(grids)

    def recorded_grids(self, record: EncoderRecord) -> tuple[torch.Tensor, list[int]]:
        """The ``[n, 3]`` grid rows of a recorded tower call and the LLM tokens each row makes."""
        return record.info, (record.info.prod(-1) // self.merge_size() ** 2).tolist()

    def llm_grid(self, patch_grid: list[int], modality: str) -> Grid:
        merge = self.merge_size()
        t, h, w = patch_grid
        return int(t), int(h) // merge, int(w) // merge

    def media_items(self, call: dict[str, Any], modality: str, embeds: torch.Tensor) -> list[MediaItem]:
        return [MediaItem.grid(modality, self.llm_grid(row, modality))
                for row in self.patch_grids(call, modality).tolist()]

    # ----- encoder signals ------------------------------------------------------------------------
    def encoder_token_signals(self, record: EncoderRecord, layer: int, modality: str,
                              call: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = self.capture.layer_inputs(record, layer)
        importance, keys = packed_patch_signals(self.vision_attention_of(self.vision_blocks()[layer]), inputs)
        window = self.merge_size() ** 2  # patches per LLM token, consecutive in the tower's order
        return window_mean(importance, window), window_mean(keys, window)
