"""The property suite every registered strategy must pass (new strategies join by registering).

Built on ``tokenreduce.testing``, the same checks a plugin package runs with ``check_strategy``;
here each check is a test of its own per strategy. Example counts follow the active hypothesis
profile (``tests/conftest.py``): with ``ci``'s 50, every strategy draws 100 examples for the
invariants and 50 for each of the batch, exact-budget and ratio-1 checks (at least 200 in all).
"""

from __future__ import annotations

import pytest
from hypothesis import settings

import tokenreduce as tr
from tokenreduce import testing

STRATEGY_NAMES = tr.list_strategies()


def examples() -> int:
    return settings.default.max_examples


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_examples_round_trip_and_reduce_the_suites_grids(name):
    testing.check_round_trip(name)
    testing.check_reduces_something(name)


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_invariants_and_determinism(name):
    testing.check_invariants(name, max_examples=2 * examples())


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_batch_equals_samples_one_by_one(name):
    testing.check_batch_consistency(name, max_examples=examples())


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_degenerate_grids(name):
    testing.check_degenerate_grids(name)


@pytest.mark.parametrize("name", [n for n in STRATEGY_NAMES if issubclass(tr.STRATEGIES.get(n), tr.BudgetedReducer)])
def test_ratio_and_count_budgets_are_exact(name):
    testing.check_exact_budget(name, max_examples=examples())


@pytest.mark.parametrize("name", [n for n in STRATEGY_NAMES if n != "pipeline"])
def test_ratio_one_keeps_everything(name):
    testing.check_ratio_one(name, max_examples=examples())


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_missing_required_signals_are_named(name):
    testing.check_missing_signals(name)


def test_every_strategy_is_listed():
    """The suite really covers the built-in strategies (guards against an empty parametrisation)."""
    assert {"keep_all", "random", "uniform", "attention_prune", "pipeline", "st_simdiff", "visionzip",
            "framefusion", "prumerge_plus"} <= set(STRATEGY_NAMES)
