"""``visualize --model``: each strategy inside the checkpoint's whole model, drawn from its record.

The frames become the model's own video input (Qwen2-VL family: its image processor's patches of
consecutive frames paired into temporal patches, as its video processor pairs them), followed by
the end-of-vision token; ``tr.apply`` runs every strategy in the model, and each row of the table and
picture is the session's record of that run (``StrategyRun.from_record``): what the model's own
attention and features kept, with the roles the steps gave, no proxies. The query whose attention
in-LLM strategies read is the end-of-vision token (there is no question).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import tokenreduce as tr
from tokenreduce.adapters import hf
from tokenreduce.compare import StrategyRun, build_at_ratio, label_of
from tokenreduce.encoders import VisionTowerEncoder
from tokenreduce.errors import TokenReduceError


def video_inputs(tower: VisionTowerEncoder, frames: np.ndarray) -> tuple[dict[str, torch.Tensor], list[int]]:
    """The model inputs of ``frames`` as one video, and the frame shown for each token row (the first
    of its temporal patch; frames past the last whole temporal patch are left out)."""
    config = tower.model.config
    temporal = int(getattr(tower.processor, "temporal_patch_size", 0) or 0)
    video_token = getattr(config, "video_token_id", None)
    if temporal < 1 or video_token is None or getattr(config, "vision_end_token_id", None) is None:
        raise TokenReduceError(f"{tower.name}: visualize --model runs the whole model for Qwen2-VL-family "
                               "checkpoints (a temporal patch size and video tokens); use it without --model")
    used = len(frames) - len(frames) % temporal
    if used == 0:
        raise TokenReduceError(f"visualize --model needs at least {temporal} frames (one temporal patch)")
    images = tower.processor(images=list(frames[:used]), return_tensors="pt")
    grid = images["image_grid_thw"]
    per_frame = int(grid[0].prod())
    patches = images["pixel_values"].reshape(used, per_frame, 3, temporal, -1)[:, :, :, 0]  # each image's own slot
    pixels = patches.reshape(used // temporal, temporal, per_frame, 3, -1).permute(0, 2, 3, 1, 4)
    pixels = pixels.reshape((used // temporal) * per_frame, -1).to(tower.model.dtype)
    t, h, w = used // temporal, int(grid[0, 1]), int(grid[0, 2])
    merge = getattr(getattr(config, "vision_config", None), "spatial_merge_size", 1)
    tokens = t * (h // merge) * (w // merge)
    ids = torch.tensor([[config.vision_start_token_id, *[video_token] * tokens, config.vision_end_token_id]])
    inputs = {hf.INPUT_IDS: ids, hf.ATTENTION_MASK: torch.ones_like(ids),
              hf.MM_TOKEN_TYPE_IDS: (ids == video_token).int() * 2,
              hf.PIXEL_VALUES_VIDEOS: pixels, hf.VIDEO_GRID_THW: torch.tensor([[t, h, w]])}
    return inputs, list(range(0, used, temporal))


def run_in_model(tower: VisionTowerEncoder, inputs: dict[str, Any], specs: Sequence[str | Path | dict[str, Any]],
                 ratio: float | None) -> tuple[list[StrategyRun], list[tuple[str, str]]]:
    """Every spec at ``ratio`` (``build_at_ratio``) inside the model: the runs, from the sessions'
    records, and ``(spec, reason)`` for those the model cannot run."""
    runs, skipped = [], []
    for spec in specs:
        reducer = build_at_ratio(spec, ratio)
        try:
            with torch.no_grad(), tr.apply(tower.model, reducer) as session:
                tower.model(**inputs)
        except (tr.TokenReduceError, NotImplementedError) as exc:
            skipped.append((str(spec), str(exc)))
            continue
        runs.append(StrategyRun.from_record(label_of(spec, reducer), session.last.videos[0]))
    return runs, skipped
