"""Chunked prefill (tokenreduce/adapters/chunked_prefill.py): the layers before the first in-LLM
step run in chunks, and everything the model returns is what the unchunked prefill returns.

Tolerances: chunked and unchunked runs compute the same sums in different kernel shapes, so in
float32 they differ by rounding only (about 1e-7 on these models); logits are compared with
``rtol=1e-5, atol=1e-5``, kept sets, lengths and generated tokens exactly.
"""

from __future__ import annotations

import math

import pytest
import tiny_vlms as tm
import torch
from adapter_oracle import capture_lm_inputs, manual_greedy
from families import FAMILIES as FAMILY_TABLE

import tokenreduce as tr
from tokenreduce.adapters import VisualLayout, contiguous_video
from tokenreduce.adapters.chunked_prefill import DEFAULT_PREFILL_CHUNK

pytest.importorskip("transformers")

LAYERS = 4  # in-LLM steps at layer 2: layers 0 and 1 run in chunks
CHUNK = 3
TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}

# a left-padded batch of two videos of different sizes per family
FAMILIES = {
    "qwen2_vl": (tm.qwen2_vl, lambda: tm.qwen_inputs([(2, 4, 6), (2, 4, 4)])),
    "qwen2_5_vl": (tm.qwen2_5_vl, lambda: tm.qwen_inputs([(2, 4, 6), (2, 4, 4)])),
    "qwen3_vl": (tm.qwen3_vl, lambda: tm.qwen_inputs([(2, 4, 6), (2, 4, 4)], per_frame=True)),
    "llava_onevision": (tm.llava_onevision, lambda: tm.llava_inputs([3, 3], 2, 1)),
    "llava_next_video": (tm.llava_next_video, lambda: tm.llava_inputs([3, 3], 2, 0)),
    # a hybrid decoder (linear, full, linear, full): its recurrent layer 0 runs in chunks too
    "qwen3_5": (tm.qwen3_5, lambda: tm.qwen_inputs([(2, 4, 6), (2, 4, 4)], per_frame=True)),
}
STRATEGIES = {
    "fastv": ("fastv", {"ratio": 0.3, "layer": 2}),
    "st_simdiff": ("st_simdiff", {"ratio": 0.3}),
    # tau_sim 0.3: stage 1 finds components on the random Qwen videos and drops before layer 0, so
    # the chunked layers read a shortened, re-padded sequence (the 12-token LLaVA videos keep all)
    "st_simdiff_reference": ("st_simdiff", {"ratio": 0.3, "variant": "reference", "tau_sim": 0.3}),
}


def _reduced_generate(model, reducer, inputs, prefill_chunk, **generate):
    with torch.no_grad(), tr.apply(model, reducer, prefill_chunk=prefill_chunk) as session:
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, **generate)
        report = (session.kept_indices(), session.layer_lengths, session.chunked_layers)
    return out.sequences, torch.stack(out.logits, dim=1), report


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
@pytest.mark.parametrize("family_name", sorted(FAMILIES))
def test_chunked_generate_equals_unchunked(family_name, strategy, attn):
    build, make_inputs = FAMILIES[family_name]
    model = build(attn, num_layers=LAYERS)
    inputs = make_inputs()
    name, kw = STRATEGIES[strategy]
    ref_seq, ref_logits, (ref_kept, ref_lengths, ref_chunks) = _reduced_generate(
        model, tr.build(name, **kw), inputs, None)
    seq, logits, (kept, lengths, chunks) = _reduced_generate(model, tr.build(name, **kw), inputs, CHUNK)
    length = inputs["input_ids"].shape[1]
    assert ref_chunks == {} and chunks == {0: math.ceil(lengths[0] / CHUNK), 1: math.ceil(lengths[0] / CHUNK)}
    assert lengths == ref_lengths and lengths[2] < lengths[0]  # pruned before layer 2 alike
    if strategy == "st_simdiff_reference" and family_name.startswith("qwen"):  # 24 video tokens: stage 1 drops
        assert lengths[0] < length
    elif strategy != "st_simdiff_reference":
        assert lengths[0] == length
    assert all(torch.equal(a, b) for a, b in zip(kept, ref_kept)) and len(kept) == len(ref_kept) == 2
    assert torch.equal(seq, ref_seq)
    torch.testing.assert_close(logits, ref_logits, **TOLERANCE)


