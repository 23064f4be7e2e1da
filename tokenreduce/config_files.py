"""Config files: ``.json`` / ``.yaml`` / ``.yml`` in and out, with limits on what a file may cost.

A config file is data from anywhere, so reading one is bounded before anything is built from it:

- size: at most ``MAX_CONFIG_BYTES`` (1 MiB), checked before the file is read;
- text: UTF-8 (an invalid byte is reported with its offset);
- nesting: at most ``MAX_CONFIG_DEPTH`` levels of lists and mappings (no ``RecursionError``);
- YAML aliases: the document, with every alias expanded, holds at most ``MAX_CONFIG_NODES``
  values (a "billion laughs" file is rejected without being expanded); recursive aliases are
  rejected;
- integers: at most ``MAX_INT_DIGITS`` decimal digits (config integers fit in int64 anyway);
- duplicate keys in one mapping are an error naming the key (JSON and YAML alike; the YAML merge
  key ``<<`` still lets explicit keys override merged ones).

Every failure is a ``ConfigError`` naming the file. YAML goes through PyYAML's safe loader only.
"""

from __future__ import annotations

import functools
import itertools
import json
import re
from pathlib import Path
from typing import Any

from tokenreduce.errors import ConfigError, ConfigTypeError, MissingDependencyError, brief

MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_DEPTH = 64
MAX_CONFIG_NODES = 100_000
MAX_INT_DIGITS = 100

_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]")


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a config dict from a ``.json``, ``.yaml`` or ``.yml`` file (limits in the module doc)."""
    if not isinstance(path, (str, Path)):
        raise ConfigTypeError(f"a config path must be a str or pathlib.Path, got {type(path).__name__}")
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {brief(str(path))} does not exist (or is not a regular file)")
    suffix = path.suffix.lower()
    if suffix not in (".json", ".yaml", ".yml"):
        raise ConfigError(f"{path}: unsupported config file type {brief(suffix)}; use .json, .yaml or .yml")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: {size} bytes is larger than a config file may be "
                          f"({MAX_CONFIG_BYTES} bytes)")
    raw = path.read_bytes()[:MAX_CONFIG_BYTES + 1]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid UTF-8 (byte {exc.start}: {exc.reason})") from None
    data = _load_json(text, path) if suffix == ".json" else _load_yaml(text, path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping, got {type(data).__name__}")
    return data


def save_config(config: Any, path: str | Path) -> None:
    """Write a config (or its dict) as JSON or YAML, chosen by the file suffix."""
    data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    elif suffix in (".yaml", ".yml"):
        path.write_text(_yaml().safe_dump(data, sort_keys=False), encoding="utf-8")
    else:
        raise ConfigError(f"{path}: unsupported config file type {brief(suffix)}; use .json, .yaml or .yml")


# ----- JSON ------------------------------------------------------------------------------------
def _load_json(text: str, path: Path) -> Any:
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    deepest = max(itertools.accumulate(1 if c in "[{" else -1 for c in brackets), default=0)
    if deepest > MAX_CONFIG_DEPTH:
        raise ConfigError(f"{path}: nested {deepest} levels deep; a config may nest at most "
                          f"{MAX_CONFIG_DEPTH} levels")

    def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise ConfigError(f"{path}: duplicate key {brief(key)} in one mapping")
            where = _oversized_in(value)
            if where is not None:
                _check_digits(where[1], path, f": {brief(key)}{where[0]}")
            out[key] = value
        return out

    def bounded_int(literal: str) -> int | _Oversized:
        return _Oversized(literal) if _digits(literal) > MAX_INT_DIGITS else int(literal)

    try:
        return json.loads(text, object_pairs_hook=unique_keys, parse_int=bounded_int)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: invalid JSON: {exc}") from None


class _Oversized(str):
    """An integer literal too long to convert, kept as text until the key holding it is known."""


def _oversized_in(value: Any) -> tuple[str, str] | None:
    """``(index path, literal)`` of the first ``_Oversized`` in ``value`` or its nested lists."""
    if isinstance(value, _Oversized):
        return "", value
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = _oversized_in(item)
            if found is not None:
                return f"[{i}]{found[0]}", found[1]
    return None


def _digits(literal: str) -> int:
    return len(literal.lstrip("+-").replace("_", ""))


def _check_digits(literal: str, path: Path, where: str = "") -> None:
    digits = _digits(literal)
    if digits > MAX_INT_DIGITS:
        raise ConfigError(f"{path}{where}: an integer of {digits} digits; config integers have at most "
                          f"{MAX_INT_DIGITS} digits (they must fit in int64)")


# ----- YAML ------------------------------------------------------------------------------------
def _yaml() -> Any:
    try:
        import yaml
    except ImportError:
        raise MissingDependencyError("YAML configs need PyYAML: pip install 'tokenreduce[yaml]'") from None
    return yaml


def _load_yaml(text: str, path: Path) -> Any:
    yaml = _yaml()
    loader = _bounded_loader_class()(text)
    loader.config_path = path
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expanded_size(node, path)
        return loader.construct_document(node)
    except (yaml.YAMLError, ValueError, TypeError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{path}: invalid YAML: {str(exc)[:400]}") from None
    finally:
        loader.dispose()


@functools.lru_cache(maxsize=1)
def _bounded_loader_class() -> type:
    """PyYAML's ``SafeLoader`` with a nesting limit, duplicate-key and integer-size checks."""
    yaml = _yaml()

    class BoundedSafeLoader(yaml.SafeLoader):
        config_path: Path = Path("?")
        _depth = 0

        def _where(self, mark: Any) -> str:
            return f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self._depth >= MAX_CONFIG_DEPTH:
                mark = self.peek_event().start_mark
                raise ConfigError(f"{self.config_path}{self._where(mark)}: nested more than "
                                  f"{MAX_CONFIG_DEPTH} levels deep; a config may nest at most "
                                  f"{MAX_CONFIG_DEPTH} levels")
            self._depth += 1
            try:
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: set[tuple[str, str]] = set()
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    key = (key_node.tag, key_node.value)
                    if key in seen:
                        raise ConfigError(f"{self.config_path}{self._where(key_node.start_mark)}: duplicate "
                                          f"key {brief(key_node.value)} in one mapping")
                    seen.add(key)
                    if value_node.tag == "tag:yaml.org,2002:int":  # name the key holding a huge integer
                        _check_digits(str(value_node.value), self.config_path,
                                      f"{self._where(value_node.start_mark)}: {brief(key_node.value)}")
            return super().construct_mapping(node, deep=deep)

        def construct_yaml_int(self, node: Any) -> int:
            _check_digits(str(node.value), self.config_path, self._where(node.start_mark))
            return super().construct_yaml_int(node)

    BoundedSafeLoader.add_constructor("tag:yaml.org,2002:int", BoundedSafeLoader.construct_yaml_int)
    return BoundedSafeLoader


