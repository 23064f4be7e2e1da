"""Exception types of tokenreduce.

Every error subclasses a builtin (``ValueError``, ``TypeError``, ``LookupError``,
``ImportError``) so callers that already catch those keep working, and
``TokenReduceError`` so callers can catch everything the library raises on purpose.
"""

from __future__ import annotations


class TokenReduceError(Exception):
    """Base class of every error tokenreduce raises deliberately."""


class ConfigError(TokenReduceError, ValueError):
    """A configuration is invalid: unknown key, wrong value, or inconsistent fields."""


class ConfigTypeError(TokenReduceError, TypeError):
    """A configuration field has a value of the wrong type."""


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


class BudgetWarning(UserWarning):
    """A reducer's budget reduced nothing in a model run (it kept every visual token)."""
