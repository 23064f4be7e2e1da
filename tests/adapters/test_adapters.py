"""tr.apply on every supported model family (tiny random weights): exactness, real pruning,
generation against an uncached oracle, the attention probe, batches with padding — on videos and
images. The matrix is driven by the family table (``families.py``), which must cover every registered
adapter."""

from __future__ import annotations

import importlib

import pytest
import tiny_vlms as tm
import torch
from adapter_oracle import capture_lm_inputs, layer_lengths, manual_greedy
from dart_official import official_retained
from families import FAMILIES, NAMED_ONLY
from flashvid_official import official_prune
from holitom_official import official_inner

import tokenreduce as tr
from tokenreduce.adapters import hf
from tokenreduce.adapters.probe import AttentionInputs, last_query_attention
from tokenreduce.strategies.flashvid import FlashVIDPrune
from tokenreduce.strategies.holitom import HoliTomMerge

pytest.importorskip("transformers")

GRID = (2, 4, 6)  # 12 LLM tokens for the Qwen families


def uncovered(adapters, rows, named_only):
    """Registered adapters (``name -> class``) with a model class that has no row, or with no class and no
    test module."""
    served = {(f.model_class, f.adapter) for f in rows}
    missing = []
    for name, cls in adapters.items():
        classes = getattr(cls, "model_classes", ())
        if not classes and name not in named_only:
            missing.append(name)
        missing += [f"{name}: {c}" for c in classes if (c, name) not in served]
    return missing


def test_every_registered_adapter_has_a_family_row():
    assert uncovered(dict(tr.ADAPTERS.items()), FAMILIES.values(), NAMED_ONLY) == []
    for module in NAMED_ONLY.values():
        importlib.import_module(module)


def test_an_untested_adapter_fails_the_coverage_check():
    class Untested(tr.adapters.ModelAdapter):
        model_classes = ("SomeNewVLForConditionalGeneration",)

    adapters = {**dict(tr.ADAPTERS.items()), "some_new_vl": Untested}
    assert uncovered(adapters, FAMILIES.values(), NAMED_ONLY) == ["some_new_vl: SomeNewVLForConditionalGeneration"]
    assert uncovered({"by_name": tr.adapters.ModelAdapter}, [], {}) == ["by_name"]


def _truth_grids(truth):
    return [(g.sample, g.grid) for g in truth], [g.modality for g in truth]


def _deepstack_oracle(captured):
    """Adds Qwen3-VL deepstack features after the first layers, for the uncached oracle."""
    embeds = captured.get("deepstack_visual_embeds")
    if embeds is None:
        return None
    visual = captured["visual_pos_masks"][0]

    def add(index, h, alive):
        if index >= len(embeds):
            return h
        prompt = alive[:visual.numel()]
        mask = torch.cat([visual[prompt], torch.zeros(h.shape[1] - int(prompt.sum()), dtype=torch.bool)])
        h = h.clone()
        h[0, mask] += embeds[index][prompt[visual]]
        return h

    return add


def _hook_state(model):
    """Every module's hooks and the functions set on the instance (the patches a session may install)."""
    return {name: (dict(m._forward_pre_hooks), dict(m._forward_hooks),
                   sorted(k for k, v in vars(m).items() if callable(v) and not isinstance(v, torch.nn.Module)))
            for name, m in model.named_modules()}


def _kwargs(name):
    """The strategy's canonical example setting (its first ``examples()`` entry, declared with the strategy)."""
    return tr.STRATEGIES.get(name).examples()[0]


def _runs_on(family_name, name):
    stages = {step.stage for step in tr.build(name, **_kwargs(name)).steps()}
    return tr.Stage.ENCODER not in stages or bool(tr.ADAPTERS.get(FAMILIES[family_name].adapter).encoder_modalities)


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
# oracle ones on the other families of the first round; a pre-LLM and an in-LLM one on every later family
# but Qwen3.5, which gets every strategy
SDPA = lambda name: ["sdpa"]
FIRST_ROUND = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava_onevision", "llava_next_video"]
BATCH_CASES = (_matrix(ALL_STRATEGIES, _attns, ["qwen2_vl"]) + _matrix(ALL_STRATEGIES, SDPA, ["llava_onevision"])
               + _matrix(ORACLE + [n for n in ("framefusion", "visionzip") if n in tr.STRATEGIES], SDPA,
                         ["qwen3_vl"])
               + _matrix(ORACLE, SDPA, ["qwen2_5_vl", "llava_next_video"])
               + _matrix(["random", "fastv"], SDPA, [f for f in FAMILIES if f not in FIRST_ROUND + ["qwen3_5"]])
               # every strategy on the hybrid decoder: its recurrent states follow the reduced, re-padded batch
               + _matrix(ALL_STRATEGIES, SDPA, ["qwen3_5"]))


