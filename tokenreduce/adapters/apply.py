"""``tr.apply(model, reducer)``: run a model with a reducer, restoring it exactly afterwards.

    with tr.apply(model, tr.build("random", ratio=0.3)) as session:
        model.generate(**inputs)
    session.kept_indices()          # what the last prefill kept, per video

``apply`` finds the adapter registered for the model's class (in-tree or from the
``tokenreduce.adapters`` entry-point group), installs forward hooks and returns a
``ReductionSession``; ``remove(session)`` (or leaving the ``with`` block) takes them off again.
The model's parameters are never edited; the few instance patches (the decoder layers' ``forward``
for a chunked prefill, Qwen3-VL's deepstack method) are undone by ``remove``.
"""

from __future__ import annotations

import inspect
import itertools
import warnings
from typing import Any

from torch import nn

from tokenreduce.errors import InputError, InputTypeError, UnknownNameError, brief, caller_stacklevel, clip
from tokenreduce.interfaces import Reducer
from tokenreduce.registry import ADAPTERS, PluginWarning


def find_adapter(model: nn.Module, name: str | None = None) -> type:
    """The adapter class for ``model`` (or the one registered as ``name``)."""
    import tokenreduce.adapters  # noqa: F401  (registers the built-in adapters)

    if name is not None:
        return ADAPTERS.get(name)
    supported = []
    for adapter_name, cls in ADAPTERS.by_precedence():  # built-ins first: a plugin never pre-empts one
        try:
            claims = bool(cls.supports(model))
        except Exception as exc:  # noqa: BLE001  (a plugin's broken supports() must not break apply)
            warnings.warn(f"tokenreduce adapter {adapter_name!r} ({ADAPTERS.origin(adapter_name)}) was "
                          f"skipped: its supports() raised {type(exc).__name__}: {clip(str(exc))}",
                          PluginWarning, stacklevel=caller_stacklevel())
            continue
        if claims:
            return cls
        supported.extend(getattr(cls, "model_classes", ()))
    raise UnknownNameError(f"no token-reduction adapter supports {type(model).__name__}; supported classes: "
                           f"{', '.join(sorted(supported))}. For other decoders use the generic path "
                           "(tr.apply(model, reducer, adapter='generic', visual=...)), see docs/models.md")


class AppliedReduction:
    """Context manager returned by ``apply``; ``__enter__`` gives the running session."""

    def __init__(self, session: Any) -> None:
        self.session = session

    def __enter__(self) -> Any:
        return self.session

    def __exit__(self, *exc: object) -> None:
        remove(self.session)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)


_ACTIVE: dict[int, Any] = {}


def apply(model: nn.Module, reducer: Reducer, *, adapter: str | None = None, **options: Any) -> AppliedReduction:
    """Install ``reducer`` on ``model``; use as a context manager or undo with ``remove``.

    Args:
        model: a supported Hugging Face model (see docs/models.md).
        reducer: any reducer or pipeline (``tr.build(...)``).
        adapter: force an adapter by registered name (e.g. ``"generic"``).
        **options: session options: ``positions`` (``"original"``/``"contiguous"``),
            ``probe_queries`` (average the probe over the last n queries), ``prefill_chunk``
            (slots per chunk of the layers before the first in-LLM step, ``None``: unchunked),
            and adapter-specific ones (the generic adapter's ``visual``).
    """
    if not isinstance(model, nn.Module):
        raise InputTypeError("model must be a torch.nn.Module (a Hugging Face model), "
                             f"got {type(model).__name__}")
    if any(p.is_meta for p in itertools.chain(model.parameters(), model.buffers())):
        raise InputError(f"model ({type(model).__name__}) has tensors on the meta device (shapes without "
                         "data): load its weights (e.g. from_pretrained without device_map='meta') first")
    if id(model) in _ACTIVE:
        raise RuntimeError("a reducer is already applied to this model; remove it first")
    from tokenreduce.adapters.session import ReductionSession

    adapter_cls = find_adapter(model, adapter)
    adapter_options = {k: options.pop(k) for k in list(options) if k in getattr(adapter_cls, "options", ())}
    valid = [p.name for p in inspect.signature(ReductionSession).parameters.values() if p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise InputTypeError(f"unknown option(s) {brief(unknown)} for tr.apply on {type(model).__name__}; valid: "
                             f"{', '.join(valid + list(getattr(adapter_cls, 'options', ())))}")
    session = ReductionSession(adapter_cls(model, **adapter_options), reducer, **options)
    session.attach()
    _ACTIVE[id(model)] = session
    return AppliedReduction(session)


def remove(session: Any) -> None:
    """Take a reducer off its model (idempotent)."""
    if isinstance(session, AppliedReduction):
        session = session.session
    session.detach()
    _ACTIVE.pop(id(session.adapter.model), None)
