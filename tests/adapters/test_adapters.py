"""tr.apply on every supported model family (tiny random weights): exactness, real pruning,
generation against an uncached oracle, the attention probe, batches with padding."""

from __future__ import annotations

import pytest
import tiny_vlms as tm
import torch
from adapter_oracle import capture_lm_inputs, layer_lengths, manual_greedy
from dart_official import official_retained
from flashvid_official import official_prune
from holitom_official import official_inner

import tokenreduce as tr
from tokenreduce.adapters import hf
from tokenreduce.adapters.probe import AttentionInputs, last_query_attention
from tokenreduce.strategies.flashvid import FlashVIDPrune
from tokenreduce.strategies.holitom import HoliTomMerge

pytest.importorskip("transformers")

GRID = (2, 4, 6)  # 12 LLM tokens for the Qwen families


class Family:
    """How to build a tiny model of one family and its video inputs."""

    def __init__(self, build, inputs, sample_of, grid, small_grid, tokens, batch_grids, encoder=False):
        self.build, self.inputs, self.sample_of = build, inputs, sample_of
        self.grid, self.small_grid, self.tokens, self.batch_grids = grid, small_grid, tokens, batch_grids
        self.encoder = encoder  # supports encoder-stage steps


def _qwen(build, per_frame=False, encoder=True):
    return Family(build, lambda grids, seed=0: tm.qwen_inputs(grids, seed=seed, per_frame=per_frame),
                  tm.sample_of, GRID, (2, 4, 4), lambda g: g[0] * g[1] * g[2] // 4, [GRID, (2, 4, 4)], encoder)


def _llava(build, extra):
    # a grid is a frame count: 8x8 frames, 4x4 patches, pooled to 2x2
    return Family(build, lambda frames, seed=0: tm.llava_inputs(frames, 2, extra, seed=seed),
                  tm.llava_sample_of, 3, 2, lambda f: 4 * f, [3, 3], encoder=True)


FAMILIES = {
    "qwen2_vl": _qwen(tm.qwen2_vl),
    "qwen2_5_vl": _qwen(tm.qwen2_5_vl),
    "qwen3_vl": _qwen(tm.qwen3_vl, per_frame=True),
    "llava_onevision": _llava(tm.llava_onevision, 1),
    "llava_next_video": _llava(tm.llava_next_video, 0),
}


@pytest.fixture(params=sorted(FAMILIES))
def family(request):
    return FAMILIES[request.param]


def _deepstack_oracle(captured):
    """Adds Qwen3-VL deepstack features after the first layers, for the uncached oracle."""
    embeds = captured.get("deepstack_visual_embeds")
    if embeds is None:
        return None
    visual = captured["visual_pos_masks"][0]

    def add(index, h, rows):
        if index >= len(embeds):
            return h
        full = torch.cat([visual, torch.zeros(h.shape[1] + (0 if rows is None else int((~rows).sum()))
                                              - visual.numel(), dtype=torch.bool)])
        mask, emb = full, embeds[index]
        if rows is not None:
            mask = full[rows]
            emb = emb[rows[:visual.numel()][visual]]
        h = h.clone()
        h[0, mask] += emb
        return h

    return add


def _hook_state(model):
    return {name: (dict(m._forward_pre_hooks), dict(m._forward_hooks)) for name, m in model.named_modules()}


def _kwargs(name):
    """The strategy's canonical example setting (its first ``examples()`` entry, declared with the strategy)."""
    return tr.STRATEGIES.get(name).examples()[0]


def _runs_on(family_name, name):
    stages = {step.stage for step in tr.build(name, **_kwargs(name)).steps()}
    return tr.Stage.ENCODER not in stages or FAMILIES[family_name].encoder


ALL_STRATEGIES = tr.list_strategies()

# one-step selections: checked against the uncached oracle (at the planned count when a strategy plans one)
ORACLE = [n for n in ("random", "uniform", "attention_prune", "fastv", "evs", "vidcom2", "dart")
          if n in tr.STRATEGIES]


def _planned(reducer, n_video):
    """The count ``reducer`` plans for a video of ``n_video`` tokens, or None when it needs signals to know."""
    try:
        planned = reducer.planned_counts(tr.VisualTokens(torch.zeros(1, n_video, 1, 1, 1)))
    except tr.MissingSignalError:
        return None
    return None if planned is None else int(planned[0])


def _matrix(names, attns_for, families=None):
    return [pytest.param(fam, attn, name, _kwargs(name), id=f"{fam}-{attn}-{name}")
            for fam in sorted(families or FAMILIES) for name in names if _runs_on(fam, name)
            for attn in attns_for(name)]


def _attns(name):
    """Every strategy under sdpa; in-LLM ones and random under eager too."""
    in_llm = any(step.stage is tr.Stage.IN_LLM for step in tr.build(name, **_kwargs(name)).steps())
    return ["sdpa", "eager"] if in_llm or name == "random" else ["sdpa"]


# every registered strategy on Qwen2-VL (M-RoPE; eager too for in-LLM ones) and LLaVA-OneVision
# (1-D positions, newline token); the merging/inserting ones with Qwen3-VL's deepstack; the
# oracle ones everywhere
SDPA = lambda name: ["sdpa"]
BATCH_CASES = (_matrix(ALL_STRATEGIES, _attns, ["qwen2_vl"]) + _matrix(ALL_STRATEGIES, SDPA, ["llava_onevision"])
               + _matrix(ORACLE + [n for n in ("framefusion", "visionzip") if n in tr.STRATEGIES], SDPA,
                         ["qwen3_vl"])
               + _matrix(ORACLE, SDPA, ["qwen2_5_vl", "llava_next_video"]))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_keep_all_is_exact_and_model_restored(family, attn):
    model = family.build(attn)
    inputs = family.inputs([family.grid])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        ref = model(**inputs).logits
        ref_gen = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    hooks = _hook_state(model)  # after a first forward: transformers adds its own capture hooks lazily
    with torch.no_grad(), tr.apply(model, tr.build("keep_all")):
        out = model(**inputs).logits
        gen = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert torch.equal(out, ref)
    assert torch.equal(gen, ref_gen)
    assert _hook_state(model) == hooks
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, ref)