def _expected_chunks(lengths, chunk):
    """Every layer before the first shortened one, recurrent or not, in chunks of ``chunk`` slots."""
    first = min(i for i, n in lengths.items() if n < lengths[0])
    return {i: math.ceil(lengths[0] / chunk) for i in range(first)}


@pytest.mark.parametrize("family_name", sorted(FAMILY_TABLE))
def test_every_family_chunks_its_batches(family_name):
    """Every row of the family table (families.py), on its left-padded two-sample batches (videos and
    images, in either order where the family mixes them): FastV before layer 2 gives the same kept
    sets, generated tokens and logits with chunks of 3 slots as unchunked. A hybrid decoder's
    recurrent layers (Qwen3.5) run their chunks too, carrying their states through the cache."""
    family = FAMILY_TABLE[family_name]
    model = family.build("sdpa")  # the row's own depth: 3 layers, 4 or 8 for Qwen3.5's layouts
    for samples in family.batches().values():
        inputs, _ = family.inputs(model, samples)
        ref_seq, ref_logits, (ref_kept, ref_lengths, _) = _reduced_generate(
            model, tr.build("fastv", ratio=0.3, layer=2), inputs, None)
        seq, logits, (kept, lengths, chunks) = _reduced_generate(
            model, tr.build("fastv", ratio=0.3, layer=2), inputs, CHUNK)
        assert lengths == ref_lengths and chunks == _expected_chunks(lengths, CHUNK)
        assert len(kept) == len(ref_kept) > 0 and all(torch.equal(a, b) for a, b in zip(kept, ref_kept))
        assert torch.equal(seq, ref_seq)
        torch.testing.assert_close(logits, ref_logits, **TOLERANCE)


@pytest.mark.parametrize("family_name", ["qwen2_vl", "llava_onevision"])
def test_generate_after_chunked_prefill_matches_the_uncached_oracle(family_name):
    """Decode steps on the cache a chunked prefill filled equal an uncached decoder that drops the
    same tokens before layer 2 and recomputes everything at every step."""
    build, make_inputs = FAMILIES[family_name]
    model = build("sdpa", num_layers=LAYERS)
    batch = make_inputs()
    inputs = (tm.sample_of if family_name.startswith("qwen") else tm.llava_sample_of)(batch, 0)
    lm = model.model.language_model
    captured = capture_lm_inputs(model, lm, inputs)
    seq, logits, (kept, _, chunks) = _reduced_generate(model, tr.build("fastv", ratio=0.3, layer=2), inputs, CHUNK)
    length = inputs["input_ids"].shape[1]
    assert chunks == {0: math.ceil(length / CHUNK), 1: math.ceil(length / CHUNK)}
    video = (inputs["input_ids"][0] == tm.VIDEO).nonzero().flatten()
    video = video[:video.numel() - (1 if family_name == "llava_onevision" else 0)]  # OneVision's newline token
    keep = torch.ones(length, dtype=torch.bool)
    keep[video] = False
    keep[video[kept[0]]] = True
    with torch.no_grad():
        ref, ref_logits = manual_greedy(lm, model.lm_head, captured["inputs_embeds"], captured["position_ids"],
                                        {2: keep}, 3)
    assert seq[0, length:].tolist() == ref
    torch.testing.assert_close(logits[0], ref_logits, rtol=1e-4, atol=1e-5)


def test_forward_without_cache_and_every_chunk_size():
    """``use_cache=False``: the chunks attend through a scratch cache; any chunk size, including one
    slot and sizes that leave a short last chunk, gives the unchunked logits."""
    model = tm.qwen2_vl("sdpa", num_layers=LAYERS)
    inputs = tm.qwen_inputs([(2, 4, 6), (2, 4, 4)])
    length = inputs["input_ids"].shape[1]
    results = {}
    for chunk in (None, 1, 4, length - 1, length):
        with torch.no_grad(), tr.apply(model, tr.build("fastv", ratio=0.3, layer=2), prefill_chunk=chunk) as session:
            logits = model(**inputs, use_cache=False).logits[:, -1]
            results[chunk] = (logits, session.kept_indices(), session.chunked_layers)
    for chunk in (1, 4, length - 1):
        logits, kept, chunks = results[chunk]
        assert chunks == {0: math.ceil(length / chunk), 1: math.ceil(length / chunk)}
        assert all(torch.equal(a, b) for a, b in zip(kept, results[None][1]))
        torch.testing.assert_close(logits, results[None][0], **TOLERANCE)
    assert results[length][2] == {}  # one chunk would hold the whole sequence: run as it is
    assert torch.equal(results[length][0], results[None][0])


