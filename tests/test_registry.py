"""Registries: decorator registration, clear lookups, and third-party plugins via entry points."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from plugins import forget_plugins, write_plugin

import tokenreduce as tr
from tokenreduce.registry import Registry

PLUGIN_MODULE = '''
"""A third-party strategy published through an entry point."""
import torch
import tokenreduce as tr


class EveryOther(tr.Reducer):
    """Keep every other valid token (a plugin strategy)."""

    def reduce(self, tokens):
        valid = tokens.flat_valid()
        keep = valid & (torch.arange(tokens.num_tokens) % 2 == 0)
        return tr.Reduction(keep, grid=tokens.grid, valid=valid)
'''


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    write_plugin(
        tmp_path,
        """
        [tokenreduce.strategies]
        every_other = throwaway_strategy:EveryOther
        broken_plugin = throwaway_broken:Missing
        """,
        {"throwaway_strategy": PLUGIN_MODULE, "throwaway_broken": "raise ImportError('no such backend')\n"},
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    tr.STRATEGIES.refresh()
    yield tmp_path
    forget_plugins(["every_other", "broken_plugin"], ["throwaway_strategy", "throwaway_broken"])


def test_entry_point_plugin_builds_by_name(plugin_dir):
    assert "every_other" in tr.list_strategies()  # listed before it is imported
    assert "throwaway_strategy" not in sys.modules  # discovery is lazy
    reducer = tr.build("every_other")
    red = reducer(tr.VisualTokens(torch.randn(1, 2, 2, 2, 3)))
    assert red.keep_indices(0).tolist() == [0, 2, 4, 6]
    assert "entry point throwaway_strategy:EveryOther of throwaway-plugin" in tr.STRATEGIES.origin("every_other")
    assert tr.build(reducer.config.to_dict()).config.name == "every_other"


def test_broken_plugin_only_warns(plugin_dir):
    with pytest.warns(tr.PluginWarning, match=r"'broken_plugin'.*throwaway_broken:Missing.*no such backend") as caught:
        names = [name for name, _ in tr.STRATEGIES.items()]
    assert "every_other" in names and "broken_plugin" not in names
    assert {w.filename for w in caught if issubclass(w.category, tr.PluginWarning)} == {__file__}  # the user's line
    with pytest.raises(tr.UnknownNameError):
        tr.build("broken_plugin")


def test_broken_plugin_never_breaks_import(plugin_dir):
    code = "import tokenreduce as tr; print(sorted(n for n, _ in tr.STRATEGIES.items()))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": f"{plugin_dir}:{Path(tr.__file__).parent.parent}",
                               "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert "every_other" in done.stdout
    assert "broken_plugin" in done.stderr and "PluginWarning" in done.stderr


def test_duplicate_names_name_both_origins():
    registry = Registry("widget", "widget")

    @registry.register("thing")
    class First:
        pass

    with pytest.raises(tr.DuplicateRegistrationError) as info:
        @registry.register("thing")
        class Second:
            pass
    message = str(info.value)
    assert "First" in message and "Second" in message and "'thing'" in message
    registry.register("thing")(First)  # registering the same class again is harmless


def test_defining_the_same_class_again_replaces_it():
    """A notebook cell that defines and registers a strategy can run twice: the latest class wins."""
    source = (
        "import dataclasses\n"
        "import tokenreduce as tr\n"
        "@tr.register_strategy('test_redefined')\n"
        "class Redefined(tr.BudgetedReducer):\n"
        "    @dataclasses.dataclass\n"
        "    class Config(tr.BudgetConfig):\n"
        "        version: int = VERSION\n"
        "    def reduce(self, tokens):\n"
        "        raise NotImplementedError\n"
    )
    cell = {"__name__": "__main__"}
    try:
        for version in (1, 2):
            exec(source.replace("VERSION", str(version)), cell)  # the cell, run twice in one kernel
            assert tr.build("test_redefined").config.version == version
            assert tr.STRATEGIES.get("test_redefined") is cell["Redefined"]
    finally:
        tr.STRATEGIES.unregister("test_redefined")


def test_duplicate_of_builtin_strategy():
    with pytest.raises(tr.DuplicateRegistrationError, match=r"tokenreduce\.strategies\.random_select\.RandomSelect"):
        @tr.register_strategy("random")
        class MyRandom(tr.Reducer):
            def reduce(self, tokens):
                raise NotImplementedError


def test_unknown_name_lists_close_matches():
    with pytest.raises(tr.UnknownNameError) as info:
        tr.build("randon")
    assert "did you mean 'random'" in str(info.value)
    assert "Registered:" in str(info.value)
    with pytest.raises(LookupError):  # catchable as a builtin too
        tr.build("no_such_strategy_at_all")


def test_registries_are_reachable_by_kind():
    assert tr.registry_for("strategy") is tr.STRATEGIES
    assert tr.registry_for("community") is tr.COMMUNITY
    assert tr.registry_for("adapter") is tr.ADAPTERS
    with pytest.raises(tr.UnknownNameError, match="kinds"):
        tr.registry_for("nope")
