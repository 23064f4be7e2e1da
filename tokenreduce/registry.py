"""Name -> class registries, filled by decorators in-tree and by entry points from other packages.

Each registry has an entry-point group (``tokenreduce.strategies``, ``tokenreduce.community``,
``tokenreduce.adapters``). Entry points are discovered lazily: their names are listed without
importing them, and a plugin is imported only when it is asked for by name (or when every
component is described). Plugins are contained, and reported by name as a ``PluginWarning``:

- one that fails to import (any exception, ``sys.exit`` included) is skipped; it never breaks
  ``import tokenreduce``;
- one that is not a class of the registry's kind (a strategy that is not a ``Reducer``, an
  adapter that is not a ``ModelAdapter``) is rejected when it is loaded;
- one whose name a built-in component holds is skipped: built-ins are never overridden;
- a name claimed by two distributions goes to neither; asking for it is an error naming both.

Asking by name for a plugin that was skipped raises ``PluginError`` (or
``DuplicateRegistrationError``) with the reason.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import inspect
import warnings
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from tokenreduce.errors import (
    ConfigTypeError,
    DuplicateRegistrationError,
    PluginError,
    RegistrationError,
    TokenReduceError,
    UnknownNameError,
    brief,
    caller_stacklevel,
    clip,
)

T = TypeVar("T", bound=type)


class PluginWarning(UserWarning):
    """A third-party plugin could not be loaded, or was skipped (the message says why)."""


def _origin_of(obj: Any) -> str:
    module = getattr(obj, "__module__", "?")
    return f"{module}.{getattr(obj, '__qualname__', repr(obj))}"


def _distribution(ep: importlib.metadata.EntryPoint) -> str:
    return getattr(getattr(ep, "dist", None), "name", None) or "unknown distribution"


def _describe(ep: importlib.metadata.EntryPoint) -> str:
    return f"{ep.value} from {_distribution(ep)}"


def _resolve(path: str) -> type:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


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
        base: ``"module:Class"`` every registered class must subclass (imported when first
            needed), or ``None`` for no check.
    """

    def __init__(self, kind: str, key: str, group: str | None = None, base: str | None = None) -> None:
        self.kind = kind
        self.kind_key = key
        self.group = group
        self.base = base
        self._entries: dict[str, type] = {}
        self._origins: dict[str, str] = {}
        self._plugins: set[str] = set()  # names registered from entry points
        self._pending: dict[str, importlib.metadata.EntryPoint] | None = None
        self._failed: dict[str, tuple[type[TokenReduceError], str]] = {}  # skipped plugin -> (error, message)

    # ----- registration -------------------------------------------------------------------
    def register(self, name: str, *, origin: str | None = None) -> Callable[[T], T]:
        """Class decorator: ``@STRATEGIES.register("random")``."""
        if not isinstance(name, str) or not name or name != name.strip():
            raise RegistrationError(f"a {self.kind} name must be a non-empty string without spaces, "
                                    f"got {brief(name)}")

        def decorator(cls: T) -> T:
            self.add(name, cls, origin=origin)
            return cls

        return decorator

    def add(self, name: str, cls: type, *, origin: str | None = None) -> None:
        """Register ``cls`` under ``name``; a second, different class under one name is an error,
        and so is a class that is not of the registry's kind.

        The same class defined again (same module and qualified name: a notebook cell run twice, a
        reloaded module) replaces the earlier definition: the latest one is what ``get`` returns.
        """
        where = origin or _origin_of(cls)
        self.check_kind(cls, f"{self.kind} {name!r} ({where})")
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

    def check_kind(self, cls: Any, what: str) -> None:
        """Raise ``RegistrationError`` naming ``what`` unless ``cls`` is a class of this registry's kind."""
        if not isinstance(cls, type):
            raise RegistrationError(f"{what} is a {type(cls).__name__}, not a class")
        base = _resolve(self.base) if self.base is not None else None
        if base is not None and not issubclass(cls, base):
            raise RegistrationError(f"{what} is of the wrong kind: {cls.__qualname__} does not subclass "
                                    f"{base.__module__}.{base.__qualname__}, as every {self.kind} must")

    def unregister(self, name: str) -> type:
        """Remove ``name`` and return its class (for tests and interactive plugin development)."""
        if name not in self._entries:
            raise UnknownNameError(f"{self.kind} {brief(name)} is not registered")
        self._origins.pop(name, None)
        self._plugins.discard(name)
        return self._entries.pop(name)

    # ----- entry points ---------------------------------------------------------------------
    def _discover(self) -> dict[str, importlib.metadata.EntryPoint]:
        if self._pending is None:
            self._pending = {}
            if self.group is not None:
                claims: dict[str, dict[str, importlib.metadata.EntryPoint]] = {}
                for ep in importlib.metadata.entry_points(group=self.group):
                    claims.setdefault(ep.name, {}).setdefault(ep.value, ep)
                for name, by_target in claims.items():
                    self._consider(name, list(by_target.values()))
        return self._pending

    def _consider(self, name: str, claims: list[importlib.metadata.EntryPoint]) -> None:
        """Queue the one entry point claiming ``name``, or record why none is used."""
        if name in self._entries:
            if name not in self._plugins and any(_origin_of(self._entries[name]) != ep.value.replace(":", ".")
                                                 for ep in claims):
                self._skip(name, claims, f"the name belongs to the built-in {self._origins[name]}, which "
                           "a plugin never overrides", error=None)  # the name still builds the built-in
            return
        if len(claims) > 1:
            self._skip(name, claims, f"{len(claims)} plugins claim it ({'; '.join(map(_describe, claims))}), so "
                       "none is used: uninstall all but one", error=DuplicateRegistrationError)
            return
        self._pending[name] = claims[0]  # type: ignore[index]

    def _skip(self, name: str, claims: list[importlib.metadata.EntryPoint], why: str, *,
              error: type[TokenReduceError] | None = PluginError) -> None:
        """Warn that ``name``'s plugin(s) are not used; asking for ``name`` then raises ``error``
        (``None``: the name stays usable, as a built-in's)."""
        where = "; ".join(map(_describe, claims))
        message = f"tokenreduce plugin {name!r} ({where}) in group {self.group!r} was skipped: {why}"
        if error is not None:
            self._failed[name] = (error, f"{self.kind} {name!r} is unavailable: {message}")
        if self._pending is not None:
            self._pending.pop(name, None)
        warnings.warn(message, PluginWarning, stacklevel=caller_stacklevel())

    def _load(self, name: str) -> type | None:
        ep = self._discover().get(name)
        if ep is None or name in self._failed:
            return None
        try:
            obj = ep.load()
        except (Exception, SystemExit) as exc:  # a broken plugin must only warn; sys.exit included
            self._skip(name, [ep], f"import failed with {type(exc).__name__}: {clip(str(exc))}")
            return None
        try:
            self.check_kind(obj, f"entry point {ep.value}")
        except RegistrationError as exc:
            self._skip(name, [ep], str(exc))
            return None
        if self._entries.get(name) is not obj:
            try:
                self.add(name, obj, origin=f"entry point {ep.value} of {_distribution(ep)}")
            except TokenReduceError as exc:
                self._skip(name, [ep], str(exc))
                return None
        self._plugins.add(name)
        return obj

    # ----- lookup ---------------------------------------------------------------------------
    def get(self, name: str) -> type:
        """The class registered as ``name``; unknown names list the close matches."""
        if not isinstance(name, str):
            raise ConfigTypeError(f"a {self.kind} name must be a str, got {type(name).__name__}")
        self._discover()  # once: warns about plugins that a built-in's name shadows
        if name in self._entries:
            return self._entries[name]
        loaded = self._load(name)
        if loaded is not None:
            return loaded
        if name in self._failed:
            error, message = self._failed[name]
            raise error(message)
        known = self.names()
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5) if len(name) <= 100 else []
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise UnknownNameError(f"unknown {self.kind} {brief(name)}{hint} Registered: {', '.join(known) or 'none'}")

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

    def by_precedence(self) -> Iterator[tuple[str, type]]:
        """``items()`` with the built-in components first, then the plugins: where several
        components could serve (adapters matching a model), a plugin never pre-empts a built-in."""
        everything = list(self.items())
        yield from ((n, c) for n, c in everything if n not in self._plugins)
        yield from ((n, c) for n, c in everything if n in self._plugins)

    def origin(self, name: str) -> str:
        self.get(name)
        return self._origins[name]

    def refresh(self) -> None:
        """Forget discovered entry points so newly installed plugins are found."""
        self._pending = None
        self._failed.clear()


STRATEGIES = Registry("strategy", "strategy", "tokenreduce.strategies", "tokenreduce.interfaces:Reducer")
COMMUNITY = Registry("community detector", "community", "tokenreduce.community",
                     "tokenreduce.graph.community:CommunityDetector")
ADAPTERS = Registry("adapter", "adapter", "tokenreduce.adapters", "tokenreduce.adapters.base:ModelAdapter")

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
