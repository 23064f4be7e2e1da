"""Slow, obviously-correct references: capture what the unpatched LLM receives, and decode by
recomputing the whole (pruned) sequence at every step without a cache; and a recording
encoder-stage reducer shared by the encoder tests."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch

from tokenreduce.interfaces import BudgetConfig, BudgetedReducer, EncoderConfig, Signal, Stage
from tokenreduce.selection import top_k_mask
from tokenreduce.tokens import Reduction


def capture_lm_inputs(model, language_model, inputs):
    """The kwargs the unpatched language model receives for ``inputs`` (one forward, no cache)."""
    seen = {}

    def hook(module, args, kwargs):
        seen.update(kwargs)

    handle = language_model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            model(**inputs, use_cache=False)
    finally:
        handle.remove()
    return seen


def layer_lengths(layers):
    """Context: records the sequence length every decoder layer receives, per call."""
    class Recorder:
        def __init__(self):
            self.calls = []
            self.handles = []

        def __enter__(self):
            for i, layer in enumerate(layers):
                self.handles.append(layer.register_forward_pre_hook(
                    lambda m, a, k, i=i: self.calls.append((i, (a[0] if a else k["hidden_states"]).shape[1])),
                    with_kwargs=True))
            return self

        def __exit__(self, *exc):
            for h in self.handles:
                h.remove()

        def prefill(self):
            """Length per layer in the first forward."""
            out = {}
            for i, n in self.calls:
                if i in out:
                    break
                out[i] = n
            return out

    return Recorder()


def manual_greedy(language_model, lm_head, embeds, positions, keep, prune_layer, steps, layer_extra=None,
                  merge=None):
    """Greedy tokens and per-step logits of one sample (batch 1, no padding), recomputing everything at every step.

    ``keep`` [S] bool: prompt tokens kept from ``prune_layer`` on (0 = before the first layer);
    ``positions`` [R, 1, S] or [1, S]: original position ids; generated tokens continue from
    the largest prompt position + 1. ``merge(h)``, when given, rewrites the hidden states entering
    ``prune_layer`` (merged tokens) before the rows are dropped.
    """
    embed_tokens = language_model.get_input_embeddings()
    if positions is None:  # 1-D models: the plain forward numbers 0..S-1
        positions = torch.arange(embeds.shape[1])[None]
    next_pos = int(positions.max()) + 1
    generated, step_logits = [], []
    for _ in range(steps):
        new = torch.tensor([generated], dtype=torch.long)
        h = torch.cat([embeds, embed_tokens(new)], dim=1)
        new_pos = torch.arange(next_pos, next_pos + len(generated)).view(*([1] * (positions.ndim - 1)), -1)
        pos = torch.cat([positions, new_pos.expand(*positions.shape[:-1], -1)], dim=-1)
        rows = torch.cat([keep, torch.ones(len(generated), dtype=torch.bool)])
        for index, layer in enumerate(language_model.layers):
            if index == prune_layer:
                h = h if merge is None else merge(h)
                h = h[:, rows]
                pos = pos[..., rows]
            pe = language_model.rotary_emb(h, pos)
            length = h.shape[1]
            causal = torch.full((length, length), torch.finfo(h.dtype).min).triu(1)[None, None]
            h = layer(h, attention_mask=causal, position_embeddings=pe, position_ids=None, use_cache=False)
            if layer_extra is not None:
                h = layer_extra(index, h, rows if index >= prune_layer else None)
        logits = lm_head(language_model.norm(h[:, -1]))
        step_logits.append(logits[0])
        generated.append(int(logits.argmax(-1)))
    return generated, torch.stack(step_logits)


class TopEncoderAttention(BudgetedReducer):
    """Test reducer: keep the tokens receiving the most encoder attention; remembers its inputs."""

    stage: ClassVar[Stage] = Stage.ENCODER
    requires: ClassVar[frozenset] = frozenset({Signal.IMPORTANCE, Signal.KEYS})
    seen: ClassVar[list] = []

    @dataclasses.dataclass
    class Config(BudgetConfig, EncoderConfig):
        pass

    def reduce(self, tokens):
        type(self).seen.append(tokens)
        valid = tokens.flat_valid()
        keep = top_k_mask(tokens.flat_importance(), self.keep_counts(tokens), valid)
        return Reduction(keep, grid=tokens.grid, valid=valid)