def test_probe_signals_mid_layer_steps_and_pipelines():
    """DART reads layer 1's keys, the final norm and the prompt after the video, all reassembled from
    the chunks; FrameFusion merges inside layer 1 after its attention, so only layer 0 is chunked; a
    pipeline's pre-LLM step shortens what the chunked layers read."""
    model = tm.qwen2_vl("eager", num_layers=LAYERS)
    inputs = tm.qwen_inputs([(2, 4, 6), (2, 4, 4)])
    length = inputs["input_ids"].shape[1]
    cases = [(tr.build("dart", ratio=0.3, layer=2), {0, 1}, length),
             (tr.build("framefusion", layer=2, cost=0.5), {0}, length),
             (tr.Pipeline([tr.build("uniform", ratio=0.6), tr.build("fastv", ratio=0.3, layer=2)]), {0, 1}, 16)]
    for reducer, chunked, first_length in cases:
        ref_seq, ref_logits, (ref_kept, ref_lengths, _) = _reduced_generate(model, reducer, inputs, None)
        seq, logits, (kept, lengths, chunks) = _reduced_generate(model, reducer, inputs, CHUNK)
        assert lengths[0] == first_length
        assert chunks == {layer: math.ceil(first_length / CHUNK) for layer in chunked}
        assert lengths == ref_lengths and all(torch.equal(a, b) for a, b in zip(kept, ref_kept))
        assert torch.equal(seq, ref_seq)
        torch.testing.assert_close(logits, ref_logits, **TOLERANCE)


def test_generic_path_chunks_a_plain_decoder():
    """The generic adapter (a Llama decoder fed with inputs_embeds, 1-D positions) chunks alike."""
    model = tm.llama("sdpa", num_layers=LAYERS)
    embeds = torch.randn(1, 30, 32, generator=torch.Generator().manual_seed(0)) * 0.05
    visual = VisualLayout.from_spans(1, 30, [contiguous_video(0, 3, (2, 3, 4))])
    runs = []
    for chunk in (None, 7):
        with torch.no_grad(), tr.apply(model, tr.build("fastv", ratio=0.3, layer=2), adapter="generic", visual=visual,
                                       prefill_chunk=chunk) as session:
            out = model.generate(inputs_embeds=embeds, max_new_tokens=3, do_sample=False, output_logits=True,
                                 return_dict_in_generate=True)
            runs.append((out.sequences, torch.stack(out.logits, dim=1), session.kept_indices(),
                         session.chunked_layers))
    (ref_seq, ref_logits, ref_kept, _), (seq, logits, kept, chunks) = runs
    assert chunks == {0: 5, 1: 5} and torch.equal(kept[0], ref_kept[0]) and torch.equal(seq, ref_seq)
    torch.testing.assert_close(logits, ref_logits, **TOLERANCE)


def test_unchunked_where_chunking_cannot_apply():
    """No in-LLM step, ``output_attentions`` (one attention map per call) and ``prefill_chunk=None``
    run the prefill as it is; the report says so."""
    model = tm.qwen2_vl("eager", num_layers=LAYERS)
    inputs = tm.qwen_inputs([(2, 4, 6), (2, 4, 4)])
    with torch.no_grad():
        with tr.apply(model, tr.build("uniform", ratio=0.3), prefill_chunk=CHUNK) as session:
            model(**inputs)
            assert session.chunked_layers == {}
        with tr.apply(model, tr.build("fastv", ratio=0.3, layer=2), prefill_chunk=None) as session:
            ref = model(**inputs, output_attentions=True)
            assert session.chunked_layers == {}
        with tr.apply(model, tr.build("fastv", ratio=0.3, layer=2), prefill_chunk=CHUNK) as session:
            out = model(**inputs, output_attentions=True)
            assert session.chunked_layers == {}
            model(**inputs)
            assert set(session.chunked_layers) == {0, 1}
    assert torch.equal(out.logits, ref.logits)
    assert [a.shape for a in out.attentions] == [a.shape for a in ref.attentions]