@pytest.mark.parametrize("family_name,attn,name,kw", _matrix(ORACLE, _attns))
def test_decoder_sees_reduced_length_and_generate_matches_uncached(family_name, attn, name, kw):
    family = FAMILIES[family_name]
    model = family.build(attn)
    inputs = family.inputs([family.grid])
    n_video = family.tokens(family.grid)
    reducer = tr.build(name, **kw)
    planned = _planned(reducer, n_video)
    lm = model.model.language_model
    captured = capture_lm_inputs(model, lm, inputs)
    seq = inputs["input_ids"].shape[1]
    with torch.no_grad(), tr.apply(model, reducer) as session:
        with layer_lengths(lm.layers) as rec:
            out = model.generate(**inputs, max_new_tokens=4, do_sample=False, output_logits=True,
                                 return_dict_in_generate=True)
        kept = session.kept_indices()
        decode_steps = session.decode_steps
    assert decode_steps == 3  # every later generate step was recognised as decoding the pruned cache
    gen, gen_logits = out.sequences, torch.stack(out.logits, dim=1)[0]
    with torch.no_grad():
        full = model.generate(**inputs, max_new_tokens=1, do_sample=False, output_logits=True,
                              return_dict_in_generate=True).logits[0][0]
    assert not torch.allclose(gen_logits[0], full, atol=1e-4)  # pruning changed the model's view
    keep_count = kept[0].numel()
    assert len(kept) == 1 and keep_count < n_video and keep_count == (planned or keep_count)
    prune_layer = reducer.steps()[0].layer or 0
    expected = {i: seq - (n_video - keep_count if i >= prune_layer else 0) for i in range(len(lm.layers))}
    assert rec.prefill() == expected
    # decode steps feed one token per layer
    assert all(n == 1 for _, n in rec.calls[len(lm.layers):])
    video_pos = (inputs["input_ids"][0] == tm.VIDEO).nonzero().flatten()[:n_video]
    keep = torch.ones(seq, dtype=torch.bool)
    dropped = torch.ones(n_video, dtype=torch.bool)
    dropped[kept[0]] = False
    keep[video_pos[dropped]] = False
    with torch.no_grad():
        ref, ref_logits = manual_greedy(lm, model.lm_head, captured["inputs_embeds"], captured["position_ids"],
                                        keep, prune_layer, 4, layer_extra=_deepstack_oracle(captured))
    assert gen[0, seq:].tolist() == ref
    torch.testing.assert_close(gen_logits, ref_logits, rtol=1e-4, atol=1e-5)


