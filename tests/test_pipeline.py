"""Pipeline: stage order, later steps see only earlier survivors, roles and budgets carry through."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import pytest
import torch
from factories import make_features, make_valid

import tokenreduce as tr


@pytest.fixture
def recording_step():
    """A strategy that records what it saw and keeps the first half of what is valid."""
    seen: list[tuple[str, torch.Tensor, torch.Tensor]] = []

    @tr.register_strategy("test_recording_encoder")
    class RecordingEncoder(tr.Reducer):
        """Encoder-stage recorder."""

        stage: ClassVar[tr.Stage] = tr.Stage.ENCODER

        @dataclasses.dataclass
        class Config(tr.Config):
            label: str = "encoder"

        def reduce(self, tokens):
            valid = tokens.flat_valid()
            seen.append((self.config.label, valid.clone(), tokens.budget_counts().clone()))
            rank = valid.long().cumsum(1)
            keep = valid & (rank <= (valid.sum(1, keepdim=True) + 1) // 2)
            roles = torch.full_like(keep, int(tr.Role.EVENT), dtype=torch.int32)
            return tr.Reduction(keep, roles, grid=tokens.grid, valid=valid)

    yield seen
    tr.STRATEGIES.unregister("test_recording_encoder")


def test_steps_run_in_stage_order(recording_step):
    pipe = tr.Pipeline([tr.build("attention_prune", ratio=0.25, layer=2),
                        tr.build("test_recording_encoder", label="enc")])
    assert [s.stage for s in pipe.steps()] == [tr.Stage.ENCODER, tr.Stage.IN_LLM]
    assert pipe.stage is tr.Stage.ENCODER
    assert tr.Signal.IMPORTANCE in pipe.requires


def test_later_step_sees_only_kept_tokens_and_roles_carry(recording_step):
    features = make_features(2, 2, 2, 4, 3)
    valid = make_valid(2, 2, 2, 4, seed=5)
    importance = torch.rand(2, 2, 2, 4)
    pipe = tr.Pipeline([tr.build("test_recording_encoder"), tr.build("attention_prune", ratio=0.25)])
    red = pipe(tr.VisualTokens(features, valid, importance))
    _, seen_valid, seen_base = recording_step[0]
    assert torch.equal(seen_valid, valid.reshape(2, -1))
    first = tr.build("test_recording_encoder")(tr.VisualTokens(features, valid, importance)).keep_mask
    assert bool((red.keep_mask <= first).all()), "second step kept a token the first dropped"
    n_valid = valid.reshape(2, -1).sum(1)
    expected = [min(-(-int(n) // 4), int(f)) for n, f in zip(n_valid, first.sum(1))]
    assert red.kept_counts().tolist() == expected  # ratio refers to the original count
    kept_roles = red.roles[red.keep_mask]
    assert bool((kept_roles & tr.Role.EVENT).all()) and bool((kept_roles & tr.Role.IMPORTANT).all())


def test_budget_base_is_the_original_count(recording_step):
    features = make_features(1, 2, 2, 4, 3)
    pipe = tr.Pipeline([tr.build("test_recording_encoder", label="a"), tr.build("test_recording_encoder", label="b")])
    red = pipe(tr.VisualTokens(features))
    assert [label for label, *_ in recording_step] == ["a", "b"]
    assert recording_step[1][1].sum().item() == 8  # b saw the 8 survivors of a
    assert recording_step[1][2].tolist() == [16]  # ... with the original count as budget base
    assert red.kept_counts().tolist() == [4]


def test_merged_features_flow_to_later_steps():
    @tr.register_strategy("test_doubler")
    class Doubler(tr.Reducer):
        """Keeps all, doubling the features (a stand-in merging step)."""

        def reduce(self, tokens):
            valid = tokens.flat_valid()
            return tr.Reduction(valid, grid=tokens.grid, valid=valid, features=tokens.flat_features() * 2)

    try:
        features = make_features(1, 1, 2, 2, 3)
        seen = []
        pipe = tr.Pipeline([tr.build("test_doubler"), tr.build("test_doubler")])
        red = pipe(tr.VisualTokens(features))
        seen.append(red.features)
        torch.testing.assert_close(red.features, features.reshape(1, 4, 3) * 4)
    finally:
        tr.STRATEGIES.unregister("test_doubler")


def test_pipeline_config_round_trip_and_empty_pipeline():
    pipe = tr.build({"name": "pipeline", "steps": [{"name": "uniform", "ratio": 0.5}, "random"]})
    assert [s.registered_name for s in pipe.steps()] == ["uniform", "random"]
    assert tr.build(pipe.config.to_dict()).config == pipe.config
    empty = tr.Pipeline()
    tokens = tr.VisualTokens(make_features(1, 2, 2, 2, 2))
    assert bool(empty(tokens).keep_mask.all())
    with pytest.raises(tr.UnknownNameError):
        tr.build({"name": "pipeline", "steps": [{"name": "nope"}]})
