"""What a reduced model run decided outlives the ``with`` block: per prefill and per video, the kept
flat indices, roles, the importance each step used, the budget and the time, as JSON; a budget that
keeps everything warns once."""

from __future__ import annotations

import json
import warnings

import pytest
import tiny_vlms as tm
import torch

import tokenreduce as tr
from tokenreduce.selection import top_k_mask

pytest.importorskip("transformers")

GRIDS = [(2, 4, 6), (2, 4, 4)]  # two videos of 12 and 8 LLM tokens


def run(reducer, grids=GRIDS, generate=True):
    model = tm.qwen2_vl()
    inputs = tm.qwen_inputs(grids)
    with torch.no_grad(), tr.apply(model, reducer) as session:
        if generate:
            model.generate(**inputs, max_new_tokens=2, do_sample=False)
        else:
            model(**inputs)
        inside = [k.clone() for k in session.kept_indices()]
    return session, inside


def test_results_outlive_the_session_and_serialise():
    session, inside = run(tr.build("attention_prune", ratio=0.3, layer=1))
    kept = session.kept_indices()
    assert [k.tolist() for k in kept] == [k.tolist() for k in inside] and [k.numel() for k in kept] == [4, 3]
    assert session.video_grids() == [(0, (2, 2, 3)), (1, (2, 2, 2))] and session.layer_lengths
    assert session.decode_steps == 1
    data = json.loads(json.dumps(session.report()))
    assert data["reducer"]["name"] == "attention_prune" and len(data["prefills"]) == 1
    first = data["prefills"][0]["videos"][0]
    assert first["kept"] == kept[0].tolist() and first["budget"] == {"ratio": 0.3}
    assert first["tokens"] == 12 and first["share"] == pytest.approx(4 / 12) and first["seconds"] > 0
    [step] = first["steps"]
    assert (step["name"], step["stage"], step["layer"], step["kept"]) == ("attention_prune", "in_llm", 1, 4)
    assert len(step["importance"]) == 12 and None not in step["importance"]


def test_the_recorded_importance_is_what_the_step_ranked_by():
    session, _ = run(tr.build("attention_prune", ratio=0.5, layer=1))
    for video in session.last.videos:
        importance = video.importance
        again = top_k_mask(importance[None], torch.tensor([video.kept.numel()]))[0]
        assert again.nonzero().flatten().tolist() == video.kept.tolist()
        assert bool(((video.roles & int(tr.Role.KEPT)) != 0).nonzero().flatten().eq(video.kept).all())
        assert bool(((video.roles[video.kept] & int(tr.Role.IMPORTANT)) != 0).all())


def test_every_prefill_is_recorded_and_decode_steps_are_not(tmp_path):
    model = tm.qwen2_vl()
    with torch.no_grad(), tr.apply(model, tr.build("random", ratio=0.5)) as session:
        model.generate(**tm.qwen_inputs(GRIDS), max_new_tokens=3, do_sample=False)
        model.generate(**tm.qwen_inputs([(2, 4, 4)]), max_new_tokens=2, do_sample=False)
    assert [len(r.videos) for r in session.records] == [2, 1]
    assert [v.grid for v in session.records[0].videos] == [(2, 2, 3), (2, 2, 2)]
    path = session.save_report(tmp_path / "run.json")
    saved = json.loads(path.read_text())
    assert [len(p["videos"]) for p in saved["prefills"]] == [2, 1]
    assert saved["prefills"][1]["videos"][0]["kept"] == session.kept_indices()[0].tolist()


def test_layerwise_steps_record_every_layer_and_merge_roles():
    session, _ = run(tr.build("framefusion", ratio=0.5, similarity_lower_bound=-1.0), generate=False)
    video = session.last.videos[0]
    layers = [step.layer for step in video.steps]
    assert layers[0] == 0 and layers == sorted(layers) and {s.name for s in video.steps} == {"framefusion"}
    assert video.steps[-1].kept == video.kept.numel()
    counts = video.role_counts()
    assert counts["MERGED"] > 0 and counts["ABSORBED"] > 0


def test_a_budget_that_keeps_everything_warns_once():
    model = tm.llava_onevision()
    inputs = tm.llava_inputs([3, 3], 2, 1)  # 2x2 tokens per frame: VisionZip's 191 + 30 keep all of them
    with pytest.warns(tr.BudgetWarning, match="visionzip kept every visual token") as caught, torch.no_grad(), \
            tr.apply(model, tr.build("visionzip")):
        model.generate(**inputs, max_new_tokens=1, do_sample=False)
        model.generate(**inputs, max_new_tokens=1, do_sample=False)
    budget_warnings = [w for w in caught if issubclass(w.category, tr.BudgetWarning)]
    assert len(budget_warnings) == 1
    assert "give a budget the videos can meet" in str(budget_warnings[0].message)
    assert budget_warnings[0].filename == __file__  # it points at the user's generate call, not at the hooks
    for quiet in (tr.build("keep_all"), tr.build("random", ratio=1.0), tr.build("visionzip", ratio=0.5)):
        with warnings.catch_warnings(), torch.no_grad(), tr.apply(model, quiet):
            warnings.simplefilter("error", tr.BudgetWarning)
            model.generate(**inputs, max_new_tokens=1, do_sample=False)


def test_a_strategy_whose_own_rule_keeps_everything_says_so():
    """A ratio the video could meet, kept in full by the strategy's rule (stage 1 of the reference
    ST-SimDiff drops whole components only, and random weights on a tiny grid make none)."""
    model = tm.qwen2_vl()
    inputs = tm.qwen_inputs([(2, 4, 6)])  # a (2, 2, 3) grid of LLM tokens
    with pytest.warns(tr.BudgetWarning) as caught, torch.no_grad(), \
            tr.apply(model, tr.build("st_simdiff_reference_stage1", ratio=0.3)) as session:
        model(**inputs)
    assert session.last.videos[0].share == 1
    message = str(next(w for w in caught if issubclass(w.category, tr.BudgetWarning)).message)
    assert "st_simdiff_reference_stage1's own rule kept them all" in message and "give a budget" not in message


def test_a_model_runs_record_is_drawn_with_its_own_roles():
    import numpy as np

    from tokenreduce.compare import StrategyRun, format_table
    from tokenreduce.viz import CELL_PIXELS, DROPPED_BRIGHTNESS, overlay

    model = tm.llava_onevision()
    with torch.no_grad(), tr.apply(model, tr.build("visionzip", dominant=2, contextual=1, cls_token=False)) as session:
        model(**tm.llava_inputs([3, 3], 2, 1))
    video = json.loads(json.dumps(session.report()))["prefills"][0]["videos"][0]  # what a saved report holds
    run = StrategyRun.from_record("visionzip (model)", session.last.videos[0])
    assert run.kept == len(video["kept"]) + video["inserted"] and run.total == video["tokens"] == 12
    assert run.role_count("ABSORBED") == video["role_counts"]["ABSORBED"] > 0
    assert "visionzip (model)" in format_table([run]) and run.proxies == ()
    t, h, w = run.reduction.grid
    frames = np.ones((t, h * CELL_PIXELS, w * CELL_PIXELS, 3))
    drawn = overlay(frames, run.reduction.roles[0].reshape(t, h, w).numpy())
    bright = drawn[:, ::CELL_PIXELS, ::CELL_PIXELS, 0].reshape(-1) > DROPPED_BRIGHTNESS  # one pixel per token
    assert bright.nonzero()[0].tolist() == video["kept"]
