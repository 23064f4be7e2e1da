"""tokenreduce: training-free visual-token reduction for video LLMs.

    import tokenreduce as tr
    reducer = tr.build("st_simdiff", ratio=0.3)
    reduction = reducer(tr.VisualTokens(features))      # features: [B, T, H, W, D]
    with tr.apply(model, reducer):                      # any supported Hugging Face VLM
        model.generate(**inputs)
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from tokenreduce.budget import Budget, cost_prune_ratio
from tokenreduce.config import Config, build, build_component
from tokenreduce.config_files import load_config, save_config
from tokenreduce.errors import (
    BudgetWarning,
    ConfigError,
    ConfigTypeError,
    DuplicateRegistrationError,
    InputError,
    InputTypeError,
    MissingDependencyError,
    MissingSignalError,
    PluginError,
    RegistrationError,
    ServingError,
    TokenReduceError,
    UnknownNameError,
)
from tokenreduce.interfaces import (
    BudgetConfig,
    BudgetedReducer,
    Component,
    EncoderConfig,
    InLLMConfig,
    LayerwiseReducer,
    Reducer,
    Signal,
    Stage,
)
from tokenreduce.graph.community import CommunityDetector
from tokenreduce.adapters.apply import apply, remove
from tokenreduce.pipeline import Pipeline
from tokenreduce.registry import (
    ADAPTERS,
    COMMUNITY,
    STRATEGIES,
    PluginWarning,
    Registry,
    register_adapter,
    register_community,
    register_strategy,
    registry_for,
)
from tokenreduce.tokens import Reduction, ReductionStats, Role, VisualTokens

import tokenreduce.strategies  # noqa: E402,F401  (registers the built-in strategies)

try:
    __version__ = version("tokenreduce")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+local"


def list_strategies() -> list[str]:
    """Registered strategy names, in-tree and from installed plugins."""
    return STRATEGIES.names()


__all__ = [
    "ADAPTERS", "COMMUNITY", "STRATEGIES", "Budget", "BudgetConfig", "BudgetWarning", "BudgetedReducer",
    "CommunityDetector", "Component", "Config", "ConfigError", "ConfigTypeError",
    "DuplicateRegistrationError", "EncoderConfig", "InLLMConfig", "InputError", "InputTypeError",
    "LayerwiseReducer", "MissingDependencyError", "MissingSignalError", "Pipeline", "PluginError",
    "PluginWarning", "Reducer", "Reduction", "ReductionStats", "RegistrationError", "Registry", "Role",
    "ServingError", "Signal", "Stage", "TokenReduceError", "UnknownNameError", "VisualTokens", "__version__",
    "apply", "build", "build_component",
    "cost_prune_ratio", "list_strategies", "load_config", "register_adapter", "register_community",
    "register_strategy", "registry_for", "remove", "save_config",
]
