"""FrameFusion inside the decoder at the official point: after a layer's attention block (residual
added), before its MLP, with that layer's attention for pruning.

The oracle runs the decoder layers of the tiny Qwen2-VL by hand, without a cache, recomputing the
whole sequence for every generated token: at merge point 0 it calls ``step`` on the input
embeddings; inside layer ``l`` it computes ``s = h + attention(norm(h))`` with eager attention,
calls ``step(state, l + 1, ...)`` on ``s`` with the head-averaged last-query attention row of that
layer, drops / overwrites rows of ``s``, and finishes the layer with ``s + mlp(norm(s))`` on the
reduced rows. Decisions are taken in the prompt-only run and reused while generating (the adapter
never re-prunes during decoding); the prompt rows are causal, so their values do not change.
"""

from __future__ import annotations

import pytest
import tiny_vlms as tm
import torch
from adapter_oracle import capture_lm_inputs, layer_lengths

import tokenreduce as tr
from tokenreduce.adapters import hf

pytest.importorskip("transformers")

GRID = (4, 4, 4)  # temporal patches x patch rows x patch cols -> LLM grid (4, 2, 2)
LLM_GRID = (4, 2, 2)
NUM_LAYERS = 4
# a threshold the tiny model's random tokens straddle, so that merge points 0 and 1 both merge and
# a later one prunes (asserted below, so the test cannot silently stop exercising them)
CONFIG = {"cost": 0.5, "similarity_lower_bound": 0.2, "ratio_lower_bound": 0.1}


class FrameFusionOracle:
    """Uncached decoder run of one sample (no padding) with FrameFusion at the official points
    (or, for ``position="before_layer"``, after each layer's MLP)."""

    def __init__(self, model, inputs, reducer):
        self.model = model
        self.lm = model.model.language_model
        self.reducer = reducer
        self.captured = capture_lm_inputs(model, self.lm, inputs)
        self.video_pos = (inputs["input_ids"][0] == tm.VIDEO).nonzero().flatten()
        self.decisions: dict[int, tuple[torch.Tensor, ...]] = {}  # merge point -> (keep, features, roles) [N]
        self.lengths: dict[int, int] = {}  # rows entering each layer (prompt-only run)

    def _merge_point(self, point, state, h, alive, importance):
        """Apply merge point ``point`` to ``h`` (rows = ``alive`` original positions); returns the new
        ``h`` and ``alive``."""
        slot = alive.long().cumsum(0) - 1  # current row of every original position
        present = alive[self.video_pos]
        rows = slot[self.video_pos].clamp(min=0)
        if point not in self.decisions:
            if state is None or state.done:  # decoding reuses the prompt's decisions only
                return h, alive
            features = h[0, rows].masked_fill(~present[:, None], 0.0)
            tokens = tr.VisualTokens(
                features.reshape(1, *LLM_GRID, -1), valid=present.reshape(1, *LLM_GRID),
                importance=None if importance is None else
                importance[rows].masked_fill(~present, 0.0).reshape(1, *LLM_GRID),
                num_layers=NUM_LAYERS)
            result = self.reducer.step(state, point, tokens)
            self.decisions[point] = (result.keep_mask[0].clone(), result.features[0].clone(),
                                     result.roles[0].clone())
        keep, features, _ = self.decisions[point]
        h = h.clone()
        h[0, rows[keep]] = features[keep].to(h.dtype)
        dropped = present & ~keep
        alive = alive.clone()
        alive[self.video_pos[dropped]] = False
        return h[:, slot[alive]], alive

    def last_logits(self, generated: list[int]) -> torch.Tensor:
        lm = self.lm
        embeds, positions = self.captured["inputs_embeds"], self.captured["position_ids"]
        new = torch.tensor([generated], dtype=torch.long)
        h = torch.cat([embeds, lm.get_input_embeddings()(new)], dim=1)
        next_pos = int(positions.max()) + 1
        new_pos = torch.arange(next_pos, next_pos + len(generated)).view(*([1] * (positions.ndim - 1)), -1)
        pos_all = torch.cat([positions, new_pos.expand(*positions.shape[:-1], -1)], dim=-1)
        alive = torch.ones(h.shape[1], dtype=torch.bool)
        visual = tr.VisualTokens(torch.zeros(1, *LLM_GRID, 1), num_layers=NUM_LAYERS)
        state = None if generated else self.reducer.start(visual)
        h, alive = self._merge_point(0, state, h, alive, None)
        implementation = lm.config._attn_implementation
        lm.config._attn_implementation = "eager"  # the oracle reads the real attention weights
        try:
            for index, layer in enumerate(lm.layers):
                if not generated:
                    self.lengths[index] = h.shape[1]
                pos = pos_all[..., alive]
                pe = lm.rotary_emb(h, pos)
                length = h.shape[1]
                causal = torch.full((length, length), torch.finfo(h.dtype).min).triu(1)[None, None]
                attended, weights = layer.self_attn(layer.input_layernorm(h), attention_mask=causal,
                                                    position_embeddings=pe, position_ids=None)
                s = h + attended
                importance = weights[0, :, -1].mean(dim=0)
                mid_layer = self.reducer.config.position == "after_attention"
                if index + 1 < NUM_LAYERS and mid_layer:
                    s, alive = self._merge_point(index + 1, state, s, alive, importance)
                h = s + layer.mlp(layer.post_attention_layernorm(s))
                if index + 1 < NUM_LAYERS and not mid_layer:  # between the layers, after the MLP
                    h, alive = self._merge_point(index + 1, state, h, alive, importance)
        finally:
            lm.config._attn_implementation = implementation
        return self.model.lm_head(lm.norm(h[:, -1]))[0]

    def greedy(self, steps: int) -> tuple[list[int], torch.Tensor]:
        generated, logits = [], []
        for _ in range(steps):
            step_logits = self.last_logits(generated)
            logits.append(step_logits)
            generated.append(int(step_logits.argmax()))
        return generated, torch.stack(logits)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("position", ["after_attention", "before_layer"])
