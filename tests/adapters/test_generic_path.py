"""The generic path: any decoder fed with inputs_embeds, videos located by the caller."""

from __future__ import annotations

import pytest
import tiny_vlms as tm
import torch
from adapter_oracle import layer_lengths, manual_greedy

import tokenreduce as tr
from tokenreduce.adapters import VisualLayout, contiguous_video, reduce_sequence

pytest.importorskip("transformers")

GRID = (2, 3, 4)  # 24 tokens


def _inputs(batch=1, seed=0):
    generator = torch.Generator().manual_seed(seed)
    embeds = torch.randn(batch, 30, 32, generator=generator) * 0.05
    spans = [contiguous_video(b, 3, GRID) for b in range(batch)]
    return embeds, VisualLayout.from_spans(batch, 30, spans)


def test_reduce_sequence_keeps_original_positions():
    embeds, visual = _inputs(batch=2)
    mask = torch.ones(2, 30, dtype=torch.long)
    mask[1, :2] = 0  # sample 1 is left-padded
    out = reduce_sequence(embeds, visual, tr.build("random", ratio=0.25), attention_mask=mask)
    keep = tr.build("random", ratio=0.25)(tr.VisualTokens(embeds[:, 3:27].reshape(2, *GRID, 32))).keep_mask
    for b in range(2):
        seq_keep = torch.ones(30, dtype=torch.bool)
        seq_keep[3:27] = keep[b]
        assert torch.equal(out.inputs_embeds[b], embeds[b, seq_keep])
        assert torch.equal(out.position_ids[b], torch.arange(30)[seq_keep])
        assert torch.equal(out.attention_mask[b], mask[b, seq_keep])
    with pytest.raises(ValueError, match="pre-LLM"):
        reduce_sequence(embeds, visual, tr.build("attention_prune"))
    with pytest.raises(ValueError, match="shape"):
        reduce_sequence(embeds[:, :20], visual, tr.build("random"))


@pytest.mark.parametrize("name,kw,prune_layer", [("random", {"ratio": 0.3}, 0),
                                                  ("attention_prune", {"ratio": 0.3, "layer": 2}, 2),
                                                  # 2 image + 1 text pivots share 6: 2 + 3 * 2 = 8 kept
                                                  ("dart", {"count": 6, "layer": 2, "pivot_image": 2,
                                                            "pivot_text": 1}, 2)])
def test_generic_apply_generates_like_uncached_oracle(name, kw, prune_layer):
    model = tm.llama()
    embeds, visual = _inputs()
    with torch.no_grad():
        ref = model.generate(inputs_embeds=embeds, max_new_tokens=3, do_sample=False)
        with tr.apply(model, tr.build("keep_all"), adapter="generic", visual=visual):
            assert torch.equal(model.generate(inputs_embeds=embeds, max_new_tokens=3, do_sample=False), ref)
        with tr.apply(model, tr.build(name, **kw), adapter="generic", visual=visual) as session:
            with layer_lengths(model.model.layers) as rec:
                out = model.generate(inputs_embeds=embeds, max_new_tokens=3, do_sample=False, output_logits=True,
                                     return_dict_in_generate=True)
            kept = session.kept_indices()[0]
    assert kept.numel() == 8
    assert rec.prefill() == {i: 30 - (16 if i >= prune_layer else 0) for i in range(3)}
    keep = torch.ones(30, dtype=torch.bool)
    video = torch.zeros(24, dtype=torch.bool)
    video[kept] = True
    keep[3:27] = video
    with torch.no_grad():
        tokens, logits = manual_greedy(model.model, model.lm_head, embeds, None, keep, prune_layer, 3)
    assert out.sequences[0].tolist() == tokens
    torch.testing.assert_close(torch.stack(out.logits, dim=1)[0], logits, rtol=1e-4, atol=1e-5)


def test_generic_needs_a_decoder():
    with pytest.raises(TypeError, match="decoder layers"):
        tr.apply(torch.nn.Linear(2, 2), tr.build("random"), adapter="generic")