def test_second_generate_re_reduces_and_decode_never_prunes(family):
    model = family.build()
    inputs = family.inputs([family.grid])
    other = family.inputs([family.small_grid], seed=5)
    with torch.no_grad(), tr.apply(model, tr.build("attention_prune", ratio=0.3, layer=1)) as session:
        model.generate(**inputs, max_new_tokens=2, do_sample=False)
        first = session.kept_indices()
        model.generate(**other, max_new_tokens=2, do_sample=False)
        second = session.kept_indices()
        again = model.generate(**inputs, max_new_tokens=2, do_sample=False)
        third = session.kept_indices()
    n1, n2 = family.tokens(family.grid), family.tokens(family.small_grid)
    assert first[0].numel() == -(-3 * n1 // 10) and second[0].numel() == -(-3 * n2 // 10)
    assert torch.equal(first[0], third[0])
    with torch.no_grad(), tr.apply(model, tr.build("attention_prune", ratio=0.3, layer=1)):
        assert torch.equal(model.generate(**inputs, max_new_tokens=2, do_sample=False), again)


@pytest.mark.parametrize("queries", [1, 3])
def test_probe_equals_eager_attention(family, queries):
    eager = family.build("eager")
    sdpa = family.build("sdpa")
    inputs = family.inputs(family.batch_grids)  # left padding in the batch
    layer = 1
    for model in (eager, sdpa):
        seen = {}
        attn = model.model.language_model.layers[layer].self_attn
        handle = attn.register_forward_pre_hook(
            lambda m, a, k, seen=seen: seen.update(k), with_kwargs=True)
        with torch.no_grad():
            out = model(**inputs, output_attentions=(model is eager), use_cache=False)
        handle.remove()
        if model is eager:
            weights = out.attentions[layer]  # [B, heads, S, S]
            expected_heads = weights[:, :, -queries:, :].mean(dim=2)
        with torch.no_grad():
            probe = last_query_attention(attn, AttentionInputs(seen["hidden_states"], seen["position_embeddings"],
                                                               seen["attention_mask"]), queries)
        assert probe.shape == expected_heads.shape
        torch.testing.assert_close(probe, expected_heads.float(), rtol=1e-5, atol=1e-6)


def _positions_from_mask(family_name, inputs):
    """1-D position ids counted over the attention mask, as ``generate`` numbers a left-padded batch (a
    plain forward of the LLaVA families numbers padding too, which moves the rotary phase of every
    key: DART's key norms depend on it)."""
    if not family_name.startswith("llava"):
        return {}
    mask = inputs["attention_mask"]
    return {"position_ids": (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)}


@pytest.mark.parametrize("family_name,attn,name,kw", BATCH_CASES)
def test_batch_equals_single_runs(family_name, attn, name, kw):
    family = FAMILIES[family_name]
    model = family.build(attn)
    batch = family.inputs(family.batch_grids)
    reducer = tr.build(name, **kw)
    with torch.no_grad(), tr.apply(model, reducer) as session:
        gen = model.generate(**batch, max_new_tokens=2, do_sample=False)
        kept = session.kept_indices()
        logits = model(**batch, **_positions_from_mask(family_name, batch)).logits[:, -1]
        singles = []
        for b in range(2):
            single = family.sample_of(batch, b)
            g = model.generate(**single, max_new_tokens=2, do_sample=False)
            singles.append((g[0, single["input_ids"].shape[1]:], session.kept_indices()[0],
                            model(**single).logits[0, -1]))
    for b, (tokens, kept_single, last) in enumerate(singles):
        assert torch.equal(kept[b], kept_single)
        assert gen[b, batch["input_ids"].shape[1]:].tolist() == tokens.tolist()
        torch.testing.assert_close(logits[b], last, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family_name", ["qwen2_vl", "llava_onevision"])
def test_contiguous_positions_renumber_prefill_and_decode(family_name):
    family = FAMILIES[family_name]
    model = family.build()
    inputs = family.inputs(family.batch_grids)  # left-padded: each sample renumbers from its first token
    lm = model.model.language_model
    seen = []
    handle = lm.layers[0].register_forward_pre_hook(
        lambda m, a, k: seen.append(k["position_ids"].clone()), with_kwargs=True)
    with torch.no_grad(), tr.apply(model, tr.build("random", ratio=0.3), positions="contiguous") as session:
        gen = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        assert session.decode_steps == 2
    handle.remove()
    assert gen.shape[1] == inputs["input_ids"].shape[1] + 3
    prefill, *decode = [p if p.ndim == 2 else p[0] for p in seen]  # M-RoPE: every row is the text position
    lengths = inputs["attention_mask"].sum(1) - torch.tensor(
        [family.tokens(g) - -(-3 * family.tokens(g) // 10) for g in family.batch_grids])
    for b, length in enumerate(lengths.tolist()):
        valid = prefill[b, -length:]
        assert valid.tolist() == list(range(length))  # the kept tokens renumbered 0..L-1
        assert [int(p[b, -1]) for p in decode] == [length, length + 1]  # decoding goes on from L
    with pytest.raises(ValueError, match="contiguous"):
        tr.apply(model, tr.build("attention_prune", layer=1), positions="contiguous")


def test_unsupported_model_and_bad_layer_errors():
    with pytest.raises(tr.UnknownNameError, match="Qwen2VLForConditionalGeneration"):
        tr.apply(torch.nn.Linear(2, 2), tr.build("keep_all"))
    model = tm.qwen2_vl()
    with pytest.raises(ValueError, match="layer"):
        tr.apply(model, tr.build("attention_prune", layer=3))
    with pytest.raises(TypeError, match="Reducer"):
        tr.apply(model, "random")


def test_two_videos_in_one_sample_are_reduced_separately():
    model = tm.qwen2_vl()
    a, b = tm.qwen_video((2, 4, 6), 0), tm.qwen_video((2, 4, 4), 1)
    row = [5, 6, tm.V_START] + [tm.VIDEO] * 12 + [tm.V_END, 7, tm.V_START] + [tm.VIDEO] * 8 + [tm.V_END, 40, 41]
    ids = torch.tensor([row])
    inputs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values_videos=torch.cat([a[0], b[0]]),
                  video_grid_thw=torch.cat([a[1], b[1]]), mm_token_type_ids=(ids == tm.VIDEO).int() * 2)
    lm = model.model.language_model
    with torch.no_grad(), tr.apply(model, tr.build("random", ratio=0.5)) as session:
        with layer_lengths(lm.layers) as rec:
            model.generate(**inputs, max_new_tokens=2, do_sample=False)
        kept = session.kept_indices()
    assert [k.numel() for k in kept] == [6, 4]
    assert rec.prefill()[0] == ids.shape[1] - 6 - 4


@pytest.mark.parametrize("family_name", ["qwen2_vl", "llava_onevision"])
def test_beam_search_and_several_return_sequences(family_name):
    family = FAMILIES[family_name]
    model = family.build()
    inputs = family.inputs(family.batch_grids)
    options = dict(max_new_tokens=2, do_sample=False, num_beams=2, num_return_sequences=2)
    lm = model.model.language_model
    with torch.no_grad():
        ref = model.generate(**inputs, **options)
        with tr.apply(model, tr.build("keep_all")):
            assert torch.equal(model.generate(**inputs, **options), ref)
        with tr.apply(model, tr.build("attention_prune", ratio=0.3, layer=1)) as session:
            with layer_lengths(lm.layers) as rec:
                out = model.generate(**inputs, **options)
            kept = session.kept_indices()
    assert out.shape == ref.shape
    assert len(kept) == 4  # 2 samples x 2 beams, each video reduced
    assert rec.prefill()[1] < rec.prefill()[0]


def test_video_grids_name_each_videos_sample_and_grid():
    model = tm.qwen2_vl()
    with torch.no_grad(), tr.apply(model, tr.build("random", ratio=0.3)) as session:
        assert session.video_grids() == []
        model.generate(**tm.qwen_inputs([GRID, (2, 4, 4)]), max_new_tokens=1, do_sample=False)
        grids = session.video_grids()
        kept = session.kept_indices()
    assert grids == [(0, (2, 2, 3)), (1, (2, 2, 2))]
    assert [k.numel() for k in kept] == [4, 3]  # ceil(0.3 * 12), ceil(0.3 * 8)


def test_inserted_counts_name_the_new_tokens_of_each_video():
    model = tm.llava_onevision()
    inputs = tm.llava_inputs([3, 3], 2, 1)
    # per 2x2 frame: 2 dominant tokens kept, the other 2 merged into 1 contextual token inserted
    reducer = tr.build("visionzip", dominant=2, contextual=1, cls_token=False)
    with torch.no_grad(), tr.apply(model, reducer) as session:
        assert session.inserted_counts() == []
        model.generate(**inputs, max_new_tokens=1, do_sample=False)
        kept, inserted, lengths = session.kept_indices(), session.inserted_counts(), session.layer_lengths
    assert [k.numel() for k in kept] == [3 * 2, 3 * 2] and inserted == [3, 3]
    # every sample's 12 grid tokens became 6 kept + 3 inserted in the decoder's input
    assert lengths[0] == inputs["input_ids"].shape[1] - 3 * 2 * 2 + 6 + 3


@pytest.mark.parametrize("name", ["random", "fastv", "framefusion"])
def test_reduced_generate_warns_about_nothing_deprecated(name):
    """tokenreduce passes every argument under the name the installed transformers expects."""
    model = tm.qwen2_vl()
    inputs = tm.qwen_inputs([GRID, (2, 4, 4)])
    kw = _kwargs(name)
    import warnings

    with warnings.catch_warnings(record=True) as caught, torch.no_grad(), tr.apply(model, tr.build(name, **kw)):
        warnings.simplefilter("always")
        model.generate(**inputs, max_new_tokens=3, do_sample=False)
    deprecations = [str(w.message) for w in caught if issubclass(w.category, (DeprecationWarning, FutureWarning))]
    assert deprecations == []


def _video_positions(inputs, n_video):
    """Sequence positions of the grid tokens of the one video of sample 0."""
    return (inputs["input_ids"][0] == tm.VIDEO).nonzero().flatten()[:n_video]


@pytest.mark.parametrize("family_name", ["qwen2_vl", "qwen3_vl", "llava_onevision"])
def test_dart_reads_the_models_keys_final_norm_and_prompt(family_name):
    """DART inside a model keeps what the official code keeps given layer K-1's cached keys, the final
    norm of layer K's input, and the tokens after the video as text pivots."""
    family = FAMILIES[family_name]
    model = family.build()
    inputs = family.inputs([family.grid])
    n_video = family.tokens(family.grid)
    lm = model.model.language_model
    with torch.no_grad():  # a final norm that is not the identity up to scale, so that it matters
        lm.norm.weight.copy_(torch.rand(lm.norm.weight.shape, generator=torch.Generator().manual_seed(0)) + 0.1)
    seen = {}

    def record(module, args, kwargs):
        seen.setdefault("h", (args[0] if args else kwargs["hidden_states"]).clone())

    handle = lm.layers[1].register_forward_pre_hook(record, with_kwargs=True)  # before tr.apply's: unpruned
    reducer = tr.build("dart", ratio=0.5, layer=1, pivot_image=2, pivot_text=2)
    try:
        with torch.no_grad(), tr.apply(model, reducer) as session:
            out = model(**inputs, use_cache=True)
            kept = session.kept_indices()[0]
    finally:
        handle.remove()
    keys = hf.output_cache(out).layers[0].keys[0]  # layer 0 saw every token: [kv heads, L, head dim]
    keys = keys.transpose(0, 1).reshape(keys.shape[1], -1)
    with torch.no_grad():
        normed = lm.norm(seen["h"])[0]
    video = _video_positions(inputs, n_video)
    order = torch.cat([video, torch.arange(int(video[-1]) + 1, keys.shape[0])])
    expected = official_retained(normed[order], keys[order], n_video, reduction_ratio=0.5, pivot_image=2,
                                 pivot_text=2)
    assert set(kept.tolist()) == expected
    assert 2 < kept.numel() < n_video


# in-LLM steps of two-step strategies, each with the official code's decision on the visual rows of the
# hidden states entering layer 1 and layer 0's last-query attention: {kept row: its new hidden state}
IN_LLM_STEPS = {
    "holitom": (lambda: HoliTomMerge(layer=1, merge_ratio=0.5), lambda h, a: official_inner(h, a, 0.5)),
    "flashvid": (lambda: FlashVIDPrune(layer=1, llm_ratio=0.3), lambda h, a: {i: h[i] for i in official_prune(a, 0.3)}),
}


@pytest.mark.parametrize("family_name", ["qwen2_vl", "qwen3_vl", "llava_onevision"])
@pytest.mark.parametrize("strategy", sorted(IN_LLM_STEPS))
def test_in_llm_step_matches_the_uncached_oracle(family_name, strategy):
    """The in-LLM step of HoliTom (merge) and FlashVID (prune) really shortens the decoder's sequence
    and writes its hidden states: generation equals an uncached decoder applying the official code's
    decision before layer 1."""
    build, official = IN_LLM_STEPS[strategy]
    family = FAMILIES[family_name]
    model = family.build("eager")
    inputs = family.inputs([family.grid])
    n_video = family.tokens(family.grid)
    lm = model.model.language_model
    captured = capture_lm_inputs(model, lm, inputs)
    with torch.no_grad():
        attention = model(**inputs, output_attentions=True, use_cache=False).attentions[0][0, :, -1].mean(0)
    seq = inputs["input_ids"].shape[1]
    with torch.no_grad(), tr.apply(model, build()) as session:
        with layer_lengths(lm.layers) as rec:
            out = model.generate(**inputs, max_new_tokens=4, do_sample=False, output_logits=True,
                                 return_dict_in_generate=True)
        kept = session.kept_indices()[0]
    video = _video_positions(inputs, n_video)
    assert 0 < kept.numel() < n_video
    assert rec.prefill() == {0: seq, 1: seq - n_video + kept.numel(), 2: seq - n_video + kept.numel()}

    def merge(h):
        decided = official(h[0, video], attention[video])
        assert sorted(decided) == kept.tolist()
        h = h.clone()
        for i, value in decided.items():
            h[0, video[i]] = value
        return h

    keep = torch.ones(seq, dtype=torch.bool)
    keep[video] = False
    keep[video[kept]] = True
    with torch.no_grad():
        ref, ref_logits = manual_greedy(lm, model.lm_head, captured["inputs_embeds"], captured["position_ids"], keep,
                                        1, 4, layer_extra=_deepstack_oracle(captured), merge=merge)
    assert out.sequences[0, seq:].tolist() == ref
    torch.testing.assert_close(torch.stack(out.logits, dim=1)[0], ref_logits, rtol=1e-4, atol=1e-5)
