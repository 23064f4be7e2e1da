"""The contract file is the contract: ``interfaces.py`` holds the reducer contract and the config
parts strategies share; the graph's building blocks live beside the graph, and only the swappable
one (community detectors) is a registry."""

from __future__ import annotations

import ast
import pathlib

import pytest

import tokenreduce as tr
from tokenreduce.interfaces import InLLMConfig
from tokenreduce.testing import build_example

PACKAGE = pathlib.Path(tr.__file__).parent


def imports_of(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_interfaces_and_the_graph_do_not_import_each_other():
    assert not any(m.startswith("tokenreduce.graph") for m in imports_of(PACKAGE / "interfaces.py"))
    assert "tokenreduce.interfaces" not in imports_of(PACKAGE / "graph" / "token_graph.py")


def test_only_swappable_building_blocks_have_registries():
    assert set(tr.registry_for.__globals__["REGISTRIES"]) == {"strategy", "community", "adapter"}
    with pytest.raises(tr.UnknownNameError, match="kinds: strategy, community, adapter"):
        tr.build_component("events", "temporal_difference")
    assert issubclass(tr.COMMUNITY.get("leiden"), tr.CommunityDetector)
    for gone in ("GraphBuilder", "EventDetector", "BudgetPruner", "ImportanceScorer"):
        assert not hasattr(tr, gone)


@pytest.mark.parametrize("name", tr.list_strategies())
def test_every_in_llm_step_has_the_shared_layer_config(name):
    cls = tr.STRATEGIES.get(name)
    for example in cls.examples():
        for step in build_example(cls, example).steps():
            if step.stage is tr.Stage.IN_LLM:
                assert isinstance(step.config, InLLMConfig), f"{step.config.name} repeats its own layer fields"
                assert step.layer == step.config.layer and step.position == step.config.position


@pytest.mark.parametrize("name,first", [("attention_prune", 1), ("fastv", 1), ("st_simdiff", 1),
                                        ("st_simdiff_reference_stage2", 1), ("framefusion", 0)])
def test_layer_and_position_are_checked_in_one_place(name, first):
    with pytest.raises(tr.ConfigError, match=f"{name}.layer must be >= {first}"):
        tr.build(name, layer=first - 1)
    with pytest.raises(tr.ConfigError, match=f"{name}.position must be one of 'before_layer', 'after_attention'"):
        tr.build(name, position="inside")
    assert tr.build(name, layer=first, position="after_attention").position == "after_attention"
