"""Uniform frame sampling for the lmms-eval plugin, with the metadata processors need.

lmms-eval's own reader returns frames only; Qwen2.5-VL derives its temporal position step and
Qwen3-VL its timestamp tokens from the sampled frames' indices and the video's frame rate, so the
plugin samples frames itself and passes a transformers ``VideoMetadata`` along
(``do_sample_frames=False``: the processor must not sample again).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import av
import numpy as np

from tokenreduce.adapters import hf


def uniform_indices(total: int, max_frames: int) -> np.ndarray:
    """``min(total, max_frames)`` indices spread evenly over ``[0, total - 1]``, both ends kept, rounded
    down as lmms-eval's own readers do."""
    if total < 1:
        raise ValueError(f"a video needs at least one frame, got total={total}")
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    return np.linspace(0, total - 1, min(total, max_frames), dtype=np.int64)


def _decode(path: str, wanted: set[int] | None) -> tuple[list[np.ndarray], int]:
    """RGB frames at ``wanted`` indices (all when ``None``) and the number of frames decoded."""
    frames: list[np.ndarray] = []
    count = 0
    last = max(wanted) if wanted else None
    with av.open(path) as container:
        for index, frame in enumerate(container.decode(video=0)):
            count = index + 1
            if wanted is None or index in wanted:
                frames.append(frame.to_ndarray(format="rgb24"))
            if last is not None and index >= last:
                break
    return frames, count


def sample_video(path: str | Path, max_frames: int) -> tuple[np.ndarray, Any]:
    """``[N, H, W, 3]`` uint8 frames sampled uniformly, and their metadata (indices, fps, size)."""
    path = str(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"video {path!r} does not exist")
    with av.open(path) as container:
        stream = container.streams.video[0]
        total = int(stream.frames or 0)
        fps = float(stream.average_rate) if stream.average_rate else None
    frames: list[np.ndarray] = []
    indices = None
    if total > 0:
        indices = uniform_indices(total, max_frames)
        frames, _ = _decode(path, set(indices.tolist()))
    if indices is None or len(frames) != len(indices):  # the header's frame count is missing or wrong
        every, total = _decode(path, None)
        if total == 0:
            raise ValueError(f"video {path!r} has no decodable frames")
        indices = uniform_indices(total, max_frames)
        frames = [every[i] for i in indices]
    video = np.stack(frames)
    metadata = hf.video_metadata(total_num_frames=total, fps=fps, width=video.shape[2], height=video.shape[1],
                             duration=total / fps if fps else None, video_backend="pyav",
                             frames_indices=indices.tolist())
    return video, metadata
