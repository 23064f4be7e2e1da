"""Tests that run vLLM: evs/vidcom2 against vLLM's own functions, and serving with the tokenreduce plugin.

Collected only where vLLM is installed (its own environment, see .ci/vllm.sh): elsewhere the folder is
ignored, so the main run neither fails nor reports skips.

In the vLLM environment: ``python -m pytest -q -p no:cacheprovider tests/vllm``. Presence is read from the
installed distributions, not from an import: with ``tests/`` on ``sys.path`` this folder is itself
importable as a namespace package named ``vllm``, and vLLM's own import needs the fixes below first. vLLM
runs in single-process mode, with the test-environment fixes of ``cpu_site/`` applied in this process
and, through ``PYTHONPATH``, in every Python process vLLM starts.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from pathlib import Path

import pytest

if "vllm" not in importlib.metadata.packages_distributions():
    collect_ignore_glob = ["*.py"]
else:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the shared factories of tests/
    CPU_SITE = Path(__file__).resolve().parent / "cpu_site"
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(CPU_SITE), os.environ.get("PYTHONPATH")]))
    sys.path.insert(0, str(CPU_SITE))
    import vllm_cpu_fixes

    vllm_cpu_fixes.apply()
    for name, value in {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1",
                        "VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                        "TOKENIZERS_PARALLELISM": "false"}.items():
        os.environ.setdefault(name, value)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Both tiny checkpoints, saved once per session: name -> ``TinyModel``."""
    from serving_checkpoints import BUILDERS

    root = tmp_path_factory.mktemp("checkpoints")
    return {name: build(root / name) for name, build in BUILDERS.items()}
