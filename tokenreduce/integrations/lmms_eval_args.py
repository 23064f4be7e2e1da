"""Parse the lmms-eval ``--model_args`` of the ``tokenreduce`` model.

One flat ``key=value`` list carries two things: how to load and run the model (``pretrained``,
``dtype``, ``max_frames_num``, ...) and which reducer to apply (``strategy`` or ``config`` plus the
strategy's own fields). Model keys are fixed and typed here; every other key is a field of the
strategy's config, checked by the strategy's own typed config (unknown keys -> ``ConfigError``).
Dotted keys set nested component fields: ``community=leiden,community.resolution=0.5``.

This module does not import lmms-eval, so it is usable and testable without the ``eval`` extra.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from tokenreduce.errors import ConfigError, ConfigTypeError

NO_REDUCTION = "none"
DTYPES = ("auto", "float32", "float16", "bfloat16")
ATTENTION = ("sdpa", "eager", "flash_attention_2")


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """How the evaluated model is loaded and run (everything in ``model_args`` except the reducer)."""

    pretrained: str
    model_class: str = "auto"
    device: str | None = None
    dtype: str = "auto"
    attn_implementation: str | None = None
    batch_size: int = 1
    max_frames_num: int = 32
    max_new_tokens: int = 16
    system_prompt: str | None = None
    trust_remote_code: bool = False
    reduction_log: str | None = None

    def __post_init__(self) -> None:
        if not self.pretrained:
            raise ConfigError("model_args: pretrained=<path or hub id> is required")
        if self.dtype not in DTYPES:
            raise ConfigError(f"model_args: dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.attn_implementation is not None and self.attn_implementation not in ATTENTION:
            raise ConfigError(f"model_args: attn_implementation must be one of {', '.join(ATTENTION)}, "
                              f"got {self.attn_implementation!r}")
        for name in ("batch_size", "max_frames_num", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model_args: {name} must be >= 1, got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class EvalArgs:
    """Parsed ``model_args``: run settings and the reducer spec (``None``: no reduction)."""

    run: RunSettings
    reducer: str | dict[str, Any] | None


_FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(RunSettings)}
_REDUCER_KEYS = ("strategy", "config")


def parse_value(text: str) -> Any:
    """One ``model_args`` value: ``true``/``false``, ``none``, int, float, else the string itself."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for number in (int, float):
        try:
            return number(text)
        except ValueError:
            continue
    return text


def _typed(name: str, value: Any) -> Any:
    """Check a run-settings value against its declared type, converting strings."""
    if isinstance(value, str):
        value = parse_value(value) if name not in ("pretrained", "system_prompt", "reduction_log") else value
    hint = _FIELD_TYPES[name]
    if value is None:
        if "None" in hint:
            return None
        raise ConfigTypeError(f"model_args: {name} must not be none")
    if hint.startswith("int") and (not isinstance(value, int) or isinstance(value, bool)):
        raise ConfigTypeError(f"model_args: {name} must be an int, got {value!r}")
    if hint.startswith("bool") and not isinstance(value, bool):
        raise ConfigTypeError(f"model_args: {name} must be true or false, got {value!r}")
    if hint.startswith("str") and not isinstance(value, str):
        value = str(value)
    return value


def _nest(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``{"community": "leiden", "community.resolution": 0.5}`` -> ``{"community": {"name": "leiden", "resolution": 0.5}}``."""
    nested: dict[str, Any] = {}
    for key in sorted(overrides, key=lambda k: k.count(".")):
        value = overrides[key]
        *parents, leaf = key.split(".")
        node = nested
        for depth, part in enumerate(parents):
            child = node.get(part)
            if isinstance(child, str):
                child = {"name": child}
            elif child is None:
                child = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"model_args: {'.'.join(parents[:depth + 1])} is {child!r}, "
                                  f"so {key} cannot set a field inside it")
            node[part] = child
            node = child
        node[leaf] = value
    return nested


def parse_model_args(args: Mapping[str, Any]) -> EvalArgs:
    """Split lmms-eval ``model_args`` (already split on commas) into run settings and a reducer spec.

    The reducer spec is ``None`` for ``strategy=none``, a path for ``config=file.yaml`` (extra keys
    override the file), or a dict ``{"name": strategy, **fields}`` ready for ``tr.build``.
    """
    values = {key: (parse_value(v) if isinstance(v, str) and key not in ("pretrained", "config",
                                                                         "strategy", "system_prompt",
                                                                         "reduction_log") else v)
              for key, v in args.items() if v is not None or key in _FIELD_TYPES}
    run_values = {key: _typed(key, values.pop(key)) for key in list(values) if key in _FIELD_TYPES}
    if "pretrained" not in run_values:
        raise ConfigError("model_args: pretrained=<path or hub id> is required")
    strategy = values.pop("strategy", None)
    config = values.pop("config", None)
    if strategy is None and config is None:
        raise ConfigError("model_args: give strategy=<name> (e.g. strategy=st_simdiff,ratio=0.3), "
                          "config=<file.yaml|json>, or strategy=none for the unreduced model")
    if strategy is not None and config is not None:
        raise ConfigError("model_args: give strategy=... or config=..., not both")
    overrides = _nest(values)
    if isinstance(strategy, str) and strategy.lower() == NO_REDUCTION:
        if overrides:
            raise ConfigError(f"model_args: strategy=none takes no strategy fields, got {sorted(values)}")
        reducer: str | dict[str, Any] | None = None
    elif config is not None:
        if not isinstance(config, str):
            raise ConfigTypeError(f"model_args: config must be a file path, got {config!r}")
        from tokenreduce.config import load_config

        reducer = {**load_config(config), **overrides}
    else:
        if not isinstance(strategy, str):
            raise ConfigTypeError(f"model_args: strategy must be a registered name, got {strategy!r}")
        reducer = {"name": strategy, **overrides}
    return EvalArgs(run=RunSettings(**run_values), reducer=reducer)
