"""The engine-neutral serving layer and the parts of the vLLM plugin that run without vLLM."""

from __future__ import annotations

import json

import pytest
import torch

import tokenreduce as tr
from tokenreduce.integrations import vllm_serving
from tokenreduce.integrations.serving import ServingStrategy, VideoSelection, parse_spec, servable_strategies
from tokenreduce.strategies.fit_budget import FitBudget

SOURCE = "TOKENREDUCE_VLLM_STRATEGY"


def test_a_strategy_is_a_name_a_json_object_or_a_file(tmp_path):
    assert parse_spec(" uniform ", SOURCE) == {"name": "uniform"}
    assert parse_spec('{"name": "random", "seed": 3}', SOURCE) == {"name": "random", "seed": 3}
    path = tmp_path / "strategy.yaml"
    path.write_text("name: st_simdiff_select\ntau_sim: 0.7\n")
    assert parse_spec(str(path), SOURCE) == {"name": "st_simdiff_select", "tau_sim": 0.7}
    (tmp_path / "s.json").write_text(json.dumps({"name": "keep_all"}))
    assert parse_spec(str(tmp_path / "s.json"), SOURCE) == {"name": "keep_all"}


@pytest.mark.parametrize("spec, message", [
    ("", "TOKENREDUCE_VLLM_STRATEGY is empty"),
    ("{name: 1}", "TOKENREDUCE_VLLM_STRATEGY is not valid JSON"),
    ('{"seed": 3}', 'a JSON object needs a "name" key'),
    ("/no/such/file.yaml", "does not exist"),
])
def test_unreadable_choices_name_the_variable(spec, message):
    with pytest.raises(tr.TokenReduceError, match=message):
        ServingStrategy.from_spec(spec, SOURCE)


def test_unknown_strategy_names_the_variable():
    with pytest.raises(tr.UnknownNameError, match="TOKENREDUCE_VLLM_STRATEGY: unknown strategy 'nope'"):
        ServingStrategy.from_spec("nope", SOURCE)


@pytest.mark.parametrize("spec, reason", [
    ("fastv", "fastv runs inside the language model (before decoder layer 2"),
    ("attention_prune", "attention_prune runs inside the language model"),
    ("framefusion", "framefusion runs inside the language model"),
    ("st_simdiff", "st_simdiff runs inside the language model"),
    ('{"name": "st_simdiff", "variant": "reference"}', "its step st_simdiff_reference_stage2 runs inside the language"),
    ("visionzip", "visionzip reads the vision encoder's attention"),
    ("fastervlm", "fastervlm reads the vision encoder's attention"),
    ('{"name": "pipeline", "steps": ["st_simdiff_select", "fastv"]}', "its step fastv runs inside"),
    ('{"name": "fit_budget", "strategy": "fastv"}', "fit_budget runs inside the language model"),
])
def test_strategies_that_need_the_model_are_refused(spec, reason):
    with pytest.raises(tr.ServingError, match="cannot run in a serving engine") as raised:
        ServingStrategy.from_spec(spec, SOURCE)
    assert reason in str(raised.value)
    assert "Strategies that can: " in str(raised.value)


def test_which_strategies_can_serve():
    servable = set(servable_strategies())
    assert {"uniform", "random", "keep_all", "st_simdiff_select", "fit_budget", "pipeline", "evs", "vidcom2"} <= servable
    assert not servable & {"fastv", "attention_prune", "framefusion", "st_simdiff", "st_simdiff_reference_stage2",
                           "dart", "flashvid", "holitom", "visionzip", "fastervlm", "prumerge_plus"}


@pytest.mark.parametrize("spec", ['{"name": "uniform", "ratio": 0.3}', '{"name": "random", "count": 9}',
                                  '{"name": "fit_budget", "ratio": 0.5}', '{"name": "evs", "prune_ratio": 0.5}',
                                  '{"name": "st_simdiff_select", "ratio": 0.5}'])
def test_a_budget_of_its_own_contradicts_the_engines(spec):
    with pytest.raises(tr.ServingError, match="keeps the count the engine reserves per video"):
        ServingStrategy.from_spec(spec, SOURCE)


def test_budgeted_strategies_get_the_count_and_content_driven_ones_are_fitted():
    uniform = ServingStrategy.from_spec('{"name": "uniform", "per_frame": true}', SOURCE)
    reducer = uniform.reducer_for(7)
    assert (reducer.config.count, reducer.config.ratio, reducer.config.per_frame) == (7, None, True)
    assert uniform.reducer_for(7) is reducer
    evs = ServingStrategy.from_spec("evs", SOURCE).reducer_for(9)
    assert (evs.config.count, evs.config.ratio, evs.config.prune_ratio) == (9, None, None)
    # st_simdiff_select takes the budget language: its union trimmed or filled to the count; its
    # eq. 5 rate (retention) is not a budget and stays
    select = ServingStrategy.from_spec('{"name": "st_simdiff_select", "tau_sim": 0.6, "retention": 0.5}', SOURCE)
    trimmed = select.reducer_for(5)
    assert (type(trimmed).__name__, trimmed.config.count, trimmed.config.ratio, trimmed.config.retention) == \
        ("STSimDiffSelect", 5, None, 0.5)
    stage1 = ServingStrategy.from_spec('{"name": "st_simdiff_reference_stage1", "tau_sim": 0.6}', SOURCE)
    fitted = stage1.reducer_for(5)
    assert isinstance(fitted, FitBudget) and fitted.config.count == 5
    assert fitted.config.strategy == tr.build("st_simdiff_reference_stage1", tau_sim=0.6).config


