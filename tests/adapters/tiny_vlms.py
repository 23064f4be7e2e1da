"""Tiny random-weight video LLMs built from config objects (no downloads) and matching inputs."""

from __future__ import annotations

import torch

VIDEO, IMAGE, V_START, V_END, PAD = 121, 120, 122, 123, 2


def _text(num_layers=3, **extra):
    return dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=num_layers,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                bos_token_id=0, eos_token_id=1, pad_token_id=PAD, **extra)


def qwen2_vl(attn="sdpa", num_layers=3):
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    cfg = Qwen2VLConfig(
        text_config=_text(num_layers, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                       "mrope_section": [2, 1, 1]}),
        vision_config=dict(depth=2, embed_dim=16, hidden_size=32, num_heads=2, patch_size=2,
                           spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
        image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=V_START, vision_end_token_id=V_END)
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    return Qwen2VLForConditionalGeneration(cfg).eval()


def qwen_video(grid, seed=0):
    """pixel_values_videos and one video_grid_thw row for a (T, H, W) patch grid (T temporal patches)."""
    t, h, w = grid
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(t * h * w, 3 * 2 * 2 * 2, generator=generator), torch.tensor([[t, h, w]])


def qwen_inputs(grids, prompt_lens=(2, 3), seed=0, per_frame=False):
    """A left-padded batch, one video per sample: ``[text] <vs> video <ve> [text]``.

    ``per_frame``: Qwen3-VL layout, each temporal patch as ``<timestamp> <vs> frame <ve>``.
    """
    rows, pixels, thw = [], [], []
    for i, grid in enumerate(grids):
        pv, g = qwen_video(grid, seed + i)
        n = grid[0] * grid[1] * grid[2] // 4
        text_a = list(range(5, 5 + prompt_lens[0] + i))
        text_b = list(range(40, 40 + prompt_lens[1]))
        if per_frame:
            frame = n // grid[0]
            video = [tok for f in range(grid[0]) for tok in [60 + f, V_START, *[VIDEO] * frame, V_END]]
        else:
            video = [V_START] + [VIDEO] * n + [V_END]
        rows.append(text_a + video + text_b)
        pixels.append(pv)
        thw.append(g)
    length = max(map(len, rows))
    ids = torch.full((len(rows), length), PAD)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, length - len(row):] = torch.tensor(row)
        mask[b, length - len(row):] = 1
    out = dict(input_ids=ids, attention_mask=mask, pixel_values_videos=torch.cat(pixels),
               video_grid_thw=torch.cat(thw), mm_token_type_ids=(ids == VIDEO).int() * 2)
    return out


def sample_of(inputs, b, family="qwen"):
    """Sample ``b`` of a batch built by ``qwen_inputs``, without its padding."""
    keep = inputs["attention_mask"][b].bool()
    thw = inputs["video_grid_thw"]
    sizes = thw.prod(-1).tolist()
    start = sum(sizes[:b])
    return dict(input_ids=inputs["input_ids"][b:b + 1, keep], attention_mask=inputs["attention_mask"][b:b + 1, keep],
                pixel_values_videos=inputs["pixel_values_videos"][start:start + sizes[b]],
                video_grid_thw=thw[b:b + 1], mm_token_type_ids=inputs["mm_token_type_ids"][b:b + 1, keep])


def qwen2_5_vl(attn="sdpa", num_layers=3):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    cfg = Qwen2_5_VLConfig(
        text_config=_text(num_layers, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                       "mrope_section": [2, 1, 1]}),
        vision_config=dict(depth=2, hidden_size=16, intermediate_size=32, num_heads=2, patch_size=2,
                           spatial_merge_size=2, temporal_patch_size=2, in_channels=3, out_hidden_size=32,
                           window_size=8, fullatt_block_indexes=[1]),
        image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=V_START, vision_end_token_id=V_END)
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    return Qwen2_5_VLForConditionalGeneration(cfg).eval()


