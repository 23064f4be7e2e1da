"""Random-weight Qwen2-VL-style models and video prompts for the end-to-end benchmark.

No weights are downloaded: the model is ``Qwen2VLForConditionalGeneration`` built from a config
with seeded random weights. Speed and memory do not depend on the weights' values, only on the
shapes, so a random model of a given size costs what a trained one of that size costs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tokenreduce.adapters import hf
from tokenreduce.errors import MissingDependencyError

PATCH = 14  # Qwen2-VL vision patch side (pixels)
TEMPORAL_PATCH = 2  # frames per vision patch
MERGE = 2  # spatial merge of the patch merger (2x2 patches -> one LLM token)
TEXT_TOKENS = 32  # prompt text around the video (half before, half after)
VIDEO_TOKEN_ID = 5  # placeholder id of video tokens in the random vocabulary


@dataclass(frozen=True)
class ModelSize:
    """The shape of a benchmark model (decoder hidden size, layers, heads; vision tower)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    vision_depth: int
    vision_dim: int
    vision_heads: int


SIZES: dict[str, ModelSize] = {
    # for tests: a few hundred thousand parameters
    "tiny": ModelSize(hidden=64, layers=4, heads=4, kv_heads=2, intermediate=128, vocab=512,
                      vision_depth=1, vision_dim=32, vision_heads=2),
    # ~59 M parameters
    "small": ModelSize(hidden=512, layers=8, heads=8, kv_heads=2, intermediate=1408, vocab=32000,
                       vision_depth=2, vision_dim=256, vision_heads=4),
    # ~137 M parameters: a scaled-down Qwen2-VL (same block types, GQA, M-RoPE)
    "base": ModelSize(hidden=768, layers=12, heads=12, kv_heads=2, intermediate=2304, vocab=32000,
                      vision_depth=2, vision_dim=384, vision_heads=6),
}


def _transformers():
    try:
        import transformers
    except ImportError:
        raise MissingDependencyError("the end-to-end benchmark needs transformers: "
                                     "pip install 'tokenreduce[bench]'") from None
    return transformers


def qwen2_vl_config(size: str):
    """A ``Qwen2VLConfig`` of one of ``SIZES`` (M-RoPE sections fitted to the head size)."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, got {size!r}")
    s = SIZES[size]
    half = s.hidden // s.heads // 2
    section = [half - 2 * (half * 3 // 8), half * 3 // 8, half * 3 // 8]
    transformers = _transformers()
    return transformers.Qwen2VLConfig(
        text_config={
            "hidden_size": s.hidden, "num_hidden_layers": s.layers, "num_attention_heads": s.heads,
            "num_key_value_heads": s.kv_heads, "intermediate_size": s.intermediate, "vocab_size": s.vocab,
            "max_position_embeddings": 32768, "bos_token_id": 1, "eos_token_id": 2,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": section},
        },
        vision_config={
            "depth": s.vision_depth, "embed_dim": s.vision_dim, "num_heads": s.vision_heads,
            "hidden_size": s.hidden, "patch_size": PATCH, "temporal_patch_size": TEMPORAL_PATCH,
            "spatial_merge_size": MERGE,
        },
        video_token_id=VIDEO_TOKEN_ID, image_token_id=VIDEO_TOKEN_ID + 1,
        vision_start_token_id=VIDEO_TOKEN_ID + 2, vision_end_token_id=VIDEO_TOKEN_ID + 3,
    )


def build_model(size: str, device: str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0):
    """A seeded random-weight ``Qwen2VLForConditionalGeneration`` of ``size``, in eval mode."""
    transformers = _transformers()
    torch.manual_seed(seed)
    config = qwen2_vl_config(size)
    hf.set_attention_implementation(config, "sdpa")
    model = transformers.Qwen2VLForConditionalGeneration(config)
    return model.to(device=device, dtype=dtype).eval()


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass(frozen=True)
class VideoPrompt:
    """Model inputs for one video prompt and where its visual tokens sit."""

    inputs: dict[str, torch.Tensor]
    grid: tuple[int, int, int]  # (T, H, W) of the LLM's visual tokens

    @property
    def visual_tokens(self) -> int:
        t, h, w = self.grid
        return t * h * w


def video_prompt(frames: int, resolution: int, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 seed: int = 0) -> VideoPrompt:
    """Random pixels for ``frames`` frames of ``resolution`` x ``resolution`` pixels in a text prompt.

    The LLM sees ``frames / 2`` token frames of ``(resolution / 28)^2`` tokens each (Qwen2-VL's
    temporal patch of 2 frames and 2x2 patch merge).
    """
    if frames < TEMPORAL_PATCH or frames % TEMPORAL_PATCH:
        raise ValueError(f"frames must be a positive multiple of {TEMPORAL_PATCH}, got {frames}")
    if resolution < PATCH * MERGE or resolution % (PATCH * MERGE):
        raise ValueError(f"resolution must be a positive multiple of {PATCH * MERGE}, got {resolution}")
    generator = torch.Generator().manual_seed(seed)
    t, side = frames // TEMPORAL_PATCH, resolution // PATCH
    patches = t * side * side
    pixels = torch.randn(patches, 3 * TEMPORAL_PATCH * PATCH * PATCH, generator=generator)
    visual = t * (side // MERGE) ** 2
    half = TEXT_TOKENS // 2
    text = torch.randint(VIDEO_TOKEN_ID + 4, 500, (TEXT_TOKENS,), generator=generator)
    ids = torch.cat([text[:half], torch.full((visual,), VIDEO_TOKEN_ID), text[half:]]).unsqueeze(0)
    types = (ids == VIDEO_TOKEN_ID).int() * 2
    inputs = {
        hf.INPUT_IDS: ids, hf.ATTENTION_MASK: torch.ones_like(ids), hf.MM_TOKEN_TYPE_IDS: types,
        hf.PIXEL_VALUES_VIDEOS: pixels.to(dtype), hf.VIDEO_GRID_THW: torch.tensor([[t, side, side]]),
    }
    return VideoPrompt({k: v.to(device) for k, v in inputs.items()}, (t, side // MERGE, side // MERGE))
