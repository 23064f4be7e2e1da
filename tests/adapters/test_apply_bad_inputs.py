"""Hostile and odd inputs to ``tr.apply``: each row is one bad call; it must raise a tokenreduce error
naming the culprit before anything is installed (the model is left exactly as it was). The other
entry points' rows are in tests/test_bad_inputs.py."""

from __future__ import annotations

import pytest
import tiny_vlms as tm
import torch

import tokenreduce as tr
from tokenreduce.errors import InputError, InputTypeError

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def model():
    return tm.qwen2_vl()


def hooks(module: torch.nn.Module) -> dict[str, tuple]:
    return {name: (tuple(m._forward_pre_hooks), tuple(m._forward_hooks)) for name, m in module.named_modules()}


def row(id: str, call, error, *names: str):
    return pytest.param(call, error, names, id=id)


APPLY = [
    row("model-not-a-module", lambda m: tr.apply([m], tr.build("keep_all")), InputTypeError, "model", "list"),
    row("model-on-meta", lambda m: tr.apply(tm.qwen2_vl().to("meta"), tr.build("keep_all")), InputError,
        "meta", "Qwen2VLForConditionalGeneration"),
    row("model-unsupported", lambda m: tr.apply(torch.nn.Linear(2, 2), tr.build("keep_all")), tr.UnknownNameError,
        "Linear", "generic"),
    row("reducer-a-name", lambda m: tr.apply(m, "random"), InputTypeError, "reducer", "str"),
    row("reducer-a-config", lambda m: tr.apply(m, tr.build("random").config), InputTypeError, "reducer"),
    row("adapter-unknown", lambda m: tr.apply(m, tr.build("keep_all"), adapter="nope"), tr.UnknownNameError,
        "adapter", "nope"),
    row("positions-unknown", lambda m: tr.apply(m, tr.build("keep_all"), positions="x" * 10**6), InputError,
        "positions"),
    row("positions-contiguous-in-llm", lambda m: tr.apply(m, tr.build("fastv", layer=1), positions="contiguous"),
        InputError, "contiguous", "pre-LLM"),
    row("probe_queries-zero", lambda m: tr.apply(m, tr.build("keep_all"), probe_queries=0), InputError,
        "probe_queries"),
    row("probe_queries-float", lambda m: tr.apply(m, tr.build("keep_all"), probe_queries=1.0), InputError,
        "probe_queries"),
    row("layer-beyond-decoder", lambda m: tr.apply(m, tr.build("fastv", layer=10**9)), tr.ConfigError,
        "fastv.layer", "[1, 2]"),
    row("encoder-layer-beyond-tower", lambda m: tr.apply(m, tr.build("fastervlm", encoder_layer=10**9)),
        tr.ConfigError, "encoder_layer", "outside"),
    row("session-option-unknown", lambda m: tr.apply(m, tr.build("keep_all"), colour="red"), InputTypeError, "colour",
        "positions"),
]


@pytest.mark.parametrize("call, error, names", APPLY)
def test_apply_rejects_and_leaves_the_model_alone(model, call, error, names):
    before = hooks(model)
    with pytest.raises(error) as info:
        call(model)
    message = str(info.value)
    assert isinstance(info.value, tr.TokenReduceError), message
    assert len(message) < 1000, message[:300]
    assert all(name in message for name in names), message
    assert hooks(model) == before
    with tr.apply(model, tr.build("keep_all")):  # nothing was left applied
        pass
