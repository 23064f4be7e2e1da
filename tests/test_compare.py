"""Running several strategies on one encoded video (tokenreduce.compare)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import tokenreduce as tr
from tokenreduce.compare import (
    DEFAULT_RATIO,
    NOT_COMPARED,
    budget_notes,
    build_at_ratio,
    default_strategies,
    format_table,
    run_strategies,
    tokens_for,
)
from tokenreduce.encoders import EncodedVideo
from tokenreduce.tokens import Reduction


def encoded_video(t=4, h=3, w=5, d=8) -> EncodedVideo:
    g = torch.Generator().manual_seed(0)
    return EncodedVideo(features=torch.randn(1, t, h, w, d, generator=g),
                        importance=torch.rand(1, t, h, w, generator=g), encoder="test",
                        proxies={"importance": "patch contrast", "keys": "features"}, num_layers=4)


def test_default_strategies_are_every_registered_reduction():
    names = default_strategies()
    assert set(names) == set(tr.STRATEGIES.names()) - NOT_COMPARED
    assert "uniform" in names and "keep_all" not in names


def test_build_at_ratio_sets_the_budget(tmp_path):
    assert build_at_ratio("uniform", 0.25).config.ratio == 0.25
    config = tmp_path / "mine.yaml"
    config.write_text("name: uniform\nper_frame: true\ncount: 7\n")
    reducer = build_at_ratio(str(config), 0.4)
    assert (reducer.config.ratio, reducer.config.count, reducer.config.per_frame) == (0.4, None, True)
    # reference budgets are replaced too: the strategy's own at_budget rule
    reducer = build_at_ratio({"name": "framefusion", "cost": 0.5, "similarity_lower_bound": 0.9}, 0.3)
    assert (reducer.config.ratio, reducer.config.cost, reducer.config.similarity_lower_bound) == (0.3, None, 0.9)
    with pytest.raises(tr.ConfigError, match="keep_all keeps every token"):
        build_at_ratio("keep_all", 0.3)


def test_without_a_ratio_names_get_the_default_and_files_keep_their_budget(tmp_path):
    config = tmp_path / "half.yaml"
    config.write_text("name: uniform\nratio: 0.5\n")
    assert build_at_ratio(str(config), None).config.ratio == 0.5
    assert build_at_ratio({"name": "fastv", "prune_ratio": 0.25}, None).config.prune_ratio == 0.25
    assert build_at_ratio("uniform", None).config.ratio == DEFAULT_RATIO


def test_visionzip_counts_follow_the_ratio():
    # ceil(0.3 * 2 * 144) = 87 tokens reach the LLM: per frame 44 / 43, of them round(k * 10/64) contextual
    runs, _ = run_strategies(["visionzip"], encoded_video(t=2, h=12, w=12), 0.3)
    assert runs[0].kept == 87
    assert runs[0].reduction.kept_counts().item() == (43 - 7) + (44 - 7)  # dominant patches in place


def test_only_declared_signals_are_given_and_proxies_are_named():
    encoded = encoded_video()
    tokens, proxies = tokens_for(tr.build("attention_prune"), encoded)
    assert tokens.importance is encoded.importance and proxies == ("importance=patch contrast",)
    tokens, proxies = tokens_for(tr.build("uniform"), encoded)
    assert tokens.importance is None and proxies == ()
    assert tokens.num_layers == 4


def test_runs_keep_the_budget_and_table_reports_them():
    encoded = encoded_video()
    runs, skipped = run_strategies(["uniform", "attention_prune"], encoded, 0.3)
    assert skipped == []
    expected = math.ceil(0.3 * 60)
    assert [run.kept for run in runs] == [expected, expected]
    # attention_prune on the proxy keeps exactly the top-contrast tokens
    top = encoded.importance.flatten().argsort(descending=True, stable=True)[:expected]
    assert set(runs[1].reduction.keep_indices(0).tolist()) == set(top.tolist())
    table = format_table(runs)
    assert "uniform" in table and "attention_prune" in table and "importance=patch contrast" in table
    assert f"{expected}" in table and "30.0" in table


def test_a_deeper_step_with_its_own_budget_is_reported_beside_the_budget():
    """FlashVID's ratio is what enters the LLM; its pruning at ``layer`` keeps ``llm_ratio`` of that.
    The run says both: the table counts all steps, the note what the budget measured."""
    encoded = encoded_video()
    runs, _ = run_strategies(["flashvid", "uniform"], encoded, 0.5)
    flashvid, uniform = runs
    reducer = build_at_ratio("flashvid", 0.5)
    tokens, _ = tokens_for(reducer, encoded)
    entered = reducer.budget_steps()[0](tokens)
    assert flashvid.budgeted == int(entered.output_counts()[0]) and flashvid.kept < flashvid.budgeted
    assert uniform.budgeted is None
    share = 100 * flashvid.budgeted / flashvid.total
    assert budget_notes(runs) == [(f"flashvid: {flashvid.budgeted} tokens ({share:.1f} %) reach the LLM at the "
                                   f"budget; {flashvid.kept} after its deeper step, which has a budget of its own")]


def test_strategies_missing_a_backend_are_skipped_with_the_reason():
    @tr.register_strategy("needs_backend_for_test")
    class NeedsBackend(tr.BudgetedReducer):
        """Raises as a strategy with a missing optional backend does."""

        @dataclasses.dataclass
        class Config(tr.BudgetConfig):
            pass

        def reduce(self, tokens) -> Reduction:
            raise tr.MissingDependencyError("install the graph extra")

    try:
        runs, skipped = run_strategies(["needs_backend_for_test", "uniform"], encoded_video(), 0.5)
    finally:
        tr.STRATEGIES.unregister("needs_backend_for_test")
    assert [run.label for run in runs] == ["uniform"]
    assert skipped == [("needs_backend_for_test", "install the graph extra")]


def test_unknown_strategy_is_an_error():
    with pytest.raises(tr.UnknownNameError, match="unifrom"):
        run_strategies(["unifrom"], encoded_video(), 0.5)
