"""The console entry point: ``--version`` and ``list``."""

from __future__ import annotations

import subprocess
import sys

import pytest

import tokenreduce as tr
from tokenreduce.cli import main


def test_list_shows_every_kind_with_one_line(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "Strategies:" in out and "Community detectors:" in out and "Model adapters:" in out
    for name in tr.list_strategies():
        line = next(line for line in out.splitlines() if line.strip().startswith(name + " "))
        assert len(line.strip()) > len(name) + 5, f"{name} has no description"


def test_list_one_kind(capsys):
    assert main(["list", "strategy"]) == 0
    assert "Community detectors:" not in capsys.readouterr().out


def test_version_and_usage_errors(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and tr.__version__ in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(["list", "gizmos"])
    assert info.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_module_entry_point_runs():
    done = subprocess.run([sys.executable, "-m", "tokenreduce", "list", "strategy"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "random" in done.stdout


def test_list_adapter_names_what_each_family_supports(capsys):
    assert main(["list", "adapter"]) == 0
    out = capsys.readouterr().out
    adapters = dict(tr.ADAPTERS.items())
    for cls in adapters.values():
        assert all(klass in out for klass in cls.model_classes)
    for heading in ("classes: ", "media: ", "stages: ", "attention: "):
        assert out.count(heading) == len(adapters)
    assert "media: image, video" in out and "stages: encoder, pre-LLM, in-LLM" in out
