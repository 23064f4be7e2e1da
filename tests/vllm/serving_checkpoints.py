"""Tiny random-weight Qwen2.5-VL, Qwen3-VL and Qwen3.5 checkpoints that both vLLM and transformers load, and videos.

A checkpoint folder holds the model (built from a config, seeded), the offline byte-level BPE tokenizer
and ChatML template of ``tests/tiny_checkpoints.py``, and the model's processor with small pixel limits
(vLLM profiles with the processor's largest inputs). The language model has 64-wide attention heads, a
size vLLM's CPU attention kernels take. Nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tiny_checkpoints import QWEN_SPECIAL, chat_template, train_tokenizer

VIDEO_PLACEHOLDER = "<|vision_start|><|video_pad|><|vision_end|>"
IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"

#: The test videos: 8 frames at 2 fps, T = 4 temporal patches of 2 frames.
NUM_FRAMES = 8
FPS = 2.0


#: Language-model sizes: ``tiny`` for the tests, ``bench`` (~23 M parameters) where the language model's share
#: of the time to first token should be visible (benchmarks/serving_vllm.py).
SIZES = {"tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1),
         "bench": dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
                       num_key_value_heads=2)}


@dataclass(frozen=True)
class TinyModel:
    """A saved checkpoint and the video frame size its processor keeps unresized."""

    name: str
    path: Path
    frame_size: tuple[int, int]  # (height, width) in pixels


def _tokenizer():
    tokenizer = train_tokenizer(QWEN_SPECIAL)
    tokenizer.chat_template = chat_template(IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER)
    return tokenizer


def _text_config(tokenizer, size: str, **extra) -> dict:
    return dict(vocab_size=len(tokenizer), **SIZES[size], head_dim=64, max_position_embeddings=8192,
                rms_norm_eps=1e-6, bos_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                tie_word_embeddings=False, **extra)


def _special_ids(tokenizer) -> dict:
    ids = tokenizer.convert_tokens_to_ids
    return dict(image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))


def build_qwen2_5_vl(path: Path, size: str = "tiny", frame_size: tuple[int, int] = (112, 168)) -> TinyModel:
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor,
                              Qwen2VLImageProcessor, Qwen2VLVideoProcessor)

    tokenizer = _tokenizer()
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [8, 12, 12]}
    config = Qwen2_5_VLConfig(
        text_config=_text_config(tokenizer, size, rope_parameters=rope),
        vision_config=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
                           out_hidden_size=SIZES[size]["hidden_size"], window_size=56, fullatt_block_indexes=[1],
                           tokens_per_second=1),
        **_special_ids(tokenizer))
    pixels = {"min_pixels": 28 * 28, "max_pixels": frame_size[0] * frame_size[1]}
    processor = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(**pixels),
                                    video_processor=Qwen2VLVideoProcessor(**pixels), tokenizer=tokenizer,
                                    chat_template=tokenizer.chat_template)
    _save(Qwen2_5_VLForConditionalGeneration, config, tokenizer, processor, path)
    return TinyModel("qwen2_5_vl", path, frame_size)


def _qwen3_vl_processor(tokenizer):
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

    # Qwen3-VL normalises images and videos alike (mean = std = 0.5); vLLM normalises both on the device
    # with the image processor's constants, so they must be the video processor's too
    image_processor = Qwen2VLImageProcessor(patch_size=16, min_pixels=32 * 32, max_pixels=128 * 192,
                                            image_mean=[0.5] * 3, image_std=[0.5] * 3)
    video_processor = Qwen3VLVideoProcessor(size={"shortest_edge": 32 * 32, "longest_edge": NUM_FRAMES * 128 * 192},
                                            fps=FPS)
    return Qwen3VLProcessor(image_processor=image_processor, video_processor=video_processor,
                            tokenizer=tokenizer, chat_template=tokenizer.chat_template)


#: The Qwen3-VL vision tower of both Qwen3 checkpoints: 16-pixel patches, 128 x 192 frames -> 4 x 6 LLM tokens.
QWEN3_VISION = dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, patch_size=16, spatial_merge_size=2,
                    temporal_patch_size=2, in_channels=3, out_hidden_size=128, num_position_embeddings=64)
QWEN3_ROPE = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [8, 12, 12], "mrope_interleaved": True}


def build_qwen3_vl(path: Path) -> TinyModel:
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    tokenizer = _tokenizer()
    config = Qwen3VLConfig(text_config=_text_config(tokenizer, "tiny", rope_parameters=QWEN3_ROPE),
                           vision_config=dict(QWEN3_VISION, deepstack_visual_indexes=[0]), **_special_ids(tokenizer))
    _save(Qwen3VLForConditionalGeneration, config, tokenizer, _qwen3_vl_processor(tokenizer), path)
    return TinyModel("qwen3_vl", path, (128, 192))


def build_qwen3_5(path: Path) -> TinyModel:
    """Qwen3.5's hybrid decoder: a Gated-DeltaNet (linear-attention) layer, then a full-attention one.
    vLLM's CPU Gated-DeltaNet kernel takes bfloat16 only, so this checkpoint is served in bfloat16."""
    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration

    tokenizer = _tokenizer()
    text = _text_config(tokenizer, "tiny", rope_parameters=dict(QWEN3_ROPE, partial_rotary_factor=1.0),
                        layer_types=["linear_attention", "full_attention"], linear_num_value_heads=2,
                        linear_num_key_heads=2, linear_key_head_dim=64, linear_value_head_dim=64,
                        linear_conv_kernel_dim=4)
    config = Qwen3_5Config(text_config=text, vision_config=QWEN3_VISION, **_special_ids(tokenizer))
    _save(Qwen3_5ForConditionalGeneration, config, tokenizer, _qwen3_vl_processor(tokenizer), path)
    return TinyModel("qwen3_5", path, (128, 192))


def _save(model_cls, config, tokenizer, processor, path: Path) -> None:
    torch.manual_seed(0)
    model = model_cls(config).eval()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    processor.save_pretrained(path)


BUILDERS = {"qwen2_5_vl": build_qwen2_5_vl, "qwen3_vl": build_qwen3_vl, "qwen3_5": build_qwen3_5}


def moving_square_video(frame_size: tuple[int, int], seed: int = 0, noise: float = 0.0,
                        num_frames: int = NUM_FRAMES) -> np.ndarray:
    """``num_frames`` uint8 frames ``[T, H, W, 3]``: a textured background, the same in every frame up to
    per-frame noise of standard deviation ``noise`` (grey levels), and a red square moving right."""
    height, width = frame_size
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 255, size=(height, width, 3)).astype(np.float64)
    jitter = rng.normal(0.0, noise, size=(num_frames, height, width, 3)) if noise else 0.0
    frames = np.clip(background[None] + jitter, 0, 255).astype(np.uint8)
    side = height // 3
    for index in range(num_frames):
        left = (index * (width - side)) // max(num_frames - 1, 1)
        frames[index, side:2 * side, left:left + side] = (230, 20, 20)
    return frames


def video_prompt(question: str = "What happens in this video?") -> str:
    """A one-video user turn and the assistant's start, as the checkpoints' chat template writes it."""
    return f"<|im_start|>user\n{VIDEO_PLACEHOLDER}{question}<|im_end|>\n<|im_start|>assistant\n"


def video_metadata(num_frames: int = NUM_FRAMES) -> dict:
    """The metadata vLLM's Qwen processors need for a pre-sampled numpy video."""
    return {"fps": FPS, "duration": num_frames / FPS, "total_num_frames": num_frames,
            "frames_indices": list(range(num_frames)), "video_backend": "opencv", "do_sample_frames": False}
