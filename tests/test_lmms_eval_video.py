"""Frame sampling of the lmms-eval plugin: the right frames, and metadata that says which."""

from __future__ import annotations

from pathlib import Path

import pytest

av = pytest.importorskip("av")
np = pytest.importorskip("numpy")
pytest.importorskip("transformers")

from tokenreduce.integrations.lmms_eval_video import sample_video, uniform_indices

FPS = 10


def write_gray_ramp(path: Path, frames: int) -> None:
    """Frame ``t`` is uniform gray ``8 * t``, so a decoded frame tells its own index."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        stream.options = {"qscale": "1"}
        for t in range(frames):
            pixels = np.full((32, 32, 3), 8 * t, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.mark.parametrize(("total", "wanted"), [(1, 4), (5, 5), (7, 3), (30, 8), (30, 64), (12, 1)])
def test_uniform_indices_match_a_hand_formula(total: int, wanted: int) -> None:
    count = min(total, wanted)
    expected = [int(i * (total - 1) / (count - 1)) if count > 1 else 0 for i in range(count)]
    assert uniform_indices(total, wanted).tolist() == expected


def test_uniform_indices_reject_empty_input() -> None:
    with pytest.raises(ValueError, match="total"):
        uniform_indices(0, 4)
    with pytest.raises(ValueError, match="max_frames"):
        uniform_indices(4, 0)


@pytest.mark.parametrize("max_frames", [4, 9, 30])
def test_sample_video_returns_the_frames_its_metadata_names(tmp_path: Path, max_frames: int) -> None:
    path = tmp_path / "ramp.mp4"
    write_gray_ramp(path, frames=25)
    video, metadata = sample_video(path, max_frames)
    expected = uniform_indices(25, max_frames).tolist()
    assert metadata.frames_indices == expected and metadata.total_num_frames == 25
    assert metadata.fps == FPS and metadata.duration == pytest.approx(2.5)
    assert video.shape == (len(expected), 32, 32, 3) and video.dtype == np.uint8
    levels = video.reshape(len(expected), -1).mean(axis=1) / 8
    assert np.abs(levels - np.array(expected)).max() < 0.5, levels


def test_missing_video_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        sample_video(tmp_path / "nope.mp4", 4)
