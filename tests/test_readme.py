"""The README's commands are the ones CI runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_exactly_the_readme_test_command():
    readme, ci = ROOT / "README.md", ROOT / ".ci" / "run"
    if not (readme.exists() and ci.exists()):
        pytest.skip("not running from a source checkout")
    ci_commands = [line.strip() for line in ci.read_text().splitlines() if line.strip().startswith("python -m pytest")]
    assert ci_commands, ".ci/run runs no tests"
    section = re.search(r"## Run the tests\n(.*?)(?=\n## |\Z)", readme.read_text(), re.S)
    assert section, "README needs a '## Run the tests' section"
    commands = [line.strip() for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", section.group(1), re.S)
                for line in block.splitlines()]
    assert ci_commands[0] in commands  # the first run is the README's, on the newest versions