def test_framefusion_matches_uncached_oracle_at_its_position(attn, position):
    model = tm.qwen2_vl(attn, num_layers=NUM_LAYERS)
    inputs = tm.qwen_inputs([GRID])
    lm = model.model.language_model
    reducer = tr.build("framefusion", position=position, **CONFIG)
    assert tr.build("framefusion").config.position == "after_attention"  # the official point is the default
    oracle = FrameFusionOracle(model, inputs, reducer)
    with torch.no_grad():
        ref_tokens, ref_logits = oracle.greedy(4)
    roles = {point: roles for point, (_, _, roles) in oracle.decisions.items()}
    # the case exercises a merge and an attention prune at merge points >= 1 (inside a layer or between)
    assert any(bool((r & int(tr.Role.ABSORBED)).any()) for p, r in roles.items() if p >= 1)
    assert any(bool((r & int(tr.Role.IMPORTANT)).any()) for p, r in roles.items() if p >= 1)

    seq = inputs["input_ids"].shape[1]
    with torch.no_grad(), tr.apply(model, tr.build("framefusion", position=position, **CONFIG)):
        with layer_lengths(lm.layers) as rec:
            out = model.generate(**inputs, max_new_tokens=4, do_sample=False, output_logits=True,
                                 return_dict_in_generate=True)
        prefill = model(**inputs, use_cache=True)
    assert rec.prefill() == oracle.lengths
    assert out.sequences[0, seq:].tolist() == ref_tokens
    torch.testing.assert_close(torch.stack(out.logits, dim=1)[0], ref_logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(prefill.logits[0, -1], ref_logits[0], rtol=1e-4, atol=1e-5)
    # each layer's cache holds every token that layer attended over (after_attention: layer l keeps
    # the tokens its own mid-layer step dropped)
    cache = hf.output_cache(prefill)
    assert {i: cache.layers[i].keys.shape[-2] for i in range(NUM_LAYERS)} == oracle.lengths


def test_framefusion_between_layers_is_a_different_model():
    """``position="before_layer"`` keeps the former placement (after the MLP) and is not the oracle."""
    model = tm.qwen2_vl(num_layers=NUM_LAYERS)
    inputs = tm.qwen_inputs([GRID])
    lm = model.model.language_model
    official = FrameFusionOracle(model, inputs, tr.build("framefusion", **CONFIG))
    with torch.no_grad():
        official_logits = official.last_logits([])
    reducer = tr.build("framefusion", position="before_layer", **CONFIG)
    with torch.no_grad(), tr.apply(model, reducer), layer_lengths(lm.layers) as rec:
        logits = model(**inputs).logits[0, -1]
    assert not torch.allclose(logits, official_logits, atol=1e-4)
    assert rec.prefill()[0] == official.lengths[0]  # merge point 0 runs before layer 0 in both placements


def test_position_is_validated():
    with pytest.raises(tr.ConfigError, match="position"):
        tr.build("framefusion", position="after_mlp")


def test_recorded_hidden_states_are_the_reduced_layer_outputs():
    """``output_hidden_states`` (recorded by transformers' own hooks, installed on a first forward
    before ``tr.apply``) holds what each layer really returned, mid-layer reductions included."""
    model = tm.qwen2_vl(num_layers=NUM_LAYERS)
    inputs = tm.qwen_inputs([GRID])
    lm = model.model.language_model
    outputs = {}
    with torch.no_grad():
        model(**inputs, output_hidden_states=True)
        with tr.apply(model, tr.build("framefusion", **CONFIG)):
            recorded = model(**inputs, output_hidden_states=True).hidden_states
            handles = [layer.register_forward_hook(lambda m, a, o, i=i: outputs.__setitem__(i, o.clone()))
                       for i, layer in enumerate(lm.layers)]
            model(**inputs)
            for handle in handles:
                handle.remove()
    oracle = FrameFusionOracle(model, inputs, tr.build("framefusion", **CONFIG))
    with torch.no_grad():
        oracle.last_logits([])
    # a layer returns what its own mid-layer step left, i.e. what the next layer receives
    expected = [oracle.lengths[i + 1] for i in range(NUM_LAYERS - 1)] + [oracle.lengths[NUM_LAYERS - 1]]
    assert [outputs[i].shape[1] for i in range(NUM_LAYERS)] == expected
    assert expected[0] < oracle.lengths[0]  # layer 0 shrank its sequence inside
    for i in range(NUM_LAYERS - 1):  # the last entry is after the final norm
        assert torch.equal(recorded[i + 1], outputs[i])
