"""Running several strategies on one encoded video (tokenreduce.compare)."""

from __future__ import annotations

import math

import pytest
import torch

import tokenreduce as tr
from tokenreduce.compare import (
    NOT_COMPARED,
    build_at_ratio,
    default_strategies,
    format_table,
    run_strategies,
    tokens_for,
)
from tokenreduce.encoders import EncodedVideo
from tokenreduce.interfaces import Reducer
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
    assert build_at_ratio("keep_all", 0.3).config.to_dict() == {"name": "keep_all"}


def test_per_frame_counts_follow_the_ratio():
    # VisionZip-style configs: ceil(0.3 * 144) = 44 tokens per frame, 1/6.4 of them contextual
    reducer = build_at_ratio("visionzip", 0.3, tokens_per_frame=144)
    config = reducer.config
    assert (config.dominant, config.contextual, config.cls_token) == (37, 7, False)
    runs, _ = run_strategies(["visionzip"], encoded_video(t=2, h=12, w=12), 0.3)
    assert runs[0].kept == 2 * 44  # dominant tokens kept in place plus contextual tokens


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


def test_strategies_missing_a_backend_are_skipped_with_the_reason():
    @tr.register_strategy("needs_backend_for_test")
    class NeedsBackend(Reducer):
        """Raises as a strategy with a missing optional backend does."""

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
