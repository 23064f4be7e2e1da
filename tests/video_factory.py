"""Small synthetic video files for the tests (written with PyAV)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def frame_brightness(index: int) -> int:
    """Grey level of frame ``index`` in ``write_video`` clips (distinct and far apart for 12 frames)."""
    return (20 * index) % 240


def write_video(path: Path, num_frames: int = 12, width: int = 64, height: int = 48, fps: int = 10) -> Path:
    """An MPEG-4 clip whose frame ``i`` is flat grey ``frame_brightness(i)``."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(num_frames):
            pixels = np.full((height, width, 3), frame_brightness(i), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
