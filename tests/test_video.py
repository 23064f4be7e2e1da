"""Frame sampling and decoding (tokenreduce.video)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from video_factory import frame_brightness, write_video

from tokenreduce.video import VideoError, demo_video_path, load_video, sample_indices


def test_sample_indices_hand_cases():
    assert sample_indices(10, 5) == [1, 3, 5, 7, 9]
    assert sample_indices(12, 4) == [1, 4, 7, 10]
    assert sample_indices(1, 3) == [0, 0, 0]
    assert sample_indices(3, 5) == [0, 0, 1, 2, 2]


@given(st.integers(1, 2000), st.integers(1, 300))
def test_sample_indices_pick_one_frame_per_equal_slice(total, count):
    indices = sample_indices(total, count)
    assert len(indices) == count
    assert indices == sorted(indices)
    for i, index in enumerate(indices):
        assert 0 <= index < total
        # frame `index` covers [index, index+1); it overlaps the i-th of `count` equal slices
        assert index * count < (i + 1) * total and (index + 1) * count > i * total
    if count <= total:
        assert len(set(indices)) == count


def test_sample_indices_rejects_bad_counts():
    with pytest.raises(VideoError, match="no frames"):
        sample_indices(0, 3)
    with pytest.raises(ValueError, match="count"):
        sample_indices(5, 0)


@pytest.fixture
def clip_path(tmp_path):
    return write_video(tmp_path / "grey.mp4")


def test_load_video_returns_the_sampled_frames(clip_path):
    clip = load_video(clip_path, 4)
    assert clip.indices == (1, 4, 7, 10)
    assert clip.frames.shape == (4, 48, 64, 3) and clip.frames.dtype == np.uint8
    assert clip.total_frames == 12 and clip.fps == 10.0
    means = clip.frames.reshape(4, -1).mean(axis=1)
    np.testing.assert_allclose(means, [frame_brightness(i) for i in clip.indices], atol=4)
    assert clip.timestamps == pytest.approx((0.1, 0.4, 0.7, 1.0))


def test_load_video_resizes_to_max_side_keeping_the_aspect(clip_path):
    assert load_video(clip_path, 2, max_side=32).frames.shape == (2, 24, 32, 3)
    assert load_video(clip_path, 2, max_side=100).frames.shape == (2, 48, 64, 3)  # never enlarged


def test_more_samples_than_frames_repeat_frames_in_order(tmp_path):
    clip = load_video(write_video(tmp_path / "short.mp4", num_frames=3), 5)
    assert clip.indices == (0, 0, 1, 2, 2)
    assert clip.frames.shape[0] == 5


def test_missing_directory_and_garbage_paths_give_clear_errors(tmp_path):
    with pytest.raises(VideoError, match="does not exist"):
        load_video(tmp_path / "nope.mp4", 2)
    with pytest.raises(VideoError, match="not a file"):
        load_video(tmp_path, 2)
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"this is not a video" * 10)
    with pytest.raises(VideoError, match="cannot decode"):
        load_video(garbage, 2)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_num_frames_must_be_a_positive_int(clip_path, bad):
    with pytest.raises(ValueError, match="num_frames"):
        load_video(clip_path, bad)


def test_the_bundled_demo_clip_decodes():
    path = demo_video_path()
    assert path.name == "bigbuckbunny.mp4"
    clip = load_video(path, 3, max_side=320)
    assert clip.total_frames == 132
    assert clip.frames.shape == (3, 180, 320, 3)
    assert clip.frames.std() > 10  # real picture content, not a blank frame