def _check_expanded_size(root: Any, path: Path) -> None:
    """Reject a node graph that holds more than ``MAX_CONFIG_NODES`` values or nests deeper than
    ``MAX_CONFIG_DEPTH`` once its aliases are expanded, or that refers to itself. Shared nodes
    are counted once per use without being expanded (memoised), so the check is linear in the
    file."""
    measured: dict[int, tuple[int, int]] = {}  # id(node) -> (values, depth) when expanded
    in_progress: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        children = _children(node)
        if finished:
            in_progress.discard(key)
            values = 1 + sum(measured[id(c)][0] for c in children)
            depth = 1 + max((measured[id(c)][1] for c in children), default=0)
            if values > MAX_CONFIG_NODES:
                raise ConfigError(f"{path}: holds more than {MAX_CONFIG_NODES} values once its YAML aliases "
                                  "are expanded (an alias bomb?)")
            if depth > MAX_CONFIG_DEPTH:
                raise ConfigError(f"{path}: nests {depth} levels deep once its YAML aliases are expanded; a "
                                  f"config may nest at most {MAX_CONFIG_DEPTH} levels")
            measured[key] = (values, depth)
            continue
        if key in measured:
            continue
        if key in in_progress:
            raise ConfigError(f"{path}: a YAML alias refers to a node that contains it "
                              "(a recursive structure)")
        in_progress.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in children if id(child) not in measured)


def _children(node: Any) -> list[Any]:
    value = node.value
    if isinstance(value, list):
        return [part for item in value for part in (item if isinstance(item, tuple) else (item,))]
    return []

