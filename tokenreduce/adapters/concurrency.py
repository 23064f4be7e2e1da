"""Several threads on one reduced model: forwards take turns, and each thread keeps its own state.

A ``ReductionSession`` remembers, between the prefill and the decode steps of one ``generate``,
what that prefill kept (its layout, positions and cache). Two threads generating with one
reduced model at once would overwrite each other's record. The contract instead:

* **each thread has its own record** (``PerThread`` attributes): a thread's decode steps follow
  its own prefill, and ``session.kept_indices()`` and the other reports describe the calling
  thread's last prefill;
* **forwards take turns** (``ForwardLock``): a forward of the model, and a call of its vision tower
  (``generate`` encodes videos before its prefill), runs while holding the session's lock, so the
  hooks never interleave. Calls from one thread nest freely (the tower inside the model's forward).

So concurrent ``generate`` calls on one reduced model each get the reduction a sequential run gives,
and run one forward at a time. (Model state transformers itself keeps on the module between calls
is outside this contract.)
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from torch import nn

_LOCALS = "_per_thread_values"


class PerThread:
    """A descriptor: an attribute whose value is private to each thread.

    A thread that never set it reads ``default()`` (``None`` without a factory).
    """

    def __init__(self, default: Callable[[], Any] | None = None) -> None:
        self.default = default

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def _values(self, obj: Any) -> threading.local:
        return obj.__dict__.setdefault(_LOCALS, threading.local())  # setdefault is atomic

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        values = self._values(obj)
        if not hasattr(values, self.name):
            setattr(values, self.name, None if self.default is None else self.default())
        return getattr(values, self.name)

    def __set__(self, obj: Any, value: Any) -> None:
        setattr(self._values(obj), self.name, value)


class ForwardLock:
    """One forward at a time across threads, for every module it is installed on.

    The lock is taken by a forward pre-hook that runs before any other and released by a forward
    hook that runs even when the forward raises; a thread may re-enter (nested modules).
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._depth = threading.local()

    def install(self, module: nn.Module) -> list[Any]:
        """Hook ``module``; returns the handles (``handle.remove()`` undoes)."""
        return [module.register_forward_pre_hook(self._enter, prepend=True),
                module.register_forward_hook(self._exit, always_call=True)]

    def _enter(self, module: nn.Module, args: Any) -> None:
        self._lock.acquire()
        self._depth.value = getattr(self._depth, "value", 0) + 1

    def _exit(self, module: nn.Module, args: Any, output: Any) -> None:
        depth = getattr(self._depth, "value", 0)
        if depth > 0:
            self._depth.value = depth - 1
            self._lock.release()
