"""The Python examples in the README and docs run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import tokenreduce as tr

ROOT = Path(__file__).resolve().parent.parent


def python_blocks(path: Path) -> list[str]:
    if not path.exists():
        pytest.skip("not running from a source checkout")
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.S)


def test_readme_example(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = [b for b in python_blocks(ROOT / "README.md") if "tr.VisualTokens(features)" in b]
    assert len(blocks) == 1
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    assert namespace["reduction"].kept_counts().tolist() == [812, 812]
    assert namespace["same"].config == namespace["pipe"].config


def test_writing_a_strategy_example():
    blocks = python_blocks(ROOT / "docs" / "writing-a-strategy.md")
    namespace: dict = {}
    try:
        exec(compile(blocks[0], "writing-a-strategy.md", "exec"), namespace)
        exec(compile(blocks[1], "writing-a-strategy.md", "exec"), namespace)
        import torch

        red = namespace["reducer"](tr.VisualTokens(torch.randn(1, 2, 3, 3, 4)))
        assert red.kept_counts().tolist() == [6]  # ceil(0.3 * 18)
        # the notebook case: the cell run again replaces the class, the latest is what builds
        first = tr.STRATEGIES.get("norm_select")
        exec(compile(blocks[0], "writing-a-strategy.md", "exec"), namespace)
        assert tr.STRATEGIES.get("norm_select") is namespace["NormSelect"] is not first
        # the plugin author's two-line test runs the whole property suite on the strategy
        exec(compile(blocks[2], "writing-a-strategy.md", "exec"), namespace)
        namespace["test_norm_select"]()
    finally:
        tr.STRATEGIES.unregister("norm_select")
