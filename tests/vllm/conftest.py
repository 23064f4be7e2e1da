"""vLLM serving tests. Collected only where vLLM is installed (its own venv, see .ci/vllm.sh): elsewhere the
folder is ignored, so the main run neither fails nor reports skips.

In the vLLM venv: ``python -m pytest -q -p no:cacheprovider tests/vllm``. vLLM runs in single-process mode
(one engine per ``LLM``, started once per model and strategy and shared by the tests of that case) with the
test-environment fixes of ``cpu_site/`` applied in this process and, through ``PYTHONPATH``, in every
Python process vLLM starts.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

if importlib.util.find_spec("vllm") is None:
    collect_ignore_glob = ["*"]
else:
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
    from tiny_checkpoints import BUILDERS

    root = tmp_path_factory.mktemp("checkpoints")
    return {name: build(root / name) for name, build in BUILDERS.items()}
