"""Tiny random-weight video LLMs built from config objects (no downloads) and matching inputs.

Every model family has a builder ``family(attn="sdpa", num_layers=3)``: 2-3 layers, hidden size 32.
``prompt(style, samples)`` makes a left-padded batch with videos and images laid out the way the
family's processor lays them out, and returns it with the ground truth of where each grid's tokens are
(``Grid`` entries, sample-major, in sequence order), written down independently of the adapters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

VIDEO, IMAGE, V_START, V_END, PAD = 121, 120, 122, 123, 2
V_BEGIN, V_FINISH = 124, 125  # GLM-4V: begin / end of a video


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


PINPOINTS = [[8, 16], [16, 8], [16, 16]]  # any-resolution crops of the 8x8-pixel tiny towers


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
        vision_feature_layer=-1, image_grid_pinpoints=PINPOINTS)
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
        vision_feature_layer=-2 if clip else -1, spatial_pool_stride=2, image_grid_pinpoints=PINPOINTS)
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


# ----- the families added for Qwen3.5, Qwen3-VL-MoE, GLM-4V, InternVL and VideoLLaMA3 ---------------
MROPE = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1], "mrope_interleaved": True}
QWEN_VISION = dict(depth=2, hidden_size=16, intermediate_size=32, num_heads=2, patch_size=2,
                   spatial_merge_size=2, temporal_patch_size=2, in_channels=3, out_hidden_size=32)
QWEN_TOKENS = dict(image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=V_START,
                   vision_end_token_id=V_END)


def _built(model_class, cfg, attn):
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    return model_class(cfg).eval()


def qwen3_vl_moe(attn="sdpa", num_layers=3):
    from transformers import Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration

    text = dict(_text(num_layers), head_dim=8, rope_parameters=MROPE, num_experts=4, num_experts_per_tok=2,
                moe_intermediate_size=16, decoder_sparse_step=1)
    vision = dict(QWEN_VISION, num_position_embeddings=64, deepstack_visual_indexes=[0, 1])
    return _built(Qwen3VLMoeForConditionalGeneration, Qwen3VLMoeConfig(text_config=text, vision_config=vision,
                                                                         **QWEN_TOKENS), attn)


def _qwen3_5_text(num_layers, linear_per_full=1, **extra):
    """A hybrid decoder: ``linear_per_full`` Gated-DeltaNet (linear-attention) layers, then a full-attention one,
    in turn (the released models: 3)."""
    kinds = (["linear_attention"] * linear_per_full + ["full_attention"]) * num_layers
    return dict(_text(num_layers), head_dim=8, rope_parameters=dict(MROPE, partial_rotary_factor=0.5),
                linear_num_value_heads=2, linear_num_key_heads=2, linear_key_head_dim=8, linear_value_head_dim=8,
                linear_conv_kernel_dim=4, layer_types=kinds[:num_layers], **extra)


def _remembering(model):
    """Slow the Gated-DeltaNet decay (A = 0.01): with the default initialisation (A up to 16) a layer's
    recurrent state forgets all but the last few tokens, which would hide a wrong state after pruning."""
    for layer in model.model.language_model.layers:
        if hasattr(layer, "linear_attn"):
            layer.linear_attn.A_log.data.fill_(-4.6)
    return model


def qwen3_5(attn="sdpa", num_layers=4, linear_per_full=1):
    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration

    cfg = Qwen3_5Config(text_config=_qwen3_5_text(num_layers, linear_per_full),
                        vision_config=dict(QWEN_VISION, num_position_embeddings=64), **QWEN_TOKENS)
    return _remembering(_built(Qwen3_5ForConditionalGeneration, cfg, attn))


def qwen3_5_moe(attn="sdpa", num_layers=4):
    from transformers import Qwen3_5MoeConfig, Qwen3_5MoeForConditionalGeneration

    text = _qwen3_5_text(num_layers, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                         shared_expert_intermediate_size=16)
    cfg = Qwen3_5MoeConfig(text_config=text, vision_config=dict(QWEN_VISION, num_position_embeddings=64),
                           **QWEN_TOKENS)
    return _remembering(_built(Qwen3_5MoeForConditionalGeneration, cfg, attn))


GLM_TOKENS = dict(image_token_id=IMAGE, video_token_id=VIDEO, image_start_token_id=V_START,
                  image_end_token_id=V_END, video_start_token_id=V_BEGIN, video_end_token_id=V_FINISH)
GLM_VISION = dict(depth=2, hidden_size=16, intermediate_size=32, num_heads=2, patch_size=2, image_size=8,
                  spatial_merge_size=2, temporal_patch_size=2, in_channels=3, out_hidden_size=32)
GLM_ROPE = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1], "partial_rotary_factor": 0.5}


def _glm_text(num_layers, **extra):
    """Two query heads of 16 sharing one key head; half of each head rotates (GLM's partial rotary)."""
    return dict(_text(num_layers), num_attention_heads=2, num_key_value_heads=1, rope_parameters=GLM_ROPE, **extra)


def glm4v(attn="sdpa", num_layers=3):
    """GLM-4.1V. Its forward finds video tokens as image tokens, so one batch holds images or videos, not both."""
    from transformers import Glm4vConfig, Glm4vForConditionalGeneration

    cfg = Glm4vConfig(text_config=_glm_text(num_layers), vision_config=GLM_VISION, **GLM_TOKENS)
    return _built(Glm4vForConditionalGeneration, cfg, attn)


def glm4v_moe(attn="sdpa", num_layers=3):
    from transformers import Glm4vMoeConfig, Glm4vMoeForConditionalGeneration

    text = _glm_text(num_layers, head_dim=16, moe_intermediate_size=16, num_experts_per_tok=2, n_routed_experts=4,
                     n_shared_experts=1, first_k_dense_replace=1)
    return _built(Glm4vMoeForConditionalGeneration, Glm4vMoeConfig(text_config=text, vision_config=GLM_VISION,
                                                                     **GLM_TOKENS), attn)


def internvl(attn="sdpa", num_layers=3):
    """InternVL 3: an InternViT with CLS token and q/k norms, 8x8-pixel tiles of 4x4 patches, pixel-shuffled
    to 2x2 LLM tokens per tile."""
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                  image_size=[8, 8], patch_size=[2, 2], use_qk_norm=True)
    cfg = InternVLConfig(text_config=dict(_text(num_layers), model_type="qwen2"), vision_config=vision,
                         image_token_id=IMAGE, image_seq_length=4, vision_feature_layer=-1,
                         vision_feature_select_strategy="default")
    return _built(InternVLForConditionalGeneration, cfg, attn)


