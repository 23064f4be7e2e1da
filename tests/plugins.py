"""Throw-away installed distributions for plugin tests: a ``*.dist-info`` folder with
``entry_points.txt`` and the plugin's modules on ``sys.path`` (no network, no pip)."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import tokenreduce as tr


def write_plugin(root: Path, entry_points: str, modules: dict[str, str], dist: str = "throwaway-plugin") -> None:
    """Write ``modules`` (name -> source) and a distribution ``dist`` declaring ``entry_points``."""
    for name, source in modules.items():
        (root / f"{name}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))


def forget_plugins(names: list[str], modules: list[str]) -> None:
    """Undo what loading throw-away plugins did to the registries and ``sys.modules``."""
    for registry in (tr.STRATEGIES, tr.COMMUNITY, tr.ADAPTERS):
        for name in names:
            if name in registry._plugins:
                registry.unregister(name)
        registry.refresh()
    for module in modules:
        sys.modules.pop(module, None)
