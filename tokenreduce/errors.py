"""Exception and warning types of tokenreduce.

Every error subclasses a builtin (``ValueError``, ``TypeError``, ``LookupError``,
``ImportError``) so callers that already catch those keep working, and
``TokenReduceError`` so callers can catch everything the library raises on purpose.
"""

from __future__ import annotations

import reprlib
import sys


class TokenReduceError(Exception):
    """Base class of every error tokenreduce raises deliberately."""


class ConfigError(TokenReduceError, ValueError):
    """A configuration is invalid: unknown key, wrong value, or inconsistent fields."""


class ConfigTypeError(TokenReduceError, TypeError):
    """A configuration field has a value of the wrong type."""


class InputError(TokenReduceError, ValueError):
    """A tensor input (``VisualTokens``, ``Reduction``, a model handed to ``apply``) has a wrong
    shape, device or value; the message names the argument."""


class InputTypeError(TokenReduceError, TypeError):
    """An input has the wrong type (a list where a tensor belongs, a float mask); the message names
    the argument."""


class UnknownNameError(TokenReduceError, LookupError):
    """A name is not registered; the message lists the closest registered names."""

    def __str__(self) -> str:  # LookupError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class DuplicateRegistrationError(TokenReduceError, ValueError):
    """Two components were registered under one name; the message names both origins."""


class MissingDependencyError(TokenReduceError, ImportError):
    """An optional backend is not installed; the message names the extra to install."""


class MissingSignalError(TokenReduceError, ValueError):
    """A reducer was called without a signal it declares it needs (e.g. importance)."""


class RegistrationError(TokenReduceError, TypeError):
    """A class cannot be registered: it is not a component of the registry's kind, or the name is
    not a valid name."""


class PluginError(UnknownNameError):
    """A name belongs to a plugin (entry point) that could not be used: it failed to load or is
    not of the registry's kind; the message names the plugin, its distribution and the reason."""


class ServingError(TokenReduceError, ValueError):
    """A strategy cannot run inside a serving engine as configured (e.g. it needs the LLM's attention)."""


class BudgetWarning(UserWarning):
    """A reducer's budget reduced nothing in a model run (it kept every visual token)."""


_LIBRARIES = frozenset({"tokenreduce", "torch", "transformers"})


def caller_stacklevel() -> int:
    """The ``warnings.warn`` stack level of the first caller outside tokenreduce, torch and
    transformers, so that a warning raised inside a model's forward hooks points at the user's
    line (``model.generate(...)``), not at library internals."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").partition(".")[0] in _LIBRARIES:
        frame, level = frame.f_back, level + 1
    return level


_BRIEF_LIMIT = 80


class _BoundedRepr(reprlib.Repr):
    """``reprlib.Repr`` that never converts a huge int to decimal (Python refuses past 4300 digits
    and the conversion is quadratic) and shows a few items of every container."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxlist, self.maxtuple, self.maxdict, self.maxset = 3, 4, 4, 4, 4
        self.maxstring = self.maxother = _BRIEF_LIMIT

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() <= 128:
            return repr(x)
        return f"<int of about {int(x.bit_length() * 0.30103) + 1} digits>"


_BOUNDED = _BoundedRepr()


def clip(text: str, limit: int = 2 * _BRIEF_LIMIT) -> str:
    """``text`` cut to ``limit`` characters (for messages that quote another library's message)."""
    return text if len(text) <= limit else text[:limit] + "..."


def brief(value: object) -> str:
    """A repr of ``value`` for error messages: bounded in length and in the work it takes, whatever
    the value (a huge int, a deeply nested or alias-expanded structure, a long string)."""
    return clip(_BOUNDED.repr(value))