def video_llama_3(attn="sdpa", num_layers=3):
    from transformers import VideoLlama3Config, VideoLlama3ForConditionalGeneration

    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=2)
    cfg = VideoLlama3Config(text_config=dict(_text(num_layers), model_type="qwen2"), vision_config=vision,
                            image_token_id=IMAGE, video_token_id=VIDEO)
    return _built(VideoLlama3ForConditionalGeneration, cfg, attn)


def glm46v(attn="sdpa", num_layers=3):
    """GLM-4.6V: GLM-4.1V's text and vision models under another top class."""
    from transformers import Glm46VConfig, Glm46VForConditionalGeneration

    cfg = Glm46VConfig(text_config=_glm_text(num_layers), vision_config=GLM_VISION, **GLM_TOKENS)
    return _built(Glm46VForConditionalGeneration, cfg, attn)


# ----- prompts with videos and images ---------------------------------------------------------------
@dataclass(frozen=True)
class Grid:
    """Ground truth of one grid: its sample, modality, ``(T, H, W)`` and the sequence positions of its
    tokens in flat grid order (``-1``: no token)."""

    sample: int
    modality: str
    grid: tuple[int, int, int]
    positions: torch.Tensor

    @property
    def tokens(self) -> int:
        return int((self.positions >= 0).sum())


def _pixels(rows, width, seed):
    return torch.randn(rows, width, generator=torch.Generator().manual_seed(seed))


class _Row:
    """One sample's tokens, token types and grids while it is being written."""

    def __init__(self):
        self.ids, self.types, self.grids = [], [], []

    def text(self, tokens):
        self.ids += list(tokens)
        self.types += [0] * len(tokens)

    def grid_tokens(self, token, count, kind):
        start = len(self.ids)
        self.ids += [token] * count
        self.types += [kind] * count
        return torch.arange(start, start + count)


def _pad(rows):
    length = max(len(r.ids) for r in rows)
    ids = torch.full((len(rows), length), PAD)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    types = torch.zeros((len(rows), length), dtype=torch.long)
    truth = []
    for b, row in enumerate(rows):
        shift = length - len(row.ids)
        ids[b, shift:] = torch.tensor(row.ids)
        mask[b, shift:] = 1
        types[b, shift:] = torch.tensor(row.types)
        truth += [Grid(b, m, g, torch.where(p >= 0, p + shift, -1)) for m, g, p in row.grids]
    return ids, mask, types, truth


