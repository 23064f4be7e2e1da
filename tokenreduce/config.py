"""Dataclass configs for every component, ``build()``, and JSON/YAML round-trips.

Each registered component class has a ``Config`` dataclass. A config validates its field types
on construction (wrong type -> ``ConfigTypeError`` naming the field), rejects unknown keys
(``ConfigError`` listing the valid ones), and serialises to a plain dict with a ``"name"`` key::

    reducer = tr.build("st_simdiff", ratio=0.3)
    reducer = tr.build({"name": "st_simdiff", "ratio": 0.3, "community": {"name": "leiden"}})
    tr.build(reducer.config.to_dict())          # round-trips
    tr.build("configs/mine.yaml")               # JSON / YAML files, safe loaders only

Fields that hold another component (a community detector inside ST-SimDiff, the steps of a
pipeline) are declared with ``component_field`` / ``component_list_field``; they accept a
registered name, a nested dict, a config, or a built component.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, Union

from tokenreduce.config_files import load_config
from tokenreduce.errors import ConfigError, ConfigTypeError, brief
from tokenreduce.registry import registry_for

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # the range of every int field (seeds, counts, layers)
FLOAT_MAX = sys.float_info.max

_COMPONENT_KEY = "tokenreduce_component"
_COMPONENT_LIST_KEY = "tokenreduce_component_list"


def component_field(kind: str, default: str | Mapping[str, Any] | None) -> Any:
    """A config field holding one component of ``kind`` (e.g. ``"community"``).

    ``default`` is a registered name or a dict with ``"name"``; ``None`` makes the field optional.
    """
    if default is None:
        return dataclasses.field(default=None, metadata={_COMPONENT_KEY: kind})
    return dataclasses.field(default_factory=lambda: _to_config(kind, default, "default"),
                             metadata={_COMPONENT_KEY: kind})


def component_list_field(kind: str) -> Any:
    """A config field holding a list of components of ``kind`` (e.g. pipeline steps)."""
    return dataclasses.field(default_factory=list, metadata={_COMPONENT_LIST_KEY: kind})


def _to_config(kind: str, value: Any, field_name: str) -> Config:
    """Coerce a name / dict / config / component into a config of ``kind``."""
    registry = registry_for(kind)
    if isinstance(value, Config):
        config = value
    elif hasattr(value, "config") and isinstance(value.config, Config):
        config = value.config
    elif isinstance(value, str):
        config = registry.get(value).Config()
    elif isinstance(value, Mapping):
        if "name" not in value:
            raise ConfigError(f"{field_name}: a nested {registry.kind} config needs a 'name' key "
                              f"(one of {', '.join(registry.names())}), got keys {brief(list(value))}")
        config = registry.get(value["name"]).Config.from_dict(value)
    else:
        raise ConfigTypeError(f"{field_name} must be a {registry.kind} name, dict or config, "
                              f"got {type(value).__name__}")
    if config.kind != kind:
        raise ConfigTypeError(f"{field_name} must be a {registry.kind}, got a {config.kind} "
                              f"config ({brief(config.name)})")
    return config


def _type_name(hint: Any) -> str:
    if hint is type(None):
        return "None"
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "")


def _check_value(name: str, hint: Any, value: Any) -> Any:
    """Return ``value`` (coerced where lossless: int->float, list->tuple) or raise naming ``name``."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        value_errors = []
        for option in args:
            try:
                return _check_value(name, option, value)
            except ConfigTypeError:
                continue
            except ConfigError as exc:
                if option in (int, float):  # a number out of range: that message is the precise one
                    value_errors.append(exc)
        if value_errors:
            raise value_errors[0]
        raise ConfigTypeError(f"{name} must be {_type_name(hint)}, got {brief(value)} ({type(value).__name__})")
    if origin is Literal:
        if any(value == option and type(value) is type(option) for option in args):
            return value
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, args))}, got {brief(value)}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigTypeError(f"{name} must be a list, got {type(value).__name__}")
        item = args[0] if args else Any
        items = [_check_value(f"{name}[{i}]", item, v) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise ConfigTypeError(f"{name} must be a dict, got {type(value).__name__}")
        return dict(value)
    if hint is type(None):
        if value is None:
            return None
        raise ConfigTypeError(f"{name} must be None, got {brief(value)}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigTypeError(f"{name} must be a bool (true/false), got {brief(value)} ({type(value).__name__})")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if not INT64_MIN <= value <= INT64_MAX:
                raise ConfigError(f"{name} must be in the int64 range [-2**63, 2**63 - 1], got {brief(value)}")
            return value
        raise ConfigTypeError(f"{name} must be an int, got {brief(value)} ({type(value).__name__})")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(value, int) and abs(value) > FLOAT_MAX:
                raise ConfigError(f"{name} must be a number within the float range (|x| <= {FLOAT_MAX:.4g}), "
                                  f"got {brief(value)}")
            return float(value)  # NaN and inf pass here: the config's validate() names the valid range
        raise ConfigTypeError(f"{name} must be a number, got {brief(value)} ({type(value).__name__})")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigTypeError(f"{name} must be a str, got {brief(value)} ({type(value).__name__})")
    if isinstance(hint, type):
        if isinstance(value, hint):
            return value
        raise ConfigTypeError(f"{name} must be {hint.__name__}, got {type(value).__name__}")
    return value


@dataclasses.dataclass
class Config:
    """Base class of component configs. Subclasses are dataclasses with typed, defaulted fields.

    Override ``validate()`` for cross-field checks; raise ``ConfigError`` naming the field.
    """

    component: ClassVar[type | None] = None
    kind: ClassVar[str | None] = None
    _hints_cache: ClassVar[dict[type, dict[str, Any]]] = {}

    def __post_init__(self) -> None:
        hints = self._hints()
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            label = f"{self.name}.{f.name}"
            if _COMPONENT_KEY in f.metadata:
                if value is not None:
                    value = _to_config(f.metadata[_COMPONENT_KEY], value, label)
            elif _COMPONENT_LIST_KEY in f.metadata:
                if not isinstance(value, (list, tuple)):
                    raise ConfigTypeError(f"{label} must be a list, got {type(value).__name__}")
                value = [_to_config(f.metadata[_COMPONENT_LIST_KEY], v, f"{label}[{i}]")
                         for i, v in enumerate(value)]
            else:
                value = _check_value(label, hints[f.name], value)
            object.__setattr__(self, f.name, value)
        self.validate()
        for f in dataclasses.fields(self):  # a validate() that forgot NaN never lets one through
            value = getattr(self, f.name)
            if isinstance(value, float) and math.isnan(value):
                raise ConfigError(f"{self.name}.{f.name} must be a number, got nan")

    @classmethod
    def _hints(cls) -> dict[str, Any]:
        if cls not in Config._hints_cache:
            Config._hints_cache[cls] = typing.get_type_hints(cls)
        return Config._hints_cache[cls]

    def validate(self) -> None:
        """Cross-field checks; called after the field types were checked."""

    @property
    def name(self) -> str:
        """The registered name of the component this config builds."""
        component = type(self).component
        return getattr(component, "registered_name", None) or type(self).__qualname__

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Config:
        """Build from a plain dict; ``"name"`` may be present and must then match."""
        if not isinstance(data, Mapping):
            raise ConfigTypeError(f"a config must be a dict, got {type(data).__name__}")
        values = dict(data)
        name = values.pop("name", None)
        own = getattr(cls.component, "registered_name", None)
        if name is not None and own is not None and name != own:
            raise ConfigError(f"config for {own!r} was given name {brief(name)}")
        valid = cls.field_names()
        unknown = set(values) - set(valid)
        if unknown:
            raise ConfigError(f"unknown key(s) {_key_list(unknown)} for {own or cls.__qualname__}; "
                              f"valid keys: {', '.join(valid) or 'none'}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible dict with ``"name"``; ``build(config.to_dict())`` round-trips."""
        out: dict[str, Any] = {"name": self.name}
        for f in dataclasses.fields(self):
            out[f.name] = _plain(getattr(self, f.name))
        return out

    def replace(self, **changes: Any) -> Config:
        """A copy with some fields changed (validated again)."""
        unknown = set(changes) - set(self.field_names())
        if unknown:
            raise ConfigError(f"unknown key(s) {_key_list(unknown)} for {self.name}; "
                              f"valid keys: {', '.join(self.field_names())}")
        return dataclasses.replace(self, **changes)

    def build(self) -> Any:
        """The component this config describes."""
        if type(self).component is None:
            raise ConfigError(f"{type(self).__qualname__} is not bound to a registered component")
        return type(self).component(self)


def check_in_range(name: str, value: float, low: float, high: float, what: str = "") -> None:
    """Raise ``ConfigError`` naming ``name``, the range and the value unless ``low <= value <= high``
    (NaN is outside every range). ``what`` says what the value is ("a cosine similarity ")."""
    if not low <= value <= high:
        raise ConfigError(f"{name} must be {what}in [{low:g}, {high:g}], got {brief(value)}")


def _key_list(keys: set[Any], shown: int = 10) -> str:
    """Some of ``keys`` for a message, each bounded, with the count when there are more."""
    names = sorted(brief(k) for k in keys)
    more = f", ... ({len(names)} in all)" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _plain(value: Any) -> Any:
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _looks_like_path(spec: str) -> bool:
    return "/" in spec or "\\" in spec or spec.lower().endswith((".json", ".yaml", ".yml"))


# ----- build -----------------------------------------------------------------------------------
def build_component(kind: str, spec: Any, /, **overrides: Any) -> Any:
    """Build a component of ``kind`` from a name, dict, config, file path or built component."""
    if isinstance(spec, Path) or (isinstance(spec, str) and _looks_like_path(spec)):
        spec = load_config(spec)
    if isinstance(spec, str):
        cls = registry_for(kind).get(spec)
        return cls(cls.Config.from_dict(overrides))
    if isinstance(spec, Mapping):
        return _to_config(kind, {**spec, **overrides}, "config").build()
    if isinstance(spec, Config):
        config = _to_config(kind, spec, "config")
        return (config.replace(**overrides) if overrides else config).build()
    if hasattr(spec, "config") and isinstance(spec.config, Config):
        return build_component(kind, spec.config, **overrides) if overrides else spec
    raise ConfigTypeError(f"cannot build a {registry_for(kind).kind} from {type(spec).__name__}; "
                          "pass a registered name, a dict with 'name', a config, or a .json/.yaml path")


def build(spec: Any, /, **overrides: Any) -> Any:
    """Build a reducer: ``build("random", ratio=0.3)``, ``build({"name": ..., ...})``,
    ``build(config)``, ``build("path/to/config.yaml")``."""
    return build_component("strategy", spec, **overrides)
