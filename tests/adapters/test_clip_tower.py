"""Encoder-stage steps on a CLIP vision tower (a CLS token in front of each frame's patches):
LLaVA-NeXT-Video as released (CLS dropped before the projector, 2x2 average pooling).

The oracle reads the eager CLIP attention weights (``output_attentions``) of an identical eager
model: the CLS row of the second-to-last layer's softmax, averaged over heads, sliced to the
patches; the keys are that layer's ``k_proj`` of its normed input, averaged over heads. Both are
average-pooled 2x2 onto the LLM grid, as the model pools its features.
"""

from __future__ import annotations


import pytest
import tiny_vlms as tm
import torch
import torch.nn.functional as F
from adapter_oracle import TopEncoderAttention, capture_lm_inputs, layer_lengths

import tokenreduce as tr

pytest.importorskip("transformers")

FRAMES, PATCHES, SIDE = 3, 8, 4  # 3 frames of 8x8 patches (+ CLS), pooled to 4x4 LLM tokens
TEXT = 5  # text tokens of the prompt built by tm.llava_inputs


def _inputs():
    return tm.llava_inputs([FRAMES], SIDE, 0, pixels_side=2 * PATCHES)


def _pool(values):
    """``[F, P*P, C]`` patch values -> ``[F * SIDE * SIDE, C]`` in LLM grid order."""
    grid = values.transpose(1, 2).reshape(FRAMES, -1, PATCHES, PATCHES)
    return F.avg_pool2d(grid, 2, 2).flatten(2).transpose(1, 2).reshape(FRAMES * SIDE * SIDE, -1)


def clip_oracle(inputs):
    """(importance [N], keys [N, d]) per LLM video token from the eager CLIP attention weights."""
    tower = tm.llava_next_video("eager", tower="clip").model.vision_tower
    pixels = inputs["pixel_values_videos"].flatten(0, 1)
    with torch.no_grad():
        out = tower(pixels, output_attentions=True, output_hidden_states=True)
        cls_row = out.attentions[-2][:, :, 0, 1:].mean(dim=1)  # [F, P*P]
        layer = tower.encoder.layers[-2]
        x = layer.layer_norm1(out.hidden_states[-3])  # that layer's input (hidden_states[0]: embeddings)
        heads = layer.self_attn.num_heads
        keys = layer.self_attn.k_proj(x).view(FRAMES, x.shape[1], heads, -1).mean(dim=2)[:, 1:]
        received = out.attentions[-2].mean(dim=(1, 2))[:, 1:]  # the rule for towers without CLS
    assert cls_row.shape[1] == PATCHES * PATCHES  # the CLS column is not a patch
    clip_oracle.received = _pool(received[..., None])[:, 0]
    return _pool(cls_row[..., None])[:, 0], _pool(keys)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_clip_encoder_signals_are_the_cls_row_and_keys(attn):
    model = tm.llava_next_video(attn, tower="clip")
    inputs = _inputs()
    importance, keys = clip_oracle(inputs)
    TopEncoderAttention.seen = []
    with torch.no_grad(), tr.apply(model, TopEncoderAttention(ratio=1.0)):
        model(**inputs)
    tokens = TopEncoderAttention.seen[-1]
    assert tokens.grid == (FRAMES, SIDE, SIDE)
    torch.testing.assert_close(tokens.flat_importance()[0], importance, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(tokens.flat_signal("keys")[0], keys, rtol=1e-5, atol=1e-6)
    # and not the rule for towers without CLS (attention received, averaged over queries)
    assert not torch.allclose(tokens.flat_importance()[0], clip_oracle.received, atol=1e-3)


def _per_frame_top(importance, count):
    """Flat grid indices of the ``count`` most important tokens of every frame (ties: lower index)."""
    kept = []
    for f in range(FRAMES):  # slow and obvious
        scores = importance[f * SIDE * SIDE:(f + 1) * SIDE * SIDE].tolist()
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:count]
        kept += [f * SIDE * SIDE + i for i in sorted(order)]
    return kept


@pytest.mark.parametrize("cls_token,patches_per_frame", [(True, 4), (False, 5)])
def test_visionzip_on_clip_tower_counts_and_tokens(cls_token, patches_per_frame):
    model = tm.llava_next_video(tower="clip")
    inputs = _inputs()
    importance, keys = clip_oracle(inputs)
    lm = model.model.language_model
    captured = capture_lm_inputs(model, lm, inputs)
    reducer = tr.build("visionzip", dominant=5, contextual=2, cls_token=cls_token)
    seen = {}
    with torch.no_grad(), tr.apply(model, reducer) as session:
        handle = lm.register_forward_pre_hook(lambda m, a, k: None if seen else seen.update(k), with_kwargs=True)
        with layer_lengths(lm.layers) as rec:
            out = model.generate(**inputs, max_new_tokens=2, do_sample=False)
        handle.remove()
        kept, inserted = session.kept_indices()[0], session.inserted_counts()[0]
    # per frame: dominant - 1 patches with cls_token (the CLS token is not in HF LLaVA's LLM input), or
    # dominant without; plus `contextual` new tokens
    per_frame = patches_per_frame + 2
    assert kept.tolist() == _per_frame_top(importance, patches_per_frame)
    assert inserted == FRAMES * 2
    assert rec.prefill()[0] == TEXT + FRAMES * per_frame
    assert out.shape[1] == inputs["input_ids"].shape[1] + 2
    # the LLM input is the strategy's own result on the oracle signals: kept tokens, then the
    # contextual tokens after the video
    ids = inputs["input_ids"][0]
    video = (ids == tm.VIDEO).nonzero().flatten()
    embeds = captured["inputs_embeds"][0]
    tokens = tr.VisualTokens(embeds[video].reshape(1, FRAMES, SIDE, SIDE, -1), importance=importance.view(
        1, FRAMES, SIDE, SIDE), signals={"keys": keys.view(1, FRAMES, SIDE, SIDE, -1)})
    expected = reducer(tokens)
    first, last = int(video[0]), int(video[-1])
    expected_embeds = torch.cat([embeds[:first], embeds[video[kept]], expected.extra[0][expected.extra_valid[0]],
                                 embeds[last + 1:]])
    torch.testing.assert_close(seen["inputs_embeds"][0], expected_embeds, rtol=1e-5, atol=1e-6)


def test_fastervlm_on_clip_tower_keeps_top_cls_attention_per_frame():
    model = tm.llava_next_video(tower="clip")
    inputs = _inputs()
    importance, _ = clip_oracle(inputs)
    lm = model.model.language_model
    with torch.no_grad(), tr.apply(model, tr.build("fastervlm", ratio=0.25)) as session, \
            layer_lengths(lm.layers) as rec:
        model.generate(**inputs, max_new_tokens=2, do_sample=False)
        kept = session.kept_indices()[0]
    assert kept.tolist() == _per_frame_top(importance, 4)  # 25 % of 16 tokens per frame
    assert rec.prefill()[0] == TEXT + FRAMES * 4