def grid_thw_prompt(style, samples, start=0, seed=0):
    """Qwen-style inputs: ``samples[b]`` lists ``("video" | "image", (T, H, W))`` patch grids (merge 2x2).

    ``style``: ``"qwen2"`` (``<vs> tokens <ve>``), ``"qwen3"`` (a video's temporal patches each as
    ``<t> <vs> frame <ve>``), ``"glm"`` (a video as ``<video> [<vs> frame <ve> <t>]... </video>`` on image
    placeholder tokens, told apart by ``mm_token_type_ids``). Sample ``b`` is numbered ``start + b``
    (its text and pixels depend on that number only)."""
    rows, pixels, grids = [], {"image": [], "video": []}, {"image": [], "video": []}
    for b, items in enumerate(samples):
        number, row = start + b, _Row()
        row.text(range(5, 7 + number))
        for i, (modality, (t, h, w)) in enumerate(items):
            pixels[modality].append(_pixels(t * h * w, 24, seed + 100 * number + i))
            grids[modality].append([t, h, w])
            frame = h * w // 4
            token = IMAGE if style == "glm" or modality == "image" else VIDEO
            kind = 1 if modality == "image" else 2
            if modality == "image" or style == "qwen2":
                row.text([V_START])
                positions = row.grid_tokens(token, t * frame, kind)
                row.text([V_END])
            else:
                row.text([V_BEGIN] if style == "glm" else [])
                parts = []
                for f in range(t):
                    row.text([V_START] if style == "glm" else [60 + f, V_START])
                    parts.append(row.grid_tokens(token, frame, kind))
                    row.text([V_END, 60 + f] if style == "glm" else [V_END])
                row.text([V_FINISH] if style == "glm" else [])
                positions = torch.cat(parts)
            row.grids.append((modality, (t, h // 2, w // 2), positions))
            row.text([30 + i])
        row.text(range(40, 43))
        rows.append(row)
    ids, mask, types, truth = _pad(rows)
    inputs = dict(input_ids=ids, attention_mask=mask, mm_token_type_ids=types)
    for modality, name in (("image", "pixel_values"), ("video", "pixel_values_videos")):
        if grids[modality]:
            inputs[name] = torch.cat(pixels[modality])
            inputs[f"{modality}_grid_thw"] = torch.tensor(grids[modality])
    return inputs, truth


def video_llama_3_prompt(samples, start=0, seed=0, compressed=False):
    """VideoLLaMA3 inputs: ``("video" | "image", (T, H, W))`` patch grids; a video merges 2x2 and writes
    ``<t>`` before each frame's tokens; an image is not merged. ``compressed``: the processor's own
    token compression drops every third token of frames after the first (``video_compression_mask``)."""
    rows, pixels, grids, merges, masks = [], {"image": [], "video": []}, {"image": [], "video": []}, \
        {"image": [], "video": []}, []
    for b, items in enumerate(samples):
        number, row = start + b, _Row()
        row.text(range(5, 7 + number))
        for i, (modality, (t, h, w)) in enumerate(items):
            merge = 2 if modality == "video" else 1
            pixels[modality].append(_pixels(t * h * w, 12, seed + 100 * number + i))
            grids[modality].append([t, h, w])
            merges[modality].append(merge)
            frame = h * w // merge ** 2
            if modality == "image":
                positions = row.grid_tokens(IMAGE, frame, 1)
            else:
                keep = torch.ones(t, frame, dtype=torch.bool)
                if compressed:
                    keep[1:, ::3] = False
                masks.append(keep.flatten())
                parts = []
                for f in range(t):
                    row.text([60 + f])
                    present = row.grid_tokens(VIDEO, int(keep[f].sum()), 2)
                    parts.append(torch.full((frame,), -1).masked_scatter(keep[f], present))
                positions = torch.cat(parts)
            row.grids.append((modality, (t, h // merge, w // merge), positions))
            row.text([30 + i])
        row.text(range(40, 43))
        rows.append(row)
    ids, mask, _, truth = _pad(rows)
    inputs = dict(input_ids=ids, attention_mask=mask)
    for modality, name in (("image", "pixel_values"), ("video", "pixel_values_videos")):
        if grids[modality]:
            inputs[name] = torch.cat(pixels[modality])
            inputs[f"{modality}_grid_thw"] = torch.tensor(grids[modality])
            inputs[f"{modality}_merge_sizes"] = torch.tensor(merges[modality])
    if compressed and masks:
        inputs["video_compression_mask"] = torch.cat(masks)
    return inputs, truth


def internvl_prompt(samples, start=0, seed=0):
    """InternVL inputs: ``("image", tiles)`` is ``<img> 4*tiles tokens </img>``; ``("video", frames)`` is
    ``Frame1: <img> 4 tokens </img> \\n Frame2: ...``, as the processor writes them. Pixels: one 8x8 tile
    per row of ``pixel_values``, in prompt order."""
    rows, pixels = [], []
    for b, items in enumerate(samples):
        number, row = start + b, _Row()
        row.text(range(5, 7 + number))
        for i, (modality, count) in enumerate(items):
            tiles = torch.randn(count, 3, 8, 8, generator=torch.Generator().manual_seed(seed + 100 * number + i))
            pixels.append(tiles)
            if modality == "image":
                row.text([V_START])
                positions = row.grid_tokens(IMAGE, 4 * count, 1)
                row.text([V_END])
                # each tile is its own grid
                row.grids += [("image", (1, 2, 2), positions[4 * k:4 * k + 4]) for k in range(count)]
            else:
                parts = []
                for f in range(count):
                    row.text([50, 51 + f, 59, V_START] if f == 0 else [58, 50, 51 + f, 59, V_START])
                    parts.append(row.grid_tokens(IMAGE, 4, 1))
                    row.text([V_END])
                row.grids.append(("video", (count, 2, 2), torch.cat(parts)))
            row.text([30 + i])
        row.text(range(40, 43))
        rows.append(row)
    ids, mask, _, truth = _pad(rows)
    return dict(input_ids=ids, attention_mask=mask, pixel_values=torch.cat(pixels)), truth


def llava_prompt(model, samples, start=0, seed=0):
    """LLaVA inputs: ``("video", frames)`` (8x8-pixel frames; videos of one batch share a frame count) and
    ``("image", (height, width))`` any-resolution images. An image's token count is what the model's own
    feature packing makes of it; its grids are the 4x4 base image and the unpadded crop mosaic, each row of
    which ends in a newline."""
    onevision = "Onevision" in type(model).__name__
    side = 2  # pooled video side
    rows, videos, images, sizes = [], [], [], []
    for b, items in enumerate(samples):
        number, row = start + b, _Row()
        row.text(range(5, 7 + number))
        for i, (modality, spec) in enumerate(items):
            generator = torch.Generator().manual_seed(seed + 100 * number + i)
            if modality == "video":
                videos.append(torch.randn(1, spec, 3, 8, 8, generator=generator))
                positions = row.grid_tokens(VIDEO, spec * side * side, 2)
                row.grids.append(("video", (spec, side, side), positions))
                if onevision:
                    row.grid_tokens(VIDEO, 1, 2)  # the newline after the video
            else:
                height, width = spec
                crops = _llava_crops(model, spec)
                images.append(torch.randn(1, crops + 1, 3, 8, 8, generator=generator))
                sizes.append([height, width])
                rows_, cols = _llava_mosaic(model, spec, crops)
                base = row.grid_tokens(IMAGE, 16, 1)
                mosaic = row.grid_tokens(IMAGE, rows_ * (cols + 1), 1).view(rows_, cols + 1)[:, :cols]
                row.grids += [("image", (1, 4, 4), base), ("image", (1, rows_, cols), mosaic.flatten())]
            row.text([30 + i])
        row.text(range(40, 43))
        rows.append(row)
    ids, mask, _, truth = _pad(rows)
    inputs = dict(input_ids=ids, attention_mask=mask)
    if videos:
        inputs["pixel_values_videos"] = torch.cat(videos)
    if images:
        most = max(i.shape[1] for i in images)
        inputs["pixel_values"] = torch.cat([torch.nn.functional.pad(i, (0, 0, 0, 0, 0, 0, 0, most - i.shape[1]))
                                            for i in images])
        inputs["image_sizes"] = torch.tensor(sizes)
    return inputs, truth


def _llava_crops(model, size):
    from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

    return image_size_to_num_patches(size, model.config.image_grid_pinpoints, 8) - 1


def _llava_mosaic(model, size, crops):
    """Rows and columns of the crop mosaic of an image of ``size``, as the model packs it: the model's own
    packing of a feature grid that numbers the patches."""
    base = torch.zeros(1, 16, 1)
    numbered = torch.arange(crops * 16, dtype=torch.float32).view(crops, 16, 1) + 1
    newline = torch.full((1,), -1.0)
    kwargs = dict(image_newline=newline)
    if "NextVideo" in type(model).__name__:
        kwargs["vision_feature_select_strategy"] = model.config.vision_feature_select_strategy
    packed = model.model.pack_image_features([torch.cat([base, numbered])], torch.tensor([size]), **kwargs)[0][0]
    rest = packed[16:, 0]
    width = int((rest == -1).nonzero()[0]) if bool((rest == -1).any()) else 0
    return rest.numel() // (width + 1), width