def _attention_backends(family_name):
    return ["sdpa", "eager"] if FAMILIES[family_name].eager else ["sdpa"]


@pytest.mark.parametrize("family_name,attn", [(f, a) for f in FAMILIES for a in _attention_backends(f)])
def test_keep_all_is_exact_and_model_restored(family_name, attn):
    family = FAMILIES[family_name]
    model = family.build(attn)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = None
    for samples in family.batches().values():  # videos and images, left-padded, in either order
        inputs, truth = family.inputs(model, samples)
        with torch.no_grad():
            ref = model(**inputs).logits
            ref_gen = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        hooks = hooks or _hook_state(model)  # after a first forward: transformers adds its capture hooks lazily
        with torch.no_grad(), tr.apply(model, tr.build("keep_all")) as session:
            out = model(**inputs).logits
            gen = model.generate(**inputs, max_new_tokens=3, do_sample=False)
            located = session.video_grids(), session.grid_modalities()
            kept = [k.numel() for k in session.kept_indices()]
            offered = [video.tokens for video in session.last.videos]
        assert torch.equal(out, ref)
        assert torch.equal(gen, ref_gen)
        assert located == _truth_grids(truth)  # every video and image found on its grid
        assert kept == offered == [g.tokens for g in truth]
        assert _hook_state(model) == hooks
        with torch.no_grad():
            assert torch.equal(model(**inputs).logits, ref)
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def _softmax_layers(language_model):
    """Decoder layers with softmax attention (Qwen3.5's Gated-DeltaNet layers have ``linear_attn``)."""
    return [i for i, layer in enumerate(language_model.layers) if not hasattr(layer, "linear_attn")]


def _runs_before(step, softmax):
    """The decoder layer an in-LLM step that reads the probe runs before: right after the first softmax layer
    at or after its layer - 1 (docs/models.md, hybrid decoders)."""
    return min(i for i in softmax if i >= step.layer - 1) + 1


def _keep_mask(seq, truth, kept):
    """[S] bool: the prompt tokens left when grid ``i`` of ``truth`` keeps flat indices ``kept[i]``."""
    keep = torch.ones(seq, dtype=torch.bool)
    for grid, indices in zip(truth, kept):
        dropped = torch.ones(grid.positions.numel(), dtype=torch.bool)
        dropped[indices] = False
        positions = grid.positions[dropped]
        keep[positions[positions >= 0]] = False
    return keep


# the strategies every family is checked with against the uncached oracle: pre-LLM, in-LLM, ST-SimDiff
# as the paper describes it (in-LLM) and as its code runs (pre-LLM + in-LLM; at a cost the 3-layer models
# meet whatever stage 1 drops), and an encoder-stage one
FAMILY_STRATEGIES = {"random": {}, "fastv": {}, "st_simdiff": {},
                     "st_simdiff-reference": {"variant": "reference", "ratio": 0.5}, "fastervlm": {}}


def _oracle_cases():
    cases = []
    for family_name, family in FAMILIES.items():
        for prompt in family.single_prompts():
            for label, extra in FAMILY_STRATEGIES.items():
                name = label.split("-")[0]
                if name in tr.STRATEGIES and _runs_on(family_name, name):
                    cases.append(pytest.param(family_name, prompt, "sdpa", name, extra,
                                              id=f"{family_name}-{prompt}-{label}"))
            if family.eager:
                cases += [pytest.param(family_name, prompt, "eager", name, {},
                                       id=f"{family_name}-{prompt}-{name}-eager") for name in ("random", "fastv")]
    # the other one-step selections on one video of each family of the first round, under both backends
    for family_name in FIRST_ROUND:
        cases += [pytest.param(family_name, "video", attn, name, {}, id=f"{family_name}-video-{name}-{attn}")
                  for name in ORACLE if name not in FAMILY_STRATEGIES and _runs_on(family_name, name)
                  for attn in _attns(name)]
    return cases


