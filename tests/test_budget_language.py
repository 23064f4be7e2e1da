"""One budget language: every registered strategy takes ``ratio`` (the share of a video's visual
tokens that reach the LLM, new tokens counted) and ``count``, and at ratio 0.3 keeps 30 % of a real
video, within what its reference semantics force (docs/strategies.md, "Budgets").

The realistic grid: 16 frames of the bundled Big Buck Bunny clip through the weight-free stand-in
encoder (16 x 9 patches, d = 256), with the demo's proxy signals and the 28 layers of the paper's
LLM. New strategies are covered by registering. The table of what each strategy keeps is in
docs/strategies.md ("Budgets")."""

from __future__ import annotations

import pytest

import tokenreduce as tr
from tokenreduce.compare import tokens_for
from tokenreduce.pipeline import run_in_order

pytest.importorskip("av")
STRATEGY_NAMES = tr.list_strategies()
BUDGETED = [n for n in STRATEGY_NAMES if tr.STRATEGIES.get(n).budgeted]


@pytest.fixture(scope="module")
def video():
    from tokenreduce.encoders import StandInEncoder
    from tokenreduce.video import demo_video_path, load_video

    clip = load_video(demo_video_path(), 16, max_side=448)
    return StandInEncoder(cols=16).encode(clip.frames)


def share(reducer: tr.Reducer, video) -> float:
    """The share of the video the budgeted steps hand on (``Reducer.budget_steps``: every step but a
    refinement with its own budget deep in the LLM, e.g. FlashVID's pruning at layer 20)."""
    tokens, _ = tokens_for(reducer, video)
    return float(run_in_order(reducer.budget_steps(), tokens).output_counts()[0]) / tokens.num_tokens


def built_with_ratio(name: str, ratio: float) -> tr.Reducer:
    """``tr.build(name, ratio=r)``; a pipeline has no steps by default, so its first example at r."""
    cls = tr.STRATEGIES.get(name)
    if issubclass(cls, tr.Pipeline):
        return tr.build(cls.at_budget(ratio, cls.examples()[0]))
    return tr.build(name, ratio=ratio)


@pytest.mark.parametrize("name", BUDGETED)
def test_every_strategy_at_ratio_0_3_keeps_30_percent_of_a_real_video(name, video):
    assert 0.25 <= share(built_with_ratio(name, 0.3), video) <= 0.35
    cls = tr.STRATEGIES.get(name)
    canonical = tr.build(cls.at_budget(0.3, cls.examples()[0]))  # the setting the adapter matrix runs
    assert 0.25 <= share(canonical, video) <= 0.35


@pytest.mark.parametrize("name", BUDGETED)
def test_a_count_means_the_same_for_every_strategy(name, video):
    cls = tr.STRATEGIES.get(name)
    example = cls.examples()[0]
    assert 0.25 <= share(cls(cls.with_budget(example, count=691)), video) <= 0.35


def test_the_budget_test_covers_every_registered_strategy():
    unbudgeted = set(STRATEGY_NAMES) - set(BUDGETED)
    assert unbudgeted == {"keep_all"}, "only the ratio-1 control may opt out of the budget language"
    assert {"st_simdiff", "framefusion", "visionzip", "prumerge_plus", "fastv", "pipeline"} <= set(BUDGETED)


def test_keep_all_takes_only_ratio_1():
    assert tr.build("keep_all", ratio=1.0).config.ratio == 1.0
    for bad in ({"ratio": 0.3}, {"count": 4}):
        with pytest.raises(tr.ConfigError, match="keep_all keeps every token"):
            tr.STRATEGIES.get("keep_all").with_budget(**bad)
    with pytest.raises(tr.ConfigError, match="ratio=0.3"):
        tr.build("keep_all", ratio=0.3)


@pytest.mark.parametrize("name,alternative", [("framefusion", {"cost": 0.3}), ("fastv", {"prune_ratio": 0.5}),
                                              ("visionzip", {"dominant": 10, "contextual": 2}),
                                              ("st_simdiff", {"cost": 0.3}), ("evs", {"prune_ratio": 0.5}),
                                              ("st_simdiff_reference_stage2", {"cost": 0.3})])
def test_reference_budgets_are_alternatives_that_at_budget_replaces(name, alternative):
    cls = tr.STRATEGIES.get(name)
    with pytest.raises(tr.ConfigError, match="give one budget"):
        tr.build(name, ratio=0.3, **alternative)
    config = cls.at_budget(0.4, alternative)
    assert config.ratio == 0.4 and all(getattr(config, k) is None for k in alternative)
    assert tr.build(name, **alternative).config.ratio is None  # the alternative stands alone


def test_at_budget_refuses_another_strategys_settings_and_bad_ratios():
    cls = tr.STRATEGIES.get("uniform")
    with pytest.raises(tr.ConfigError, match="settings of 'random'"):
        cls.at_budget(0.3, {"name": "random", "ratio": 0.5})
    with pytest.raises(tr.ConfigError, match="ratio"):
        cls.at_budget(1.5)


def test_a_pipelines_budget_is_its_last_budgeted_steps():
    pipe = tr.build({"name": "pipeline", "ratio": 0.2,
                     "steps": [{"name": "uniform", "ratio": 0.6}, {"name": "attention_prune", "layer": 1},
                               {"name": "keep_all"}]})
    steps = {cfg.name: cfg for cfg in pipe.config.steps}
    assert steps["uniform"].ratio == 0.6 and steps["attention_prune"].ratio == 0.2
    assert tr.build(pipe.config.to_dict()).config == pipe.config  # round-trips
    with pytest.raises(tr.ConfigError, match="needs a step with a budget"):
        tr.build("pipeline", ratio=0.3)
