"""The stand-in encoder, the contrast proxy and a checkpoint's vision tower (tokenreduce.encoders)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tokenreduce.encoders import StandInEncoder, VisionTowerEncoder, grid_for, patch_contrast
from tokenreduce.errors import TokenReduceError


def random_frames(t=3, height=24, width=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (t, height, width, 3), dtype=np.uint8)


def test_grid_follows_the_aspect_ratio():
    assert grid_for(720, 1280, 16) == (9, 16)
    assert grid_for(480, 640, 4) == (3, 4)
    assert grid_for(10, 1000, 4) == (1, 4)


def test_features_are_the_projection_of_centred_patch_pixels():
    # frames exactly rows*8 x cols*8, so the area resize is the identity and the oracle is explicit
    frames = random_frames(2, 24, 32)
    encoder = StandInEncoder(cols=4, dim=16, pixels=8, seed=3)
    encoded = encoder.encode(frames)
    assert encoded.features.shape == (1, 2, 3, 4, 16)
    for t in range(2):
        for r in range(3):
            for c in range(4):
                patch = frames[t, 8 * r:8 * r + 8, 8 * c:8 * c + 8].astype(np.float64) / 255.0 - 0.5
                describe = np.concatenate([patch.transpose(2, 0, 1).reshape(-1), [0.25]])
                expected = torch.from_numpy(describe).float() @ encoder.projection
                torch.testing.assert_close(encoded.features[0, t, r, c], expected, atol=1e-4, rtol=1e-4)


def test_same_seed_same_features_and_identical_patches_identical_features():
    frame = random_frames(1)
    frames = np.concatenate([frame, frame])
    a = StandInEncoder(cols=4, seed=1).encode(frames).features
    b = StandInEncoder(cols=4, seed=1).encode(frames).features
    assert torch.equal(a, b)
    assert torch.equal(a[0, 0], a[0, 1])
    assert not torch.equal(a, StandInEncoder(cols=4, seed=2).encode(frames).features)


def test_a_change_moves_only_the_changed_patches():
    frames = np.repeat(random_frames(1), 2, axis=0)
    frames[1, :8, :8] = 255 - frames[1, :8, :8]  # change the top-left patch of the second frame
    features = StandInEncoder(cols=4, dim=64).encode(frames).features[0]
    similarity = torch.nn.functional.cosine_similarity(features[0], features[1], dim=-1)
    assert similarity[0, 0] < 0.5
    similarity[0, 0] = 1.0
    torch.testing.assert_close(similarity, torch.ones(3, 4))


def test_flat_grey_patches_do_not_give_zero_vectors():
    frames = np.full((1, 24, 32, 3), 128, dtype=np.uint8)
    features = StandInEncoder(cols=4).encode(frames).features
    assert bool((features.norm(dim=-1) > 0.01).all())


def test_patch_contrast_is_the_grey_level_standard_deviation():
    frames = random_frames(2, 16, 24)
    contrast = patch_contrast(frames, 2, 3)
    grey = (0.299 * frames[..., 0] + 0.587 * frames[..., 1] + 0.114 * frames[..., 2]) / 255.0
    for t in range(2):
        for r in range(2):
            for c in range(3):
                expected = grey[t, 8 * r:8 * r + 8, 8 * c:8 * c + 8].std()
                assert float(contrast[t, r, c]) == pytest.approx(expected, abs=1e-5)
    flat = np.full((1, 16, 24, 3), 77, dtype=np.uint8)
    assert float(patch_contrast(flat, 2, 3).abs().max()) < 1e-6


def test_encoded_video_lists_its_proxies():
    encoded = StandInEncoder(cols=4).encode(random_frames())
    assert encoded.proxies == {"importance": "patch contrast", "keys": "features"}
    assert encoded.importance.shape == (1, 3, 3, 4)
    assert encoded.grid == (3, 3, 4)


@pytest.mark.parametrize("kwargs", [{"cols": 0}, {"dim": -1}, {"pixels": 1.5}])
def test_bad_encoder_settings_name_the_argument(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        StandInEncoder(**kwargs)


def test_bad_frames_are_rejected():
    with pytest.raises(ValueError, match="frames"):
        StandInEncoder().encode(np.zeros((4, 4, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from transformers import Qwen2VLImageProcessorPil

    from tokenreduce.bench.model import build_model

    path = tmp_path_factory.mktemp("tiny-qwen2-vl")
    build_model("tiny").save_pretrained(path)
    Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112).save_pretrained(path)
    return path


def test_vision_tower_features_are_the_models_own(tiny_checkpoint):
    from transformers import AutoModelForImageTextToText, Qwen2VLImageProcessorPil

    frames = random_frames(3, 72, 128)
    encoded = VisionTowerEncoder(tiny_checkpoint).encode(frames)
    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint).eval()
    processor = Qwen2VLImageProcessorPil.from_pretrained(tiny_checkpoint)
    t, rows, cols = encoded.grid
    assert t == 3 and encoded.features.shape[-1] == model.config.text_config.hidden_size
    assert encoded.num_layers == model.config.text_config.num_hidden_layers
    for i in range(3):  # one frame at a time, straight through the model
        inputs = processor(images=[frames[i]], return_tensors="pt")
        with torch.no_grad():
            tokens = model.get_image_features(**inputs).pooler_output[0]
        torch.testing.assert_close(encoded.features[0, i].reshape(rows * cols, -1), tokens.float())


def test_model_path_errors_are_clear(tmp_path):
    with pytest.raises(TokenReduceError, match="not a directory"):
        VisionTowerEncoder(tmp_path / "missing")
    with pytest.raises(TokenReduceError, match="cannot load"):
        VisionTowerEncoder(tmp_path)


def test_the_whole_models_video_input_pairs_consecutive_frames(tiny_checkpoint):
    from tokenreduce.model_showcase import video_inputs

    tower = VisionTowerEncoder(tiny_checkpoint)
    still = random_frames(2, 72, 128, seed=4)
    # a still pair is what the image processor makes of one image (it repeats it over the temporal patch)
    inputs, rows = video_inputs(tower, np.stack([still[0], still[0], still[1], still[1], still[1]]))
    images = tower.processor(images=list(still), return_tensors="pt")
    assert rows == [0, 2]  # the fifth frame makes no whole temporal patch
    torch.testing.assert_close(inputs["pixel_values_videos"], images["pixel_values"])
    t, h, w = inputs["video_grid_thw"][0].tolist()
    assert (t, h, w) == (2, *images["image_grid_thw"][0, 1:].tolist())
    ids = inputs["input_ids"][0]
    assert int((ids == tower.model.config.video_token_id).sum()) == t * (h // 2) * (w // 2)
    assert ids[-1] == tower.model.config.vision_end_token_id
    moving = video_inputs(tower, random_frames(2, 72, 128, seed=5))[0]["pixel_values_videos"]
    slots = moving.reshape(moving.shape[0], 3, 2, -1)
    assert not torch.equal(slots[:, :, 0], slots[:, :, 1])  # two different frames in one temporal patch


def test_the_whole_model_needs_a_whole_temporal_patch(tiny_checkpoint):
    from tokenreduce.model_showcase import video_inputs

    tower = VisionTowerEncoder(tiny_checkpoint)
    with pytest.raises(TokenReduceError, match="at least 2 frames"):
        video_inputs(tower, random_frames(1, 72, 128))