def _prompt(family, prompt):
    """The samples of one of the family's single prompts, or of ``"video"``: one video alone."""
    return [[family.video]] if prompt == "video" else family.single_prompts()[prompt]


@pytest.mark.parametrize("family_name,prompt,attn,name,extra", _oracle_cases())
def test_decoder_sees_reduced_length_and_generate_matches_uncached(family_name, prompt, attn, name, extra):
    family = FAMILIES[family_name]
    model = family.build(attn)
    inputs, truth = family.inputs(model, _prompt(family, prompt))
    reducer = tr.build(name, **{**_kwargs(name), **extra})
    lm = model.model.language_model
    captured = capture_lm_inputs(model, lm, inputs)
    seq = inputs["input_ids"].shape[1]
    hooks = _hook_state(model)
    with torch.no_grad(), tr.apply(model, reducer) as session:
        with layer_lengths(lm.layers) as rec:
            out = model.generate(**inputs, max_new_tokens=4, do_sample=False, output_logits=True,
                                 return_dict_in_generate=True)
        kept, located, decode_steps = session.kept_indices(), session.video_grids(), session.decode_steps
    assert _hook_state(model) == hooks  # every hook and instance patch removed
    assert located == _truth_grids(truth)[0]
    assert decode_steps == 3  # every later generate step was recognised as decoding the pruned cache
    # where each prune point is: before the LLM for encoder / pre-LLM steps, after a softmax layer in it
    steps, softmax = reducer.steps(), _softmax_layers(lm)
    in_llm = [s for s in steps if s.stage is tr.Stage.IN_LLM]
    final = _keep_mask(seq, truth, kept)
    keeps = {}
    if len(in_llm) < len(steps):  # the encoder / pre-LLM steps alone decide what the first layer sees
        with torch.no_grad(), tr.apply(model, steps[0]) as first:
            model(**inputs)
            keeps[0] = _keep_mask(seq, truth, first.kept_indices())
    if in_llm:
        keeps[_runs_before(in_llm[0], softmax)] = final
    else:
        keeps[0] = final
    assert int((~final).sum()) > 0 and all(k.numel() <= g.tokens for k, g in zip(kept, truth))
    if name in ORACLE:  # a selection that plans its count keeps exactly that many of every grid
        assert all(k.numel() == (_planned(reducer, g.tokens) or k.numel()) for k, g in zip(kept, truth))
    expected, alive = {}, seq
    for index in range(len(lm.layers)):
        alive = int(keeps[index].sum()) if index in keeps else alive
        expected[index] = alive
    assert rec.prefill() == expected  # the decoder really sees the shorter sequence
    assert all(n == 1 for _, n in rec.calls[len(lm.layers):])  # decode steps feed one token per layer
    gen, gen_logits = out.sequences, torch.stack(out.logits, dim=1)[0]
    with torch.no_grad():
        full = model.generate(**inputs, max_new_tokens=1, do_sample=False, output_logits=True,
                              return_dict_in_generate=True).logits[0][0]
        ref, ref_logits = manual_greedy(lm, model.lm_head, captured["inputs_embeds"], captured.get("position_ids"),
                                        keeps, 4, layer_extra=_deepstack_oracle(captured))
    assert not torch.allclose(gen_logits[0], full, atol=1e-4)  # pruning changed the model's view
    assert gen[0, seq:].tolist() == ref
    torch.testing.assert_close(gen_logits, ref_logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family_name", sorted(FAMILIES))
def test_second_generate_re_reduces_and_decode_never_prunes(family_name):
    family = FAMILIES[family_name]
    model = family.build()
    inputs, truth = family.inputs(model, [[family.video]])
    other, other_truth = family.inputs(model, [[family.small_video]], start=5)
    with torch.no_grad(), tr.apply(model, tr.build("attention_prune", ratio=0.3, layer=1)) as session:
        model.generate(**inputs, max_new_tokens=2, do_sample=False)
        first = session.kept_indices()
        model.generate(**other, max_new_tokens=2, do_sample=False)
        second = session.kept_indices()
        again = model.generate(**inputs, max_new_tokens=2, do_sample=False)
        third = session.kept_indices()
    n1, n2 = truth[0].tokens, other_truth[0].tokens
    assert first[0].numel() == -(-3 * n1 // 10) and second[0].numel() == -(-3 * n2 // 10)
    assert torch.equal(first[0], third[0])
    with torch.no_grad(), tr.apply(model, tr.build("attention_prune", ratio=0.3, layer=1)):
        assert torch.equal(model.generate(**inputs, max_new_tokens=2, do_sample=False), again)


@pytest.mark.parametrize("family_name", sorted(FAMILIES))
def test_probe_equals_eager_attention(family_name):
    family = FAMILIES[family_name]
    eager = family.build("eager")
    sdpa = family.build("sdpa")
    inputs, _ = family.inputs(eager, next(iter(family.batches().values())))  # left padding in the batch
    layer = _softmax_layers(eager.model.language_model)[0]
    for queries in (1, 3):
        for model in (eager, sdpa):
            seen = {}
            attn = model.model.language_model.layers[layer].self_attn
            handle = attn.register_forward_pre_hook(
                lambda m, a, k, seen=seen: seen.update(k), with_kwargs=True)
            with torch.no_grad():
                out = model(**inputs, output_attentions=(model is eager), use_cache=False)
            handle.remove()
            if model is eager:
                # [B, heads, S, S]; a hybrid decoder reports its softmax-attention layers only
                weights = out.attentions[_softmax_layers(model.model.language_model).index(layer)]
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
    samples = next(iter(family.batches().values()))
    batch, _ = family.inputs(model, samples)
    reducer = tr.build(name, **kw)
    with torch.no_grad(), tr.apply(model, reducer) as session:
        gen = model.generate(**batch, max_new_tokens=2, do_sample=False)
        kept = session.kept_indices()
        logits = model(**batch, **_positions_from_mask(family_name, batch)).logits[:, -1]
        singles = []
        for b in range(2):
            single, _ = family.inputs(model, samples[b:b + 1], start=b)
            g = model.generate(**single, max_new_tokens=2, do_sample=False)
            singles.append((g[0, single["input_ids"].shape[1]:], session.kept_indices(),
                            model(**single).logits[0, -1]))
    assert len(kept) == sum(len(k) for _, k, _ in singles)
    for got, want in zip(kept, [k for _, ks, _ in singles for k in ks]):
        assert torch.equal(got, want)
    for b, (tokens, _, last) in enumerate(singles):
        assert gen[b, batch["input_ids"].shape[1]:].tolist() == tokens.tolist()
        torch.testing.assert_close(logits[b], last, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family_name", ["qwen2_vl", "llava_onevision", "internvl"])
def test_modalities_choose_what_is_reduced(family_name):
    """tr.apply(modalities=...) reduces the chosen media only; the others' tokens reach the decoder untouched."""
    family = FAMILIES[family_name]
    model = family.build()
    inputs, truth = family.inputs(model, [[family.video, family.image]])
    seq = inputs["input_ids"].shape[1]
    lm = model.model.language_model
    for chosen in ("video", "image", ["image", "video"]):
        names = (chosen,) if isinstance(chosen, str) else tuple(chosen)
        with torch.no_grad(), tr.apply(model, tr.build("random", ratio=0.5), modalities=chosen) as session:
            with layer_lengths(lm.layers) as rec:
                model(**inputs)
            reduced, kept = session.grid_modalities(), session.kept_indices()
        wanted = [g for g in truth if g.modality in names]
        assert reduced == [g.modality for g in wanted]
        assert rec.prefill()[0] == seq - sum(g.tokens - k.numel() for g, k in zip(wanted, kept)) < seq
    image_only, _ = family.inputs(model, [[family.image]])
    with torch.no_grad():
        ref = model(**image_only).logits
        with tr.apply(model, tr.build("random", ratio=0.5), modalities="video"):
            assert torch.equal(model(**image_only).logits, ref)
    with pytest.raises(tr.InputError, match="modalities"):
        tr.apply(model, tr.build("random", ratio=0.5), modalities=["audio"])
    with pytest.raises(tr.InputTypeError, match="modalities"):
        tr.apply(model, tr.build("random", ratio=0.5), modalities=3)


@pytest.mark.parametrize("family_name", ["qwen2_vl", "llava_onevision"])
def test_contiguous_positions_renumber_prefill_and_decode(family_name):
    family = FAMILIES[family_name]
    model = family.build()
    # left-padded, a video and an image: each sample renumbers from its first token
    inputs, truth = family.inputs(model, family.batches()["mixed"])
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
    dropped = [0, 0]
    for grid in truth:
        dropped[grid.sample] += grid.tokens - -(-3 * grid.tokens // 10)
    lengths = inputs["attention_mask"].sum(1) - torch.tensor(dropped)
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
    inputs, _ = family.inputs(model, [[family.video], [family.small_video]])
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


@pytest.mark.parametrize("family_name", ["qwen2_vl", "qwen3_vl", "llava_onevision", "qwen3_5"])
def test_dart_reads_the_models_keys_final_norm_and_prompt(family_name):
    """DART inside a model keeps what the official code keeps given layer K-1's cached keys, the final
    norm of layer K's input, and the tokens after the video as text pivots (on a hybrid decoder: the
    first full-attention layer's keys and the input of the layer after it)."""
    family = FAMILIES[family_name]
    model = family.build()
    inputs, truth = family.inputs(model, [[family.video]])
    n_video, video = truth[0].tokens, truth[0].positions
    lm = model.model.language_model
    with torch.no_grad():  # a final norm that is not the identity up to scale, so that it matters
        lm.norm.weight.copy_(torch.rand(lm.norm.weight.shape, generator=torch.Generator().manual_seed(0)) + 0.1)
    seen = {}

    def record(module, args, kwargs):
        seen.setdefault("h", (args[0] if args else kwargs["hidden_states"]).clone())

    reducer = tr.build("dart", ratio=0.5, layer=1, pivot_image=2, pivot_text=2)
    probe = _runs_before(reducer, _softmax_layers(lm)) - 1  # layer 0, or a hybrid decoder's first softmax layer
    handle = lm.layers[probe + 1].register_forward_pre_hook(record, with_kwargs=True)  # before tr.apply's: unpruned
    try:
        with torch.no_grad(), tr.apply(model, reducer) as session:
            out = model(**inputs, use_cache=True)
            kept = session.kept_indices()[0]
    finally:
        handle.remove()
    keys = hf.output_cache(out).layers[probe].keys[0]  # the probe layer saw every token: [kv heads, L, head dim]
    keys = keys.transpose(0, 1).reshape(keys.shape[1], -1)
    with torch.no_grad():
        normed = lm.norm(seen["h"])[0]
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


@pytest.mark.parametrize("family_name", ["qwen2_vl", "qwen3_vl", "llava_onevision", "qwen3_5"])
@pytest.mark.parametrize("strategy", sorted(IN_LLM_STEPS))
def test_in_llm_step_matches_the_uncached_oracle(family_name, strategy):
    """The in-LLM step of HoliTom (merge) and FlashVID (prune) really shortens the decoder's sequence
    and writes its hidden states: generation equals an uncached decoder applying the official code's
    decision before layer 1 (on a hybrid decoder: after its first full-attention layer, whose attention
    it reads; the later recurrent layers see the reduced sequence)."""
    build, official = IN_LLM_STEPS[strategy]
    family = FAMILIES[family_name]
    model = family.build("eager")
    inputs, truth = family.inputs(model, [[family.video]])
    n_video, video = truth[0].tokens, truth[0].positions
    lm = model.model.language_model
    captured = capture_lm_inputs(model, lm, inputs)
    reducer = build()
    step = _runs_before(reducer, _softmax_layers(lm))
    with torch.no_grad():  # the first attention map is the probe layer's (a hybrid decoder returns full-attention ones)
        attention = model(**inputs, output_attentions=True, use_cache=False).attentions[0][0, :, -1].mean(0)
    seq = inputs["input_ids"].shape[1]
    with torch.no_grad(), tr.apply(model, reducer) as session:
        with layer_lengths(lm.layers) as rec:
            out = model.generate(**inputs, max_new_tokens=4, do_sample=False, output_logits=True,
                                 return_dict_in_generate=True)
        kept = session.kept_indices()[0]
    assert 0 < kept.numel() < n_video
    assert rec.prefill() == {i: seq if i < step else seq - n_video + kept.numel() for i in range(len(lm.layers))}

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
        ref, ref_logits = manual_greedy(lm, model.lm_head, captured["inputs_embeds"], captured.get("position_ids"),
                                        {step: keep}, 4, layer_extra=_deepstack_oracle(captured),
                                        merges={step: merge})
    assert out.sequences[0, seq:].tolist() == ref
    torch.testing.assert_close(torch.stack(out.logits, dim=1)[0], ref_logits, rtol=1e-4, atol=1e-5)
