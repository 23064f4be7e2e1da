"""Driving a LayerwiseReducer layer by layer, pipelines across stages, and merged features."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import pytest
import tiny_vlms as tm
import torch
from adapter_oracle import layer_lengths

import tokenreduce as tr
from tokenreduce.interfaces import BudgetConfig, InLLMConfig, LayerwiseReducer, Signal
from tokenreduce.tokens import Reduction

pytest.importorskip("transformers")


class DropOnePerLayer(LayerwiseReducer):
    """Test reducer: from its layer on, drops the lowest-importance present token at each layer,
    three times, and averages each kept token with its embedding (a 'merge')."""

    requires = frozenset({Signal.IMPORTANCE, Signal.EMBEDDINGS})

    @dataclasses.dataclass
    class Config(BudgetConfig, InLLMConfig):
        layer: int = 1

    calls: ClassVar[list] = []

    @dataclasses.dataclass
    class State:
        left: int = 3

        @property
        def done(self) -> bool:
            return self.left == 0

    def start(self, tokens):
        return self.State()

    def step(self, state, layer, tokens):
        type(self).calls.append((layer, int(tokens.valid_counts()[0])))
        valid = tokens.flat_valid()
        score = tokens.flat_importance().masked_fill(~valid, float("inf"))
        keep = valid.clone()
        keep[torch.arange(tokens.batch_size), score.argmin(dim=1)] = False
        state.left -= 1
        merged = (tokens.flat_features() + tokens.flat_signal("embeddings")) / 2
        return Reduction(keep, grid=tokens.grid, valid=valid, features=merged)

    def reduce(self, tokens):
        raise NotImplementedError


def test_layerwise_reducer_is_stepped_until_done():
    model = tm.qwen2_vl(num_layers=4)
    inputs = tm.qwen_inputs([(2, 4, 6)])
    DropOnePerLayer.calls = []
    lm = model.model.language_model
    seq = inputs["input_ids"].shape[1]
    with torch.no_grad(), tr.apply(model, DropOnePerLayer()), layer_lengths(lm.layers) as rec:
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    # started before layer 1, stepped at 1, 2, 3, then done
    assert DropOnePerLayer.calls == [(1, 12), (2, 11), (3, 10)]
    assert rec.prefill() == {0: seq, 1: seq - 1, 2: seq - 2, 3: seq - 3}
    assert out.shape[1] == seq + 3


def test_merged_features_replace_hidden_states():
    model = tm.qwen2_vl(num_layers=2)  # one layerwise step (before layer 1), so the final keep set is its
    inputs = tm.qwen_inputs([(2, 4, 6)])
    lm = model.model.language_model
    seen = {}
    with torch.no_grad(), tr.apply(model, DropOnePerLayer()) as session:
        # registered after the session's hooks, so they see what the layers really receive
        handles = [
            lm.register_forward_pre_hook(lambda m, a, k: seen.update(e=k["inputs_embeds"].clone()), with_kwargs=True),
            lm.layers[0].register_forward_hook(lambda m, a, o: seen.update(h0=o.clone())),
            lm.layers[1].register_forward_pre_hook(
                lambda m, a, k: seen.update(h1=(a[0] if a else k["hidden_states"]).clone()), with_kwargs=True),
        ]
        model(**inputs)
        kept = session.kept_indices()[0]
        for h in handles:
            h.remove()
    video = (inputs["input_ids"][0] == tm.VIDEO).nonzero().flatten()
    assert seen["h1"].shape[1] == seen["h0"].shape[1] - 1
    keep = torch.ones(seen["h0"].shape[1], dtype=torch.bool)
    dropped = torch.ones(video.numel(), dtype=torch.bool)
    dropped[kept] = False
    keep[video[dropped]] = False
    expected = seen["h0"][:, keep].clone()
    slots = (keep.long().cumsum(0) - 1)[video[kept]]
    expected[:, slots] = (seen["h0"][:, video[kept]] + seen["e"][:, video[kept]]) / 2
    torch.testing.assert_close(seen["h1"], expected)


def test_pipeline_pre_llm_then_in_llm():
    model = tm.qwen2_vl()
    inputs = tm.qwen_inputs([(2, 4, 6)])
    lm = model.model.language_model
    seq = inputs["input_ids"].shape[1]
    pipe = tr.Pipeline([tr.build("random", ratio=0.5), tr.build("attention_prune", ratio=0.25, layer=2)])
    with torch.no_grad(), tr.apply(model, pipe) as session:
        with layer_lengths(lm.layers) as rec:
            model.generate(**inputs, max_new_tokens=2, do_sample=False)
        kept = session.kept_indices()
    assert rec.prefill() == {0: seq - 6, 1: seq - 6, 2: seq - 9}
    assert kept[0].numel() == 3
