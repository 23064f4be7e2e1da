"""The hooks that make a decoder really process fewer visual tokens.

One ``ReductionSession`` drives one reducer on one model through forward hooks:

* on the model (``adapter.top``): tells a prefill with video (a new reduction from scratch) from
  a decode step on the cache that prefill filled (never re-pruned) and from unrelated calls;
* on the language model: pre-LLM steps drop and merge rows of ``inputs_embeds``; the position
  ids, attention mask and extra per-token inputs (Qwen3-VL deepstack) follow; during decoding
  the 2-D mask is sliced to the pruned cache;
* on each decoder layer: in-LLM steps run before layer K with the probe of layer K-1, the hidden
  states shrink and every later layer gets the matching mask and rotary embeddings; during
  decoding these layers get masks sized to their shorter cache;
* inside a decoder layer, for steps whose ``position`` is ``"after_attention"`` (FrameFusion): a
  pre-hook on layer K-1's post-attention norm reduces ``residual + attention`` with layer K-1's
  probe, so its MLP runs on the kept tokens only; a hook on the MLP hands the layer a zero to add
  to its (full-length) residual and a hook on the layer returns ``reduced + MLP output``, exactly
  what the layer computes for the reduced tokens. Layer K-1's cache keeps every token it saw.

Kept tokens keep their original position ids, so generated tokens continue from the original
length. A step that drops nothing changes nothing: ``keep_all`` runs the unmodified model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from tokenreduce.adapters import hf
from tokenreduce.adapters.concurrency import ForwardLock, PerThread
from tokenreduce.adapters.layout import SequenceLayout, VisualLayout, gather_slots
from tokenreduce.adapters.llm_input import reduce_llm_input, shift_positions
from tokenreduce.adapters.probe import AttentionInputs, last_query_attention
from tokenreduce.adapters.steps import SequenceEdit, VideoGroup, run_steps, video_groups
from tokenreduce.errors import ConfigError, InputError, InputTypeError, brief
from tokenreduce.interfaces import LayerwiseReducer, Reducer, Stage, in_llm_position

POSITION_POLICIES = ("original", "contiguous")


@dataclass
class LayoutInputs:
    """The per-layer arguments of one pruned layout during prefill."""

    layout: SequenceLayout
    position_embeddings: Any
    position_ids: torch.Tensor | None
    attention_mask: Any


@dataclass
class ForwardState:
    """Everything one prefill decided; decode steps read it."""

    visual: VisualLayout
    groups: list[VideoGroup]
    lm_layout: SequenceLayout | None = None  # layout the decoder layers start from
    lm_changed: bool = False  # the pre-LLM steps changed the LLM input
    current: LayoutInputs | None = None  # in-LLM layout in force (None: the LM's own)
    layer_layouts: dict[int, SequenceLayout] = field(default_factory=dict)
    encoded: Any = None  # the pre-encoded video output of this prefill (generate), if any
    next_position: torch.Tensor | None = None  # [B] position of the first generated token
    position_shift: torch.Tensor | None = None  # subtracted from later positions (contiguous; shift_positions)
    seq_len: int = 0
    cache: Any = None
    decoded: int = 0  # tokens decoded on top of the prefill
    decode_steps: int = 0  # decode forwards recognised since the prefill
    tail_valid: torch.Tensor | None = None
    probe_inputs: dict[int, AttentionInputs] = field(default_factory=dict)
    importance: dict[int, torch.Tensor] = field(default_factory=dict)  # probe results by layer
    layer_counts: dict[int, int] = field(default_factory=dict)  # sequence length each layer saw
    layer_kwargs: dict[str, Any] | None = None  # what the running decoder layer received
    mid: list[torch.Tensor] = field(default_factory=list)  # [reduced residual, MLP output] inside a layer


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
    """

    state: ForwardState | None = PerThread()  # type: ignore[assignment]  # this thread's last prefill
    _phase: str | None = PerThread()  # type: ignore[assignment]

    def __init__(self, adapter, reducer: Reducer, *, positions: str = "original", probe_queries: int = 1) -> None:
        if not isinstance(reducer, Reducer):
            raise InputTypeError(f"reducer must be a tokenreduce Reducer (e.g. tr.build('random', ratio=0.3)), "
                                 f"got {type(reducer).__name__}")
        if positions not in POSITION_POLICIES:
            raise InputError(f"positions must be one of {POSITION_POLICIES}, got {brief(positions)}")
        if isinstance(probe_queries, bool) or not isinstance(probe_queries, int) or probe_queries < 1:
            raise InputError(f"probe_queries must be a positive int, got {brief(probe_queries)}")
        self.adapter = adapter
        self.reducer = reducer
        self.positions = positions
        self.probe_queries = probe_queries
        self.num_layers = len(adapter.layers)
        self.encoder_steps: list[Reducer] = []
        self.pre_steps: list[Reducer] = []
        self.in_steps: dict[int, list[Reducer]] = {}
        self.after_attention: set[int] = set()  # id() of in-LLM steps running after the attention block
        for step in reducer.steps():
            self._schedule(step)
        self.layerwise_from = min((s.layer for s in reducer.steps() if isinstance(s, LayerwiseReducer)),
                                  default=None)
        if self.in_steps and positions == "contiguous":
            raise InputError("positions='contiguous' renumbers the LLM input and works with pre-LLM steps only; "
                             "in-LLM steps keep the original positions")
        self._forward_lock = ForwardLock()
        self._handles: list[Any] = []
        self._restore: list[Any] = []

    @property
    def encoder_layers(self) -> set[int]:
        """Vision-encoder layers whose attention the encoder steps read."""
        return {encoder_layer(s) for s in self.encoder_steps}

    def _schedule(self, step: Reducer) -> None:
        if step.stage is Stage.ENCODER:
            self.encoder_steps.append(step)
            return
        if step.stage is Stage.PRE_LLM:
            self.pre_steps.append(step)
            return
        layer = step.layer
        first = 0 if isinstance(step, LayerwiseReducer) else 1  # layer 0 has no previous layer to probe
        if layer is None or not first <= layer < self.num_layers:
            raise ConfigError(f"{step.registered_name or type(step).__name__}.layer must be in [{first}, "
                              f"{self.num_layers - 1}] for a decoder with {self.num_layers} layers, got {layer}")
        self.in_steps.setdefault(layer, []).append(step)
        if in_llm_position(step) == "after_attention":
            self.after_attention.add(id(step))

    # ----- install / remove ------------------------------------------------------------------
    def attach(self) -> None:
        """Install the hooks; on any failure nothing stays installed."""
        try:
            self._restore.extend(self.adapter.install(self))
            top, lm = self.adapter.top, self.adapter.language_model
            self._handles.append(top.register_forward_pre_hook(self._top_pre, with_kwargs=True))
            self._handles.append(top.register_forward_hook(self._top_post, with_kwargs=True))
            for module in {id(m): m for m in (top, self.adapter.vision_tower) if m is not None}.values():
                self._handles.extend(self._forward_lock.install(module))  # after the hooks above: runs last
            self._handles.append(lm.register_forward_pre_hook(self._lm_pre, with_kwargs=True))
            for index, layer in enumerate(self.adapter.layers):
                self._handles.append(layer.register_forward_pre_hook(self._layer_hook(index), with_kwargs=True))
                attention = self.adapter.attention_of(layer)
                self._handles.append(attention.register_forward_pre_hook(self._probe_hook(index), with_kwargs=True))
                if self.after_attention:
                    self._attach_mid_layer(index, layer)
        except BaseException:
            self.detach()
            raise

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        for restore in reversed(self._restore):
            restore()
        self._handles.clear()
        self._restore.clear()
        self.state = None
        self._phase = None

    # ----- reporting --------------------------------------------------------------------------
    def kept_indices(self) -> list[torch.Tensor]:
        """Per video (in the adapter's span order): the flat grid indices the last prefill kept."""
        if self.state is None:
            return []
        out: list[torch.Tensor | None] = [None] * len(self.state.visual.spans)
        for group in self.state.groups:
            for row, span_id in enumerate(group.span_ids):
                out[span_id] = group.present[row].nonzero().flatten()
        return out  # type: ignore[return-value]

    def inserted_counts(self) -> list[int]:
        """Per video (in the order of ``kept_indices``): the new tokens the last prefill inserted after it
        (``Reduction.extra``, e.g. VisionZip's contextual tokens)."""
        if self.state is None:
            return []
        out = [0] * len(self.state.visual.spans)
        for group in self.state.groups:
            for row, span_id in enumerate(group.span_ids):
                out[span_id] = group.inserted[row]
        return out

    def video_grids(self) -> list[tuple[int, tuple[int, int, int]]]:
        """Per video (in the order of ``kept_indices``): its batch row and its ``(T, H, W)`` token grid."""
        if self.state is None:
            return []
        return [(span.sample, span.grid) for span in self.state.visual.spans]

    @property
    def phase(self) -> str | None:
        """``"prefill"`` or ``"decode"`` while the model runs a reduced forward, else ``None``."""
        return self._phase

    @property
    def decode_steps(self) -> int:
        """Decode forwards run on the cache of the last prefill (``generate``'s later steps)."""
        return 0 if self.state is None else self.state.decode_steps

    @property
    def layer_lengths(self) -> dict[int, int]:
        """Sequence length each decoder layer received in the last prefill."""
        return {} if self.state is None else dict(self.state.layer_counts)

    # ----- model-level hooks ------------------------------------------------------------------
    def _top_pre(self, module, args, kwargs):
        call = hf.call_arguments(args, kwargs)
        cache = hf.cache_argument(call)
        visual = self.adapter.visual_layout(call)
        if visual is not None:
            if cache is not None and hf.cache_length(cache) > 0:
                raise NotImplementedError("a video arrived on top of a non-empty cache; token reduction starts "
                                          "from an empty cache (a new generate call) only")
            device = self.adapter.language_model_device()
            self.state = ForwardState(visual, video_groups(visual, device), encoded=hf.encoded_video(call))
            self._phase = "prefill"
            return None
        state = self.state
        if state is not None and cache is not None and cache is state.cache and hf.cache_length(cache) > 0:
            self._phase = "decode"
            if kwargs.get(hf.POSITION_IDS) is None and state.next_position is not None:
                kwargs = dict(kwargs)
                kwargs[hf.POSITION_IDS] = self._decode_positions(hf.query_length(call))
                return args, kwargs
            return None
        self._phase = None
        return None

    def _top_post(self, module, args, kwargs, output):
        state = self.state
        if state is not None and self._phase == "prefill":
            state.cache = hf.output_cache(output)
            state.decoded = 0
            state.probe_inputs.clear()
            state.importance.clear()
            state.current = None
        elif state is not None and self._phase == "decode":
            state.decoded += hf.query_length(hf.call_arguments(args, kwargs))
            state.decode_steps += 1
        self._phase = None

    def _decode_positions(self, query_length: int) -> torch.Tensor:
        state = self.state
        start = state.next_position + state.decoded
        positions = start[:, None] + torch.arange(query_length, device=start.device)
        rows = self.adapter.position_rows
        return positions if rows is None else positions.unsqueeze(0).expand(rows, -1, -1)

    # ----- language-model hook ----------------------------------------------------------------
    def _lm_pre(self, module, args, kwargs):
        if self._phase == "prefill":
            return self._prefill_lm(args, kwargs)
        if self._phase == "decode":
            return self._decode_lm(args, kwargs)
        return None

    def _prefill_lm(self, args, kwargs):
        state = self.state
        embeds = kwargs.get(hf.INPUTS_EMBEDS)
        if embeds is None:
            raise RuntimeError("the language model was called without inputs_embeds during a reduced prefill")
        batch, length = embeds.shape[:2]
        if length != state.visual.seq_len or batch != state.visual.batch_size:
            raise RuntimeError(f"the language model received a sequence of shape {(batch, length)}, the visual "
                               f"layout describes {(state.visual.batch_size, state.visual.seq_len)}")
        state.seq_len = length
        reduced = reduce_llm_input(embeds, kwargs.get(hf.POSITION_IDS), kwargs.get(hf.ATTENTION_MASK), state.groups,
                                   self.encoder_steps + self.pre_steps, num_layers=self.num_layers,
                                   positions_policy=self.positions, encoder_signals=self._encoder_signals())
        state.lm_layout = reduced.layout
        state.next_position = reduced.next_position
        state.position_shift = reduced.position_shift
        if not reduced.changed:
            return None
        kwargs = dict(kwargs)
        if reduced.index is not None:
            self.adapter.prune_language_inputs(kwargs, reduced.index)
        kwargs[hf.INPUTS_EMBEDS] = reduced.inputs_embeds
        kwargs[hf.POSITION_IDS] = reduced.position_ids
        kwargs[hf.ATTENTION_MASK] = reduced.attention_mask
        state.lm_changed = True
        return args, kwargs

    def _encoder_signals(self) -> dict[int, list[tuple[torch.Tensor, torch.Tensor]]] | None:
        if not self.encoder_steps:
            return None
        capture = self.adapter.capture
        record = capture.find(self.state.encoded) if capture is not None else None
        if record is None:
            raise RuntimeError("encoder steps need the vision tower to run while the reducer is applied (pass "
                               "pixel values, not features encoded before tr.apply)")
        grids = [span.grid for span in self.state.visual.spans]
        signals = {id(step): self.adapter.encoder_token_signals(record, encoder_layer(step), len(grids))
                   for step in self.encoder_steps}
        for per_video in signals.values():
            if [imp.numel() for imp, _ in per_video] != [t * h * w for t, h, w in grids]:
                raise NotImplementedError("the vision-tower call does not match the videos of the prompt one to one "
                                          "(generate repeats videos for beams / num_return_sequences); encoder "
                                          "steps need one encoded video per video of the prompt")
        return signals

    def _decode_lm(self, args, kwargs):
        state = self.state
        kwargs = dict(kwargs)
        mask = kwargs.get(hf.ATTENTION_MASK)
        query = hf.query_length(kwargs)
        if mask is not None and isinstance(mask, torch.Tensor) and mask.ndim == 2:
            tail = mask[:, state.seq_len:].to(torch.bool)
        else:
            tail = torch.ones(state.visual.batch_size, state.decoded + query, dtype=torch.bool,
                              device=state.lm_layout.valid.device)
        state.tail_valid = tail
        if state.position_shift is not None and kwargs.get(hf.POSITION_IDS) is not None:
            positions = kwargs[hf.POSITION_IDS]
            kwargs[hf.POSITION_IDS] = shift_positions(positions, state.position_shift.to(positions.device))
        if state.lm_changed:
            dtype = mask.dtype if isinstance(mask, torch.Tensor) else torch.long
            kwargs[hf.ATTENTION_MASK] = torch.cat([state.lm_layout.valid, tail], dim=1).to(dtype)
        return args, kwargs

    # ----- decoder-layer hooks ------------------------------------------------------------------
    def _layer_hook(self, index: int):
        def hook(module, args, kwargs):
            if self._phase == "prefill":
                return self._prefill_layer(index, args, kwargs)
            if self._phase == "decode":
                return self._decode_layer(index, args, kwargs)
            return None
        return hook

    def _probe_hook(self, index: int):
        def hook(module, args, kwargs):
            if self._phase == "prefill" and self._needs_probe(index + 1):
                hidden = kwargs.get(hf.HIDDEN_STATES, args[0] if args else None)
                self.state.probe_inputs[index] = AttentionInputs(
                    hidden, kwargs[hf.POSITION_EMBEDDINGS], kwargs.get(hf.ATTENTION_MASK))
        return hook

    def _needs_probe(self, layer: int) -> bool:
        if layer in self.in_steps:
            return True
        if self.layerwise_from is None or layer <= self.layerwise_from or self.state is None:
            return False
        states = [s for g in self.state.groups for s in g.layerwise.values() if not getattr(s, "done", False)]
        return any(getattr(s, "wants_importance", True) for s in states)

    def _layerwise_active(self) -> bool:
        state = self.state
        return state is not None and any(
            not getattr(s, "done", False) for g in state.groups for s in g.layerwise.values())

    def _runs_mid_layer(self, step: Reducer, layer: int) -> bool:
        """Step ``layer`` of ``step`` runs inside layer ``layer - 1``, after its attention block."""
        return layer >= 1 and id(step) in self.after_attention

    def _steps_at(self, layer: int) -> list[tuple[Reducer, int]]:
        steps = [(s, layer) for s in self.in_steps.get(layer, [])]
        if self.layerwise_from is not None and layer > self.layerwise_from and self._layerwise_active():
            started = {key for g in self.state.groups for key in g.layerwise}
            steps += [(s, layer) for s in self.reducer.steps()
                      if isinstance(s, LayerwiseReducer) and id(s) in started and s.layer < layer]
        return steps

    def _prefill_layer(self, index: int, args, kwargs):
        state = self.state
        hidden = args[0] if args else kwargs[hf.HIDDEN_STATES]
        steps = [(s, layer) for s, layer in self._steps_at(index) if not self._runs_mid_layer(s, layer)]
        state.layer_kwargs = kwargs
        if steps:
            current = state.current.layout if state.current is not None else state.lm_layout
            importance = self._probe_importance(index - 1)
            edit = run_steps(steps, state.groups, hidden, current, importance=importance,
                             num_layers=self.num_layers)
            hidden = self._apply_in_llm(edit, current, hidden, kwargs)
        state.layer_counts[index] = int(hidden.shape[1])
        if state.current is None:
            return None
        state.layer_layouts[index] = state.current.layout
        kwargs = dict(kwargs)
        kwargs[hf.ATTENTION_MASK] = state.current.attention_mask
        kwargs[hf.POSITION_EMBEDDINGS] = state.current.position_embeddings
        if kwargs.get(hf.POSITION_IDS) is not None:
            kwargs[hf.POSITION_IDS] = state.current.position_ids
        state.layer_kwargs = kwargs
        if args:
            return (hidden, *args[1:]), kwargs
        kwargs[hf.HIDDEN_STATES] = hidden
        return args, kwargs

    def _probe_importance(self, layer: int) -> torch.Tensor | None:
        """``[B, L]`` head-averaged probe of decoder layer ``layer``, if it was recorded (computed once,
        for the steps after that layer's attention and those before the next layer alike)."""
        state = self.state
        inputs = state.probe_inputs.pop(layer, None)
        if inputs is not None:
            attention = self.adapter.attention_of(self.adapter.layers[layer])
            state.importance[layer] = last_query_attention(attention, inputs, self.probe_queries).mean(dim=1)
        return state.importance.get(layer)

    # ----- inside a decoder layer (steps at "after_attention") ---------------------------------
    def _attach_mid_layer(self, index: int, layer) -> None:
        norm, mlp = self.adapter.post_attention_norm_of(layer), self.adapter.mlp_of(layer)
        self._handles.append(norm.register_forward_pre_hook(self._mid_reduce_hook(index)))
        self._handles.append(mlp.register_forward_hook(self._mid_mlp_hook))
        # prepend: hooks installed earlier (transformers records layer outputs with hooks) see the real output
        self._handles.append(layer.register_forward_hook(self._mid_output_hook, prepend=True))

    def _mid_reduce_hook(self, index: int):
        def hook(module, args):
            state = self.state
            if self._phase != "prefill" or index + 1 >= self.num_layers:
                return None
            steps = [(s, layer) for s, layer in self._steps_at(index + 1) if self._runs_mid_layer(s, layer)]
            if not steps:
                return None
            residual = args[0]
            current = state.current.layout if state.current is not None else state.lm_layout
            edit = run_steps(steps, state.groups, residual, current, importance=self._probe_importance(index),
                             num_layers=self.num_layers)
            reduced = self._apply_in_llm(edit, current, residual, state.layer_kwargs)
            if reduced is residual:
                return None
            state.mid = [reduced]
            return (reduced, *args[1:])
        return hook

    def _mid_mlp_hook(self, module, args, output):
        state = self.state
        if self._phase != "prefill" or len(state.mid) != 1:
            return None
        state.mid.append(output)
        return output.new_zeros(())  # the layer adds it to its full-length residual; its output is replaced

    def _mid_output_hook(self, module, args, output):
        state = self.state
        if self._phase != "prefill" or not state.mid:
            return None
        reduced, mlp_output = state.mid
        state.mid = []
        return reduced + mlp_output

    def _apply_in_llm(self, edit: SequenceEdit, layout: SequenceLayout, hidden: torch.Tensor, kwargs) -> torch.Tensor:
        if edit.extras:
            raise NotImplementedError("new tokens (Reduction.extra) are inserted before the LLM only; an in-LLM "
                                      "step returned some")
        if not edit.changes:
            return hidden
        state = self.state
        new_layout, index = layout.keep(edit.keep)
        hidden = edit.apply_features(gather_slots(hidden, index, dim=1, fill=0.0), new_layout)
        if not edit.drops:
            return hidden
        cos, sin = kwargs[hf.POSITION_EMBEDDINGS] if state.current is None else state.current.position_embeddings
        positions = kwargs.get(hf.POSITION_IDS) if state.current is None else state.current.position_ids
        seq_dim = hf.rotary_sequence_dim(cos)
        state.current = LayoutInputs(
            new_layout,
            (gather_slots(cos, index, dim=seq_dim), gather_slots(sin, index, dim=seq_dim)),
            None if positions is None else gather_slots(positions, index, dim=positions.ndim - 1, fill=1),
            hf.causal_mask(self.adapter.text_config, new_layout.valid, new_layout.length, hidden.dtype),
        )
        return hidden

    def _decode_layer(self, index: int, args, kwargs):
        state = self.state
        layout = state.layer_layouts.get(index)
        if layout is None:
            return None
        hidden = args[0] if args else kwargs[hf.HIDDEN_STATES]
        key_valid = torch.cat([layout.valid, state.tail_valid.to(layout.valid.device)], dim=1)
        kwargs = dict(kwargs)
        kwargs[hf.ATTENTION_MASK] = hf.causal_mask(self.adapter.text_config, key_valid, hidden.shape[1],
                                                   hidden.dtype)
        return args, kwargs


def encoder_layer(step: Reducer) -> int:
    """The vision-encoder layer an encoder step reads: its config's ``encoder_layer``
    (``EncoderConfig``), else the second-to-last (the VisionZip / FasterVLM choice)."""
    return int(getattr(step.config, "encoder_layer", -2))
