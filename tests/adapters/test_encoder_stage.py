"""Encoder-stage steps: signals from the vision tower's attention, applied to the LLM input."""

from __future__ import annotations

import sys

import pytest
import tiny_vlms as tm
import torch
from adapter_oracle import TopEncoderAttention, layer_lengths

import tokenreduce as tr
from tokenreduce.adapters import hf
from tokenreduce.selection import top_k_mask
from tokenreduce.tokens import Reduction

pytest.importorskip("transformers")


def _oracle_signals(model, inputs, layer):
    """Importance and keys per LLM token, from an all-pairs block-diagonal attention over patches
    (Qwen2.5-VL: tokens found in the ViT's window order one by one)."""
    visual = model.model.visual
    attn = visual.blocks[layer].attn
    seen = {}
    handle = attn.register_forward_pre_hook(lambda m, a, k: seen.update(k, x=a[0] if a else k["hidden_states"]),
                                            with_kwargs=True)
    with torch.no_grad():
        model.model.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"])
    handle.remove()
    x = seen["x"]
    n, heads = x.shape[0], attn.num_heads
    q, k, _ = attn.qkv(x).reshape(n, 3, heads, -1).permute(1, 0, 2, 3).unbind(0)
    keys = k.mean(dim=1)
    cos, sin = seen["position_embeddings"]
    modeling = sys.modules[type(attn).__module__]
    q, k = modeling.apply_rotary_pos_emb_vision(q, k, cos, sin)
    segment = torch.bucketize(torch.arange(n), seen["cu_seqlens"][1:], right=True)
    same = segment[:, None] == segment[None, :]
    scores = torch.einsum("qhd,khd->hqk", q, k) * attn.scaling
    weights = torch.softmax(scores.masked_fill(~same, float("-inf")), dim=-1)  # [heads, q, k]
    received = torch.zeros(n)
    for j in range(n):  # slow and obvious: mean over the queries of j's segment and heads
        received[j] = weights[:, same[:, j], j].mean()
    importance, keys = received.view(-1, 4).mean(1), keys.view(-1, 4, keys.shape[-1]).mean(1)
    if getattr(visual, "window_size", None) is None:
        return importance, keys
    from transformers.vision_utils import get_vision_window_index

    window_index, _ = get_vision_window_index(inputs["video_grid_thw"], spatial_merge_size=2,
                                              window_size=visual.window_size, patch_size=visual.patch_size)
    vit_position = [window_index.tolist().index(n) for n in range(window_index.numel())]
    return importance[vit_position], keys[vit_position]


