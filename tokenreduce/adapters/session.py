"""The session that makes a model really process fewer visual tokens.

One ``ReductionSession`` drives one reducer on one model through forward hooks. A hook on the model
(``adapter.top``) tells each call's ``Phase``: a prefill with videos or images of the modalities the
session reduces (a new reduction from scratch, ``prefill.py``), a decode step on the cache that
prefill filled (``decode.py``), or an unrelated call, which is left alone. Hooks on the language model, on each decoder layer (and on its attention
and, for steps placed after the attention block, its MLP) hand each call to the phase's code. Where
each step runs is decided once, before any hook is installed (``schedule.py``).

Kept tokens keep their original position ids, so generated tokens continue from the original
length. A step that drops nothing changes nothing: ``keep_all`` runs the unmodified model.

Every reduced prefill leaves a ``PrefillRecord`` (``record.py``) in ``records``: per video the kept
flat indices, roles, the importance each step used, the budget and the time. Records outlive the
``with`` block and serialise to JSON (``report()``, ``save_report(path)``). A budget that keeps every
visual token of a prefill warns once per session (``tr.BudgetWarning``): nothing was reduced.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from tokenreduce.adapters import hf
from tokenreduce.adapters.chunked_prefill import DEFAULT_PREFILL_CHUNK, ChunkedPrefill, check_prefill_chunk
from tokenreduce.adapters.concurrency import ForwardLock, PerThread
from tokenreduce.adapters.decode import Decode
from tokenreduce.adapters.encoder import install_capture
from tokenreduce.adapters.layout import MODALITIES
from tokenreduce.adapters.prefill import Prefill
from tokenreduce.adapters.record import PrefillRecord, VideoRecord, report, save_report, video_records
from tokenreduce.adapters.schedule import POSITION_POLICIES, Schedule
from tokenreduce.adapters.state import ForwardState, Phase
from tokenreduce.errors import BudgetWarning, InputError, InputTypeError, brief, caller_stacklevel
from tokenreduce.interfaces import BudgetConfig, Reducer


class ReductionSession:
    """Installs and removes the hooks driving ``reducer`` on the model ``adapter`` wraps.

    Threads may share it: forwards take turns and each thread's prefill state is its own
    (``concurrency.py``); the reports (``kept_indices`` ...) describe the calling thread's last prefill.

    Args:
        adapter: the model adapter.
        reducer: any reducer or pipeline; it is split into its single-stage ``steps()``.
        positions: ``"original"`` (kept tokens keep their position ids) or ``"contiguous"``
            (the pruned LLM input is renumbered 0..L-1; pre-LLM steps only).
        probe_queries: the importance is the attention of the last ``probe_queries`` queries,
            averaged.
        modalities: the media that are reduced, ``"video"`` and/or ``"image"`` (default: both, where
            the model family maps them onto grids); the tokens of the others are kept untouched.
        prefill_chunk: the decoder layers before the first in-LLM step run on chunks of this many
            sequence slots during a reduced prefill (``chunked_prefill.py``); ``None``: all at once.
    """

    state: ForwardState | None = PerThread()  # type: ignore[assignment]  # this thread's last prefill
    _phase: Phase | None = PerThread()  # type: ignore[assignment]
    _last: PrefillRecord | None = PerThread()  # type: ignore[assignment]  # the record of this thread's last prefill
    _decode_steps: int = PerThread(int)  # type: ignore[assignment]  # of that prefill, kept when the session ends

    def __init__(self, adapter, reducer: Reducer, *, positions: str = "original", probe_queries: int = 1,
                 modalities: tuple[str, ...] | list[str] | str = MODALITIES,
                 prefill_chunk: int | None = DEFAULT_PREFILL_CHUNK) -> None:
        if not isinstance(reducer, Reducer):
            raise InputTypeError(f"reducer must be a tokenreduce Reducer (e.g. tr.build('random', ratio=0.3)), "
                                 f"got {type(reducer).__name__}")
        if positions not in POSITION_POLICIES:
            raise InputError(f"positions must be one of {POSITION_POLICIES}, got {brief(positions)}")
        if isinstance(probe_queries, bool) or not isinstance(probe_queries, int) or probe_queries < 1:
            raise InputError(f"probe_queries must be a positive int, got {brief(probe_queries)}")
        self.prefill_chunk = check_prefill_chunk(prefill_chunk)
        self.adapter = adapter
        self.reducer = reducer
        self.positions = positions
        self.probe_queries = probe_queries
        self.modalities = _check_modalities(modalities)
        self.num_layers = len(adapter.layers)
        softmax = {i for i, layer in enumerate(adapter.layers) if adapter.attention_of(layer) is not None}
        self.schedule = Schedule(reducer, self.num_layers, positions, softmax)
        self.prefill = Prefill(adapter, self.schedule, positions=positions, probe_queries=probe_queries,
                               modalities=self.modalities)
        self.decode = Decode(adapter, self.schedule.softmax)
        self.chunked = ChunkedPrefill(adapter, self.schedule, self.prefill_chunk, probe_queries)
        self._forward_lock = ForwardLock()
        self.records: list[PrefillRecord] = []  # one per reduced prefill (every thread's), kept after the session
        self._warned_budget = False
        self._handles: list[Any] = []
        self._restore: list[Any] = []

    @property
    def encoder_layers(self) -> set[int]:
        """Vision-encoder layers whose attention the encoder steps read."""
        return self.schedule.encoder_layers

    # ----- install / remove ------------------------------------------------------------------
    def attach(self) -> None:
        """Install the hooks; on any failure nothing stays installed."""
        try:
            self._restore.extend(install_capture(self.adapter, self.encoder_layers))
            self._restore.extend(self.adapter.install(self))
            self._restore.extend(self.chunked.install(self._prefill_state))
            top, lm = self.adapter.top, self.adapter.language_model
            self._hook(top.register_forward_pre_hook(self._top_pre, with_kwargs=True))
            self._hook(top.register_forward_hook(self._top_post, with_kwargs=True))
            for module in {id(m): m for m in (top, self.adapter.vision_tower) if m is not None}.values():
                for handle in self._forward_lock.install(module):  # after the hooks above: runs last
                    self._hook(handle)
            self._hook(lm.register_forward_pre_hook(self._lm_pre, with_kwargs=True))
            for index, layer in enumerate(self.adapter.layers):
                self._hook(layer.register_forward_pre_hook(self._layer_pre(index), with_kwargs=True))
                attention = self.adapter.attention_of(layer)
                if attention is not None:  # recurrent layers have no attention to probe
                    self._hook(attention.register_forward_pre_hook(self._attention_pre(index), with_kwargs=True))
                if self.schedule.after_attention:
                    self._attach_mid_layer(index, layer)
        except BaseException:
            self.detach()
            raise

    def _hook(self, handle: Any) -> None:
        self._handles.append(handle)

    def _attach_mid_layer(self, index: int, layer) -> None:
        norm, mlp = self.adapter.post_attention_norm_of(layer), self.adapter.mlp_of(layer)
        self._hook(norm.register_forward_pre_hook(self._in_prefill(
            lambda state, module, args: self.prefill.reduce_mid_layer(state, index, args))))
        self._hook(mlp.register_forward_hook(self._in_prefill(
            lambda state, module, args, output: self.prefill.mlp_output(state, output))))
        # prepend: hooks installed earlier (transformers records layer outputs with hooks) see the real output
        self._hook(layer.register_forward_hook(self._in_prefill(
            lambda state, module, args, output: self.prefill.layer_output(state, output)), prepend=True))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        for restore in reversed(self._restore):
            restore()
        self._handles.clear()
        self._restore.clear()
        self._decode_steps = self.decode_steps
        self.state = None
        self._phase = None

    # ----- reporting: what the prefills decided (available after the session ends) -------------
    @property
    def last(self) -> PrefillRecord | None:
        """The record of this thread's last reduced prefill, or ``None`` before the first."""
        return self._last

    def videos(self) -> list[VideoRecord]:
        """Per reduced grid — each video, each image (in sample order, then sequence order): the last
        prefill's record of it (batch row, grid, tokens offered, kept indices, roles, steps)."""
        return list(self.last.videos) if self.last is not None else []

    def kept_indices(self) -> list[torch.Tensor]:
        """Per reduced grid — each video, each image (in sample order, then sequence order): the flat grid
        indices the last prefill kept."""
        return [video.kept for video in self.videos()]

    def inserted_counts(self) -> list[int]:
        """Per grid (in the order of ``kept_indices``): the new tokens the last prefill inserted after it
        (``Reduction.extra``, e.g. VisionZip's contextual tokens)."""
        return [video.inserted for video in self.videos()]

    def video_grids(self) -> list[tuple[int, tuple[int, int, int]]]:
        """Per grid (in the order of ``kept_indices``): its batch row and its ``(T, H, W)`` token grid."""
        return [(video.sample, video.grid) for video in self.videos()]

    def grid_modalities(self) -> list[str]:
        """Per grid (in the order of ``kept_indices``): ``"video"`` or ``"image"``."""
        return [video.modality for video in self.videos()]

    def report(self) -> dict[str, Any]:
        """Every prefill of the session as JSON-ready data: the reducer's config, and per prefill
        and grid the kept indices, roles, per-step importance, budget and seconds."""
        return report(self.reducer.config.to_dict(), self.records)

    def save_report(self, path: str | Path) -> Path:
        """Write ``report()`` to ``path`` as JSON."""
        return save_report(self.report(), path)

    @property
    def phase(self) -> Phase | None:
        """``Phase.PREFILL`` or ``Phase.DECODE`` while the model runs a reduced forward, else ``None``."""
        return self._phase

    @property
    def decode_steps(self) -> int:
        """Decode forwards run on the cache of the last prefill (``generate``'s later steps)."""
        return self._decode_steps if self.state is None else self.state.decode_steps

    @property
    def layer_lengths(self) -> dict[int, int]:
        """Sequence length each decoder layer received in the last prefill."""
        return dict(self.last.layer_lengths) if self.last is not None else {}

    @property
    def chunked_layers(self) -> dict[int, int]:
        """Decoder layers the last prefill ran in chunks, and in how many (``prefill_chunk``)."""
        return dict(self.last.chunked_layers) if self.last is not None else {}

    # ----- the model: which phase a call is in ----------------------------------------------------
    def _top_pre(self, module, args, kwargs):
        call = hf.call_arguments(args, kwargs)
        cache = hf.cache_argument(call)
        if self.adapter.carries_media(call, self.modalities):
            if cache is not None and hf.cache_length(cache) > 0:
                raise NotImplementedError("a video or image arrived on top of a non-empty cache; token reduction "
                                          "starts from an empty cache (a new generate call) only")
            self.state = ForwardState(call)
            if self.adapter.capture is not None:
                self.adapter.capture.mark()
            self._phase = Phase.PREFILL
            return self.prefill.take_labels(self.state, args, kwargs)
        state = self.state
        if state is not None and cache is not None and cache is state.cache and hf.cache_length(cache) > 0:
            self._phase = Phase.DECODE
            return self.decode.model_input(state, args, kwargs)
        self._phase = None
        return None

    def _top_post(self, module, args, kwargs, output):
        state = self.state
        replaced = None
        if state is not None and self._phase is Phase.PREFILL:
            self._finish_prefill(state)
            replaced = self.prefill.output_with_loss(state, output)
            state.cache = hf.output_cache(output)
            state.decoded = 0
            state.probe_inputs.clear()
            state.importance.clear()
            state.keys.clear()
            state.current = None
            state.labels = None
        elif state is not None and self._phase is Phase.DECODE:
            state.decoded += hf.query_length(hf.call_arguments(args, kwargs))
            state.decode_steps += 1
        self._phase = None
        return replaced

    def _finish_prefill(self, state: ForwardState) -> None:
        """Keep the prefill's record; warn (once) when its budget reduced nothing."""
        spans = state.visual.spans if state.visual is not None else ()
        record = PrefillRecord(video_records(state.groups, spans, self._budget()), dict(state.layer_counts),
                               dict(state.chunks))
        self.records.append(record)
        self._last = record
        if self._warned_budget or not self._warns_when_nothing_is_reduced():
            return
        if record.videos and all(video.share >= 1 for video in record.videos):
            self._warned_budget = True
            video = record.videos[0]
            name = self.reducer.config.name
            ratio, count = video.budget.get("ratio"), video.budget.get("count")
            if (ratio is not None and ratio < 1) or (count is not None and count < video.tokens):
                advice = (f"the budget asked for fewer, but {name}'s own rule kept them all on this input "
                          "(its budget notes: docs/strategies.md)")
            else:
                advice = "give a budget the videos can meet (ratio=r or count=k)"
            warnings.warn(f"{name} kept every visual token of this prefill (e.g. {video.tokens} of {video.tokens} on "
                          f"a {video.grid} grid) with budget {video.budget or 'default'}: nothing was reduced; "
                          f"{advice}", BudgetWarning, stacklevel=caller_stacklevel())

    def _budget(self) -> dict[str, Any]:
        config = self.reducer.config
        fields = config.budget_fields() if isinstance(config, BudgetConfig) else ("ratio",)
        return {name: getattr(config, name) for name in fields if getattr(config, name, None) is not None}

    def _warns_when_nothing_is_reduced(self) -> bool:
        """Not for reducers that keep everything by definition (``keep_all``) or at ratio 1."""
        parts = [self.reducer, *self.reducer.budget_steps()]
        return all(type(p).budgeted for p in parts) and getattr(self.reducer.config, "ratio", None) != 1.0

    # ----- the language model and its layers: handed to the phase --------------------------------
    def _lm_pre(self, module, args, kwargs):
        if self._phase is Phase.PREFILL:
            return self.prefill.language_model_input(self.state, args, kwargs)
        if self._phase is Phase.DECODE:
            return self.decode.language_model_input(self.state, args, kwargs)
        return None

    def _layer_pre(self, index: int):
        def hook(module, args, kwargs):
            if self._phase is Phase.PREFILL:
                return self.prefill.before_layer(self.state, index, args, kwargs)
            if self._phase is Phase.DECODE:
                return self.decode.before_layer(self.state, index, args, kwargs)
            return None
        return hook

    def _attention_pre(self, index: int):
        def hook(module, args, kwargs):
            if self._phase is Phase.PREFILL:
                self.prefill.record_probe_inputs(self.state, index, args, kwargs)
        return hook

    def _prefill_state(self) -> ForwardState | None:
        """The running prefill's state; ``None`` outside reduced prefills."""
        return self.state if self._phase is Phase.PREFILL else None

    def _in_prefill(self, function):
        """A hook that calls ``function(state, ...)`` during prefills only."""
        def hook(*args):
            return function(self.state, *args) if self._phase is Phase.PREFILL else None
        return hook


def _check_modalities(modalities: Any) -> tuple[str, ...]:
    """``modalities`` as a tuple of names from ``MODALITIES`` (one name alone allowed)."""
    if not isinstance(modalities, (str, list, tuple)):
        raise InputTypeError(f"modalities must be 'video', 'image' or a list of them, got {brief(modalities)}")
    chosen = (modalities,) if isinstance(modalities, str) else tuple(modalities)
    if not chosen or any(m not in MODALITIES for m in chosen):
        raise InputError(f"modalities must name one or more of {MODALITIES}, got {brief(modalities)}")
    return chosen