def test_output_hidden_states_of_a_chunked_prefill():
    """transformers records every layer's whole output, also of the layers run in chunks."""
    model = tm.qwen2_vl("sdpa", num_layers=LAYERS)
    inputs = tm.qwen_inputs([(2, 4, 6), (2, 4, 4)])
    runs = []
    for chunk in (None, CHUNK):
        with torch.no_grad(), tr.apply(model, tr.build("fastv", ratio=0.3, layer=2), prefill_chunk=chunk) as session:
            runs.append((model(**inputs, output_hidden_states=True).hidden_states, session.chunked_layers))
    (ref, _), (states, chunks) = runs
    assert set(chunks) == {0, 1} and len(states) == len(ref) == LAYERS + 1
    for state, expected in zip(states, ref):
        torch.testing.assert_close(state, expected, **TOLERANCE)


def test_model_restored_and_an_instance_forward_kept():
    """The wrapped layer forwards are taken off again; a forward another library set on a layer
    instance (accelerate does) runs every chunk and is put back as it was."""
    model = tm.qwen2_vl("sdpa", num_layers=LAYERS)
    inputs = tm.qwen_inputs([(2, 4, 6), (2, 4, 4)])
    layers = model.model.language_model.layers
    calls = []

    def counting(*args, **kwargs):
        calls.append((args[0] if args else kwargs["hidden_states"]).shape[1])
        return type(layers[0]).forward(layers[0], *args, **kwargs)

    layers[0].forward = counting
    with torch.no_grad():
        ref = model(**inputs).logits
        calls.clear()
        with tr.apply(model, tr.build("fastv", ratio=0.3, layer=2), prefill_chunk=8):
            model(**inputs)
            assert "forward" in vars(layers[1])
    length = inputs["input_ids"].shape[1]
    assert calls == [8] * (length // 8) + ([length % 8] if length % 8 else [])
    assert vars(layers[0])["forward"] is counting
    assert all("forward" not in vars(layer) for layer in layers[1:])
    del layers[0].forward
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, ref)


@pytest.mark.parametrize("value", [0, -4, True, 2.5, "8"])
def test_bad_prefill_chunk(value):
    model = tm.qwen2_vl("sdpa", num_layers=LAYERS)
    with pytest.raises(tr.InputError, match="prefill_chunk"):
        tr.apply(model, tr.build("fastv", ratio=0.3, layer=2), prefill_chunk=value)
    assert all("forward" not in vars(layer) for layer in model.model.language_model.layers)


def test_default_chunk_leaves_short_prompts_whole():
    model = tm.qwen2_vl("sdpa", num_layers=LAYERS)
    inputs = tm.qwen_inputs([(2, 4, 6)])
    assert inputs["input_ids"].shape[1] <= DEFAULT_PREFILL_CHUNK
    with torch.no_grad(), tr.apply(model, tr.build("fastv", ratio=0.3, layer=2)) as session:
        model(**inputs)
        assert session.chunked_layers == {}


def test_a_hybrid_decoder_chunks_its_recurrent_layers():
    """Qwen3.5's linear-attention layer 0 runs its chunks through the cache, each starting from the
    convolution and recurrent states the earlier ones left: with chunks of one slot (the layer's decode
    path), two, and sizes that leave a short last chunk, a left-padded batch generates what the
    unchunked prefill does — the decode steps read those states — and a forward without a cache (a
    scratch cache carries them) gives the same logits."""
    model = tm.qwen3_5()  # layers: linear, full, linear, full
    inputs, _ = tm.grid_thw_prompt("qwen3", [[("video", (2, 4, 6))], [("video", (2, 4, 4))]])
    length = inputs["input_ids"].shape[1]
    reducer = tr.build("fastv", ratio=0.3, layer=2)
    whole_tokens, whole_logits, (whole_kept, whole_lengths, _) = _reduced_generate(model, reducer, inputs, None)
    with torch.no_grad(), tr.apply(model, reducer, prefill_chunk=None):
        whole_forward = model(**inputs, use_cache=False).logits
    for chunk in (1, 2, length - 2, length - 1):
        tokens, logits, (kept, lengths, chunked) = _reduced_generate(model, reducer, inputs, chunk)
        assert chunked == {0: math.ceil(length / chunk), 1: math.ceil(length / chunk)}
        assert lengths == whole_lengths and lengths[2] < lengths[0]
        assert all(torch.equal(a, b) for a, b in zip(kept, whole_kept))
        assert torch.equal(tokens, whole_tokens)
        torch.testing.assert_close(logits, whole_logits, **TOLERANCE)
        with torch.no_grad(), tr.apply(model, reducer, prefill_chunk=chunk) as session:
            forward = model(**inputs, use_cache=False).logits
            assert set(session.chunked_layers) == {0, 1}
        torch.testing.assert_close(forward, whole_forward, **TOLERANCE)