@pytest.mark.parametrize("build,attn", [(tm.qwen2_vl, "sdpa"), (tm.qwen2_vl, "eager"), (tm.qwen2_5_vl, "sdpa")])
def test_encoder_step_gets_vision_attention_and_prunes_llm_input(build, attn):
    model = build(attn)
    inputs = tm.qwen_inputs([(2, 4, 6)])
    importance, keys = _oracle_signals(model, inputs, -2)
    expected = top_k_mask(importance[None], torch.tensor([4]))[0]
    TopEncoderAttention.seen = []
    seq = inputs["input_ids"].shape[1]
    lm = model.model.language_model
    with torch.no_grad(), tr.apply(model, TopEncoderAttention(ratio=0.3)) as session:
        with layer_lengths(lm.layers) as rec:
            out = model.generate(**inputs, max_new_tokens=2, do_sample=False)
        kept = session.kept_indices()[0]
    tokens = TopEncoderAttention.seen[-1]
    torch.testing.assert_close(tokens.flat_importance()[0], importance, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(tokens.flat_signal("keys")[0], keys, rtol=1e-5, atol=1e-6)
    assert torch.equal(kept, expected.nonzero().flatten())
    assert rec.prefill() == {0: seq - 8, 1: seq - 8, 2: seq - 8}
    assert out.shape[1] == seq + 2


class KeepTopAddMean(TopEncoderAttention):
    """Test reducer: top-k by encoder attention plus one new token (the mean of the dropped ones)
    for the first video of the batch and two for the others (extra_valid masks the unused one)."""

    def reduce(self, tokens):
        red = super().reduce(tokens)
        feats = tokens.flat_features()
        dropped = (~red.keep_mask & tokens.flat_valid()).float()
        mean = (dropped[..., None] * feats).sum(1) / dropped.sum(1, keepdim=True).clamp(min=1)
        extra = torch.stack([mean, -mean], dim=1)
        extra_valid = torch.ones(extra.shape[:2], dtype=torch.bool)
        extra_valid[0, 1] = False
        return Reduction(red.keep_mask, grid=tokens.grid, valid=red.valid, extra=extra, extra_valid=extra_valid)


def test_extra_tokens_are_inserted_after_their_video():
    model = tm.qwen2_vl()
    inputs = tm.qwen_inputs([(2, 4, 6)])
    lm = model.model.language_model
    seen = {}
    with torch.no_grad(), tr.apply(model, KeepTopAddMean(ratio=0.3)) as session:
        handle = lm.register_forward_pre_hook(lambda m, a, k: None if seen else seen.update(k), with_kwargs=True)
        out = model.generate(**inputs, max_new_tokens=2, do_sample=False)
        handle.remove()
        kept = session.kept_indices()[0]
    ids = inputs["input_ids"][0]
    video = (ids == tm.VIDEO).nonzero().flatten()
    unpatched = {}
    h = lm.register_forward_pre_hook(lambda m, a, k: unpatched.update(k), with_kwargs=True)
    with torch.no_grad():
        model(**inputs)
    h.remove()
    embeds, pos = unpatched["inputs_embeds"][0], unpatched["position_ids"][:, 0]
    dropped = torch.ones(video.numel(), dtype=torch.bool)
    dropped[kept] = False
    mean = embeds[video[dropped]].mean(0)
    last = int(video[-1])
    order = list(range(int(video[0]))) + video[kept].tolist()
    expected_embeds = torch.cat([embeds[order], mean[None], embeds[last + 1:]])
    expected_pos = torch.cat([pos[:, order], pos[:, last:last + 1], pos[:, last + 1:]], dim=1)
    assert seen["inputs_embeds"].shape[1] == ids.numel() - 12 + 4 + 1  # first video: one valid new token
    torch.testing.assert_close(seen["inputs_embeds"][0], expected_embeds)
    assert torch.equal(seen["position_ids"][-3:, 0], expected_pos)
    assert out.shape[1] == ids.numel() + 2


@pytest.mark.parametrize("build,pool", [(tm.llava_onevision, "bilinear"), (tm.llava_next_video, "avg")])
def test_llava_encoder_signals_equal_eager_vision_attention(build, pool):
    model = build("eager")
    inputs = tm.llava_inputs([3], 2, 1 if build is tm.llava_onevision else 0)
    tower = model.model.vision_tower
    pixels = inputs["pixel_values_videos"].flatten(0, 1)
    with torch.no_grad():
        out = tower(pixels, output_attentions=True, output_hidden_states=True)
    weights = out.attentions[-2]  # [F, heads, P, P] from the eager implementation itself
    received = weights.mean(dim=(1, 2)).view(3, 1, 4, 4)  # SigLIP: no CLS, mean over queries and heads
    if pool == "bilinear":
        expected = torch.nn.functional.interpolate(received, size=[2, 2], mode="bilinear")
    else:
        expected = torch.nn.functional.avg_pool2d(received, 2, 2)
    TopEncoderAttention.seen = []
    seq = inputs["input_ids"].shape[1]
    lm = model.model.language_model
    with torch.no_grad(), tr.apply(model, TopEncoderAttention(ratio=0.25)), layer_lengths(lm.layers) as rec:
        model.generate(**inputs, max_new_tokens=2, do_sample=False)
    torch.testing.assert_close(TopEncoderAttention.seen[-1].flat_importance()[0], expected.flatten(),
                               rtol=1e-5, atol=1e-6)
    assert rec.prefill()[0] == seq - 9


@pytest.mark.parametrize("build,frames_or_grid", [(tm.qwen2_vl, None), (tm.llava_onevision, 3)])
def test_encoder_steps_with_videos_repeated_by_generate(build, frames_or_grid):
    """Beam search repeats every video. Where generate encodes the videos once before the prefill
    (transformers 5.2x) the tower output no longer matches the prompt's videos one to one and encoder
    steps refuse; where the prefill encodes the repeated pixels itself, each beam's video is reduced."""
    model = build()
    inputs = tm.qwen_inputs([(2, 4, 6)]) if frames_or_grid is None else tm.llava_inputs([3], 2, 1)
    pre_encoded = []
    handle = model.register_forward_pre_hook(
        lambda m, a, k: pre_encoded.append(hf.encoded_video(k) is not None), with_kwargs=True)
    with torch.no_grad(), tr.apply(model, TopEncoderAttention(ratio=0.3)) as session:
        try:
            model.generate(**inputs, max_new_tokens=1, do_sample=False, num_beams=2)
            error = None
        except NotImplementedError as raised:
            error = raised
        kept = session.kept_indices()
    handle.remove()
    if pre_encoded[0]:
        assert error is not None and "one to one" in str(error)
    else:
        assert error is None and [k.numel() for k in kept] == [4, 4]  # each beam's video: ceil(0.3 * 12)


def test_encoder_layer_outside_the_tower_is_a_clear_error_and_installs_nothing():
    model = tm.qwen2_vl()
    model.model.visual.blocks = model.model.visual.blocks[:1]  # a one-block tower: layer -2 does not exist
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"encoder_layer -2 is outside the vision encoder's 1 blocks"):
        tr.apply(model, tr.build("visionzip"))
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_encoder_strategies_say_which_encoder_layer_they_read():
    assert tr.build("visionzip").config.encoder_layer == -2
    assert tr.build("fastervlm").config.encoder_layer == -2
    assert tr.build("prumerge_plus").config.encoder_layer == -1  # upstream: the last layer
    for name in ("holitom", "flashvid"):  # upstream: attentions[-1] of the tower
        assert tr.build(name).steps()[0].config.encoder_layer == -1
    model = tm.qwen2_vl()  # a two-block tower: layer 2 does not exist, so the config value is the one read
    with pytest.raises(ValueError, match=r"encoder_layer 2 is outside the vision encoder's 2 blocks"):
        tr.apply(model, tr.build("visionzip", encoder_layer=2))
    with pytest.raises(tr.ConfigTypeError, match="visionzip.encoder_layer must be an int"):
        tr.build("visionzip", encoder_layer="last")
