"""Name -> class registries, filled by decorators in-tree and by entry points from other packages.

Each registry has an entry-point group (``tokenreduce.strategies``, ``tokenreduce.community``,
``tokenreduce.adapters``). Entry points are discovered lazily: their names are listed without
importing them, and a plugin is imported only when it is asked for by name (or when every
component is described). A plugin that fails to import produces a warning naming it and is
skipped; it never breaks ``import tokenreduce``.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import inspect
import warnings
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from tokenreduce.errors import DuplicateRegistrationError, UnknownNameError

T = TypeVar("T", bound=type)


class PluginWarning(UserWarning):
    """A third-party plugin could not be loaded."""


def _origin_of(obj: Any) -> str:
    module = getattr(obj, "__module__", "?")
    return f"{module}.{getattr(obj, '__qualname__', repr(obj))}"


def summary_of(obj: Any) -> str:
    """First line of an object's docstring (one-line description for listings)."""
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


class Registry:
    """A named collection of component classes of one kind.

    Args:
        kind: human name used in messages ("strategy", "community detector", ...).
        key: the short kind name used in configs and ``registry_for`` ("strategy", "community").
        group: entry-point group scanned for plugins, or ``None`` for in-tree only.
    """

    def __init__(self, kind: str, key: str, group: str | None = None) -> None:
        self.kind = kind
        self.kind_key = key
        self.group = group
        self._entries: dict[str, type] = {}
        self._origins: dict[str, str] = {}
        self._pending: dict[str, importlib.metadata.EntryPoint] | None = None
        self._failed: set[str] = set()

    # ----- registration -------------------------------------------------------------------
    def register(self, name: str, *, origin: str | None = None) -> Callable[[T], T]:
        """Class decorator: ``@STRATEGIES.register("random")``."""
        if not isinstance(name, str) or not name or name != name.strip():
            raise ValueError(f"a {self.kind} name must be a non-empty string without spaces, got {name!r}")

        def decorator(cls: T) -> T:
            self.add(name, cls, origin=origin)
            return cls

        return decorator

    def add(self, name: str, cls: type, *, origin: str | None = None) -> None:
        """Register ``cls`` under ``name``; a second, different class under one name is an error.

        The same class defined again (same module and qualified name: a notebook cell run twice, a
        reloaded module) replaces the earlier definition: the latest one is what ``get`` returns.
        """
        where = origin or _origin_of(cls)
        existing = self._entries.get(name)
        if existing is not None and existing is not cls and origin is None and _origin_of(existing) == where:
            self._entries.pop(name)
            existing = None
        if existing is not None and existing is not cls:
            raise DuplicateRegistrationError(
                f"{self.kind} name {name!r} is registered twice: by {self._origins[name]} and by {where}"
            )
        self._entries[name] = cls
        self._origins.setdefault(name, where)
        if "registered_name" not in vars(cls):
            cls.registered_name = name  # type: ignore[attr-defined]
        bind = getattr(cls, "bind_config", None)
        if bind is not None:
            bind(self.kind_key)
        if self._pending is not None:
            self._pending.pop(name, None)

    def unregister(self, name: str) -> type:
        """Remove ``name`` and return its class (for tests and interactive plugin development)."""
        if name not in self._entries:
            raise UnknownNameError(f"{self.kind} {name!r} is not registered")
        self._origins.pop(name, None)
        return self._entries.pop(name)

    # ----- entry points ---------------------------------------------------------------------
    def _discover(self) -> dict[str, importlib.metadata.EntryPoint]:
        if self._pending is None:
            self._pending = {}
            if self.group is not None:
                for ep in importlib.metadata.entry_points(group=self.group):
                    if ep.name in self._entries:
                        if _origin_of(self._entries[ep.name]) != ep.value.replace(":", "."):
                            self._warn(ep, f"name already registered by {self._origins[ep.name]}")
                        continue
                    self._pending.setdefault(ep.name, ep)
        return self._pending

    def _warn(self, ep: importlib.metadata.EntryPoint, why: str) -> None:
        dist = getattr(getattr(ep, "dist", None), "name", None) or "unknown distribution"
        warnings.warn(
            f"tokenreduce plugin {ep.name!r} ({ep.value}, from {dist}) in group {self.group!r} "
            f"was skipped: {why}",
            PluginWarning,
            stacklevel=3,
        )

    def _load(self, name: str) -> type | None:
        ep = self._discover().get(name)
        if ep is None or name in self._failed:
            return None
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plugin must only warn
            self._failed.add(name)
            self._pending.pop(name, None)  # type: ignore[union-attr]
            self._warn(ep, f"import failed with {type(exc).__name__}: {exc}")
            return None
        if not isinstance(obj, type):
            self._failed.add(name)
            self._pending.pop(name, None)  # type: ignore[union-attr]
            self._warn(ep, f"it points to {type(obj).__name__}, not a class")
            return None
        dist = getattr(getattr(ep, "dist", None), "name", None)
        if self._entries.get(name) is not obj:
            self.add(name, obj, origin=f"entry point {ep.value}" + (f" of {dist}" if dist else ""))
        return obj

    # ----- lookup ---------------------------------------------------------------------------
    def get(self, name: str) -> type:
        """The class registered as ``name``; unknown names list the close matches."""
        if not isinstance(name, str):
            raise TypeError(f"a {self.kind} name must be a str, got {type(name).__name__}")
        if name in self._entries:
            return self._entries[name]
        loaded = self._load(name)
        if loaded is not None:
            return loaded
        known = self.names()
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise UnknownNameError(f"unknown {self.kind} {name!r}{hint} Registered: {', '.join(known) or 'none'}")

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._entries or name in self._discover())

    def names(self) -> list[str]:
        """All names, in-tree and discovered plugins (plugins are not imported)."""
        return sorted(set(self._entries) | set(self._discover()))

    def items(self) -> Iterator[tuple[str, type]]:
        """``(name, class)`` for every component, importing plugins (broken ones warn and are skipped)."""
        for name in self.names():
            cls = self._entries.get(name) or self._load(name)
            if cls is not None:
                yield name, cls

    def origin(self, name: str) -> str:
        self.get(name)
        return self._origins[name]

    def refresh(self) -> None:
        """Forget discovered entry points so newly installed plugins are found."""
        self._pending = None
        self._failed.clear()


STRATEGIES = Registry("strategy", "strategy", "tokenreduce.strategies")
COMMUNITY = Registry("community detector", "community", "tokenreduce.community")
ADAPTERS = Registry("adapter", "adapter", "tokenreduce.adapters")

REGISTRIES: dict[str, Registry] = {r.kind_key: r for r in (STRATEGIES, COMMUNITY, ADAPTERS)}


def registry_for(kind: str) -> Registry:
    """The registry of a component kind (``"strategy"``, ``"community"``, ``"adapter"``, ...)."""
    try:
        return REGISTRIES[kind]
    except KeyError:
        raise UnknownNameError(f"unknown component kind {kind!r}; kinds: {', '.join(REGISTRIES)}") from None


register_strategy = STRATEGIES.register
register_community = COMMUNITY.register
register_adapter = ADAPTERS.register
