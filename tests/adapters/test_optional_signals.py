"""Signals a reducer declares as optional are provided inside a model (ST-SimDiff's paper variant
builds its graph on the LLM input embeddings even though it runs before decoder layer 2)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import pytest
import torch

import tokenreduce as tr
import tiny_vlms as tm
from adapter_oracle import capture_lm_inputs
from tokenreduce.interfaces import BudgetConfig, BudgetedReducer, InLLMConfig, Signal, Stage
from tokenreduce.tokens import Reduction

pytest.importorskip("transformers")


@pytest.fixture
def recorder():
    seen: list[tr.VisualTokens] = []

    @tr.register_strategy("test_records_optional_embeddings")
    class RecordsEmbeddings(BudgetedReducer):
        """Keeps all; records the tokens it is given at layer 2."""

        stage: ClassVar[Stage] = Stage.IN_LLM
        optional: ClassVar[frozenset[Signal]] = frozenset({Signal.EMBEDDINGS})

        @dataclasses.dataclass
        class Config(BudgetConfig, InLLMConfig):
            pass

        def reduce(self, tokens):
            seen.append(tokens)
            valid = tokens.flat_valid()
            return Reduction(valid, grid=tokens.grid, valid=valid)

    yield seen
    tr.STRATEGIES.unregister("test_records_optional_embeddings")


def test_optional_embeddings_are_the_llm_input_embeddings(recorder):
    model = tm.qwen2_vl(num_layers=3)
    inputs = tm.qwen_inputs([(2, 4, 6)])
    lm = model.model.language_model
    embeds = capture_lm_inputs(model, lm, inputs)["inputs_embeds"]
    video = inputs["input_ids"][0] == tm.VIDEO
    with torch.no_grad(), tr.apply(model, tr.build("test_records_optional_embeddings", ratio=1.0)):
        model(**inputs)
    (tokens,) = recorder
    assert "embeddings" in tokens.signals
    torch.testing.assert_close(tokens.flat_signal("embeddings")[0], embeds[0, video])
    assert not torch.allclose(tokens.flat_features()[0], embeds[0, video]), "features are layer-2 hidden states"


def test_st_simdiff_paper_variant_gets_embeddings_in_a_model(monkeypatch):
    seen = []
    cls = tr.STRATEGIES.get("st_simdiff")
    original = cls.reduce

    def spy(self, tokens):
        seen.append(sorted(tokens.signals))
        return original(self, tokens)

    monkeypatch.setattr(cls, "reduce", spy)
    model = tm.qwen2_vl(num_layers=3)
    with torch.no_grad(), tr.apply(model, tr.build("st_simdiff", ratio=0.3)):
        model(**tm.qwen_inputs([(2, 4, 6)]))
    assert seen == [["embeddings"]]