def qwen3_vl(attn="sdpa", num_layers=3):
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    cfg = Qwen3VLConfig(
        text_config=dict(_text(num_layers), head_dim=8,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                          "mrope_section": [2, 1, 1], "mrope_interleaved": True}),
        vision_config=dict(depth=2, hidden_size=16, intermediate_size=32, num_heads=2, patch_size=2,
                           spatial_merge_size=2, temporal_patch_size=2, in_channels=3, out_hidden_size=32,
                           num_position_embeddings=64, deepstack_visual_indexes=[0, 1]),
        image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=V_START, vision_end_token_id=V_END)
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    return Qwen3VLForConditionalGeneration(cfg).eval()


def _vision_siglip():
    return dict(model_type="siglip_vision_model", hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                num_attention_heads=2, image_size=8, patch_size=2, num_channels=3)


def _vision_clip(image_size=16):
    """A CLIP tower: a CLS token in front of the ``(image_size / 2)^2`` patches of a frame."""
    return dict(model_type="clip_vision_model", hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                num_attention_heads=2, image_size=image_size, patch_size=2, num_channels=3)


def llava_onevision(attn="sdpa", num_layers=3):
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    cfg = LlavaOnevisionConfig(
        text_config=dict(_text(num_layers), model_type="qwen2"), vision_config=_vision_siglip(),
        image_token_index=IMAGE, video_token_index=VIDEO, vision_feature_select_strategy="full",
        vision_feature_layer=-1)
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    return LlavaOnevisionForConditionalGeneration(cfg).eval()


def llava_next_video(attn="sdpa", num_layers=3, tower="siglip"):
    """LLaVA-NeXT-Video, frames pooled 2x2. ``tower="siglip"``: every patch feature of the last
    layer goes to the projector. ``tower="clip"``: a CLIP tower as released: CLS dropped before the
    projector (``vision_feature_select_strategy="default"``), features of the second-to-last layer,
    16x16 frames = 8x8 patches pooled to a 4x4 LLM grid."""
    from transformers import LlavaNextVideoConfig, LlavaNextVideoForConditionalGeneration

    clip = tower == "clip"
    cfg = LlavaNextVideoConfig(
        text_config=dict(_text(num_layers), model_type="llama"),
        vision_config=_vision_clip() if clip else _vision_siglip(),
        image_token_index=IMAGE, video_token_index=VIDEO,
        vision_feature_select_strategy="default" if clip else "full",
        vision_feature_layer=-2 if clip else -1, spatial_pool_stride=2)
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    return LlavaNextVideoForConditionalGeneration(cfg).eval()


def llava_inputs(frames_list, side, extra, seed=0, pixels_side=8):
    """A left-padded batch, one video per sample with ``frames`` frames of ``pixels_side`` pixels square."""
    rows, pixels = [], []
    for i, frames in enumerate(frames_list):
        generator = torch.Generator().manual_seed(seed + i)
        pixels.append(torch.randn(1, frames, 3, pixels_side, pixels_side, generator=generator))
        rows.append(list(range(5, 7 + i)) + [VIDEO] * (frames * side * side + extra) + list(range(40, 43)))
    length = max(map(len, rows))
    ids = torch.full((len(rows), length), PAD)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, length - len(row):] = torch.tensor(row)
        mask[b, length - len(row):] = 1
    if len(set(frames_list)) > 1:
        raise ValueError("videos of one LLaVA batch share a frame count (one pixel_values_videos tensor)")
    return dict(input_ids=ids, attention_mask=mask, pixel_values_videos=torch.cat(pixels))


def llava_sample_of(inputs, b):
    keep = inputs["attention_mask"][b].bool()
    return dict(input_ids=inputs["input_ids"][b:b + 1, keep], attention_mask=inputs["attention_mask"][b:b + 1, keep],
                pixel_values_videos=inputs["pixel_values_videos"][b:b + 1])


def llama(attn="sdpa", num_layers=3):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**_text(num_layers))
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()