@pytest.mark.parametrize("spec", ["uniform", '{"name": "random", "seed": 5}', "st_simdiff_select", "keep_all", "evs",
                                  "vidcom2",
                                  '{"name": "pipeline", "steps": ["st_simdiff_select", {"name": "uniform"}]}'])
def test_select_keeps_exactly_the_count_as_the_reducer_would(spec):
    strategy = ServingStrategy.from_spec(spec, SOURCE)
    grid = (3, 2, 4)
    embeds = torch.randn(24, 16, generator=torch.Generator().manual_seed(0))
    embeds[8:16] = embeds[:8] + 0.01 * embeds[16:24]  # a near-static second frame
    for count in (1, 5, 24):
        selection = strategy.select(embeds, grid, count, num_layers=4)
        assert selection.keep.dtype == torch.bool and int(selection.keep.sum()) == count
        direct = strategy.reducer_for(count)(tr.VisualTokens(embeds.reshape(1, *grid, 16), num_layers=4))
        assert torch.equal(selection.keep, direct.keep_mask[0])
        assert selection.features is None and selection.seconds >= 0


def test_select_checks_its_inputs():
    strategy = ServingStrategy.from_spec("uniform", SOURCE)
    with pytest.raises(ValueError, match=r"embeds must be \[T\*H\*W, D\] = \[12, D\]"):
        strategy.select(torch.randn(10, 4), (3, 2, 2), 4)
    with pytest.raises(ValueError, match=r"count must be in \[1, 12\]"):
        strategy.select(torch.randn(12, 4), (3, 2, 2), 13)


def test_selection_in_a_transformers_model_is_the_same():
    """What tr.apply keeps in a Qwen2.5-VL equals select() on the embeddings its language model received."""
    from adapters.tiny_vlms import qwen2_5_vl, qwen_inputs

    model = qwen2_5_vl()
    inputs = qwen_inputs([(4, 4, 6)], prompt_lens=(2, 3))
    inputs = {k: v[:1] if k in ("input_ids", "attention_mask", "mm_token_type_ids") else v for k, v in inputs.items()}
    strategy = ServingStrategy.from_spec("st_simdiff_select", SOURCE)
    received = {}

    def record(module, args, kwargs):
        received["embeds"] = kwargs["inputs_embeds"]

    hook = model.model.language_model.register_forward_pre_hook(record, with_kwargs=True)
    with torch.no_grad():
        model(**inputs)
    hook.remove()
    video = received["embeds"][0][inputs["input_ids"][0] == model.config.video_token_id]
    grid = (4, 2, 3)
    selection = strategy.select(video, grid, 7, num_layers=len(model.model.language_model.layers))
    with tr.apply(model, strategy.reducer_for(7)) as session, torch.no_grad():
        model(**inputs)
        kept = session.kept_indices()[0]
        assert session.video_grids() == [(0, grid)]
    assert kept.tolist() == selection.keep.nonzero().flatten().tolist()


def test_record_appends_one_line_per_video(tmp_path):
    strategy = ServingStrategy.from_spec("uniform", SOURCE)
    path = tmp_path / "kept.jsonl"
    for count in (2, 3):
        strategy.record(path, (1, 2, 3), count, strategy.select(torch.randn(6, 4), (1, 2, 3), count))
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["count"] for line in lines] == [2, 3]
    assert lines[0]["kept"] == [1, 4] and lines[0]["grid"] == [1, 2, 3]
    assert lines[0]["strategy"] == {"name": "uniform", "ratio": None, "count": 2, "per_frame": False}


def test_plugin_does_nothing_without_a_strategy_and_refuses_a_bad_one_at_load(monkeypatch):
    monkeypatch.delenv(vllm_serving.ENV_STRATEGY, raising=False)
    assert vllm_serving.register() is None
    monkeypatch.setenv(vllm_serving.ENV_STRATEGY, "fastv")
    with pytest.raises(tr.ServingError, match="TOKENREDUCE_VLLM_STRATEGY: fastv cannot run in a serving engine"):
        vllm_serving.register()


class _Ids:
    video_token_id, image_token_id, vision_start_token_id, vision_end_token_id = 6, 5, 3, 4


def test_outer_video_markers_read_as_text():
    # <vs> ts ts <vs> v v <ve> ts <vs> <ve> <ve>  then an image  <vs> img <ve>
    ids = [1, 3, 9, 9, 3, 6, 6, 4, 9, 3, 4, 4, 3, 5, 4]
    fixed = vllm_serving._outer_video_starts_as_text(ids, _Ids)
    assert fixed == [1, 4, 9, 9, 3, 6, 6, 4, 9, 3, 4, 4, 3, 5, 4]
    tensor = vllm_serving._outer_video_starts_as_text(torch.tensor(ids), _Ids)
    assert tensor.tolist() == fixed
    old_layout = [1, 9, 3, 6, 4, 9, 3, 4]  # timestamps first, no outer marker: unchanged
    assert vllm_serving._outer_video_starts_as_text(old_layout, _Ids) is old_layout


def test_kept_embeddings_take_merged_features_and_keep_extra_channels():
    emb = torch.arange(12.0).reshape(4, 3)  # 2 feature channels + 1 extra (deepstack-like)
    keep = torch.tensor([True, False, True, False])
    plain = vllm_serving._kept_embeddings(emb, VideoSelection(keep, None, 0.0), 2)
    assert torch.equal(plain, emb[keep])
    merged = torch.full((4, 2), -1.0)
    out = vllm_serving._kept_embeddings(emb, VideoSelection(keep, merged, 0.0), 2)
    assert out.tolist() == [[-1.0, -1.0, 2.0], [-1.0, -1.0, 8.0]]
