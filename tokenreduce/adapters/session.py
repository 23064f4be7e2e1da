"""The hooks that make a decoder really process fewer visual tokens.

One ``ReductionSession`` drives one reducer on one model through forward hooks:

* on the model (``adapter.top``): tells a prefill with video (a new reduction from scratch) from
  a decode step on the cache that prefill filled (never re-pruned) and from unrelated calls;
* on the language model: pre-LLM steps drop and merge rows of ``inputs_embeds``; the position
  ids, attention mask and extra per-token inputs (Qwen3-VL deepstack) follow; during decoding
  the 2-D mask is sliced to the pruned cache;
* on each decoder layer: in-LLM steps run before layer K with the probe of layer K-1, the hidden
  states shrink and every later layer gets the matching mask and rotary embeddings; during
  decoding these layers get masks sized to their shorter cache.

Kept tokens keep their original position ids, so generated tokens continue from the original
length. A step that drops nothing changes nothing: ``keep_all`` runs the unmodified model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from tokenreduce.adapters.layout import SequenceLayout, VisualLayout, gather_slots
from tokenreduce.adapters.masks import causal_mask_for
from tokenreduce.adapters.probe import AttentionInputs, last_query_attention
from tokenreduce.adapters.steps import SequenceEdit, VideoGroup, run_steps, video_groups
from tokenreduce.interfaces import LayerwiseReducer, Reducer, Stage

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
    next_position: torch.Tensor | None = None  # [B] position of the first generated token
    position_shift: torch.Tensor | None = None  # [B] subtracted from later positions (contiguous)
    seq_len: int = 0
    cache: Any = None
    decoded: int = 0
    tail_valid: torch.Tensor | None = None
    probe_inputs: dict[int, AttentionInputs] = field(default_factory=dict)
    layer_counts: dict[int, int] = field(default_factory=dict)  # sequence length each layer saw


class ReductionSession:
    """Installs and removes the hooks driving ``reducer`` on the model ``adapter`` wraps.

    Args:
        adapter: the model adapter.
        reducer: any reducer or pipeline; it is split into its single-stage ``steps()``.
        positions: ``"original"`` (kept tokens keep their position ids) or ``"contiguous"``
            (the pruned LLM input is renumbered 0..L-1; pre-LLM steps only).
        probe_queries: the importance is the attention of the last ``probe_queries`` queries,
            averaged.
    """

    def __init__(self, adapter, reducer: Reducer, *, positions: str = "original", probe_queries: int = 1) -> None:
        if not isinstance(reducer, Reducer):
            raise TypeError(f"reducer must be a tokenreduce Reducer (e.g. tr.build('random', ratio=0.3)), "
                            f"got {type(reducer).__name__}")
        if positions not in POSITION_POLICIES:
            raise ValueError(f"positions must be one of {POSITION_POLICIES}, got {positions!r}")
        if isinstance(probe_queries, bool) or not isinstance(probe_queries, int) or probe_queries < 1:
            raise ValueError(f"probe_queries must be a positive int, got {probe_queries!r}")
        self.adapter = adapter
        self.reducer = reducer
        self.positions = positions
        self.probe_queries = probe_queries
        self.num_layers = len(adapter.layers)
        self.pre_steps: list[Reducer] = []
        self.in_steps: dict[int, list[Reducer]] = {}
        for step in reducer.steps():
            self._schedule(step)
        self.layerwise_from = min((s.layer for s in reducer.steps() if isinstance(s, LayerwiseReducer)),
                                  default=None)
        if self.in_steps and positions == "contiguous":
            raise ValueError("positions='contiguous' renumbers the LLM input and works with pre-LLM steps only; "
                             "in-LLM steps keep the original positions")
        self.state: ForwardState | None = None
        self._phase: str | None = None
        self._handles: list[Any] = []
        self._restore: list[Any] = []

    def _schedule(self, step: Reducer) -> None:
        if step.stage is Stage.ENCODER:
            raise NotImplementedError(f"{step.registered_name or type(step).__name__} runs in the vision encoder "
                                      f"(Stage.ENCODER), which the {type(self.adapter).__name__} adapter does not "
                                      "support yet")
        if step.stage is Stage.PRE_LLM:
            self.pre_steps.append(step)
            return
        layer = step.layer
        if layer is None or not 1 <= layer < self.num_layers:
            raise ValueError(f"{step.registered_name or type(step).__name__}.layer must be in [1, "
                             f"{self.num_layers - 1}] for a decoder with {self.num_layers} layers, got {layer}")
        self.in_steps.setdefault(layer, []).append(step)

    # ----- install / remove ------------------------------------------------------------------
    def attach(self) -> None:
        top, lm = self.adapter.top, self.adapter.language_model
        self._handles.append(top.register_forward_pre_hook(self._top_pre, with_kwargs=True))
        self._handles.append(top.register_forward_hook(self._top_post, with_kwargs=True))
        self._handles.append(lm.register_forward_pre_hook(self._lm_pre, with_kwargs=True))
        for index, layer in enumerate(self.adapter.layers):
            self._handles.append(layer.register_forward_pre_hook(self._layer_hook(index), with_kwargs=True))
            attention = self.adapter.attention_of(layer)
            self._handles.append(attention.register_forward_pre_hook(self._probe_hook(index), with_kwargs=True))
        self._restore.extend(self.adapter.install(self))

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

    def video_grids(self) -> list[tuple[int, tuple[int, int, int]]]:
        """Per video (in the order of ``kept_indices``): its batch row and its ``(T, H, W)`` token grid."""
        if self.state is None:
            return []
        return [(span.sample, span.grid) for span in self.state.visual.spans]

    @property
    def layer_lengths(self) -> dict[int, int]:
        """Sequence length each decoder layer received in the last prefill."""
        return {} if self.state is None else dict(self.state.layer_counts)

    # ----- model-level hooks ------------------------------------------------------------------
    def _top_pre(self, module, args, kwargs):
        call = dict(kwargs)
        if args:
            call.setdefault("input_ids", args[0])
        cache = call.get("past_key_values")
        visual = self.adapter.visual_layout(call)
        if visual is not None:
            if cache is not None and cache.get_seq_length() > 0:
                raise NotImplementedError("a video arrived on top of a non-empty cache; token reduction starts "
                                          "from an empty cache (a new generate call) only")
            device = self.adapter.language_model_device()
            self.state = ForwardState(visual, video_groups(visual, device))
            self._phase = "prefill"
            return None
        state = self.state
        if state is not None and cache is not None and cache is state.cache and cache.get_seq_length() > 0:
            self._phase = "decode"
            if kwargs.get("position_ids") is None and state.next_position is not None:
                kwargs = dict(kwargs)
                kwargs["position_ids"] = self._decode_positions(self.adapter.query_length(call))
                return args, kwargs
            return None
        self._phase = None
        return None

    def _top_post(self, module, args, kwargs, output):
        state = self.state
        if state is not None and self._phase == "prefill":
            state.cache = getattr(output, "past_key_values", None)
            state.decoded = 0
            state.probe_inputs.clear()
            state.current = None
        elif state is not None and self._phase == "decode":
            call = dict(kwargs)
            if args:
                call.setdefault("input_ids", args[0])
            state.decoded += self.adapter.query_length(call)
        self._phase = None
        return None

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
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            raise RuntimeError("the language model was called without inputs_embeds during a reduced prefill")
        batch, length = embeds.shape[:2]
        if length != state.visual.seq_len or batch != state.visual.batch_size:
            raise RuntimeError(f"the language model received a sequence of shape {(batch, length)}, the visual "
                               f"layout describes {(state.visual.batch_size, state.visual.seq_len)}")
        mask = kwargs.get("attention_mask")
        if mask is not None and (not isinstance(mask, torch.Tensor) or mask.ndim != 2):
            raise NotImplementedError("token reduction needs a 2-D attention_mask (or none); prepared 4-D masks "
                                      "(static caches, compiled generation) are not supported")
        state.seq_len = length
        layout = SequenceLayout.identity(batch, length, mask, embeds.device)
        state.lm_layout = layout
        positions = kwargs.get("position_ids")
        if positions is None:
            positions = torch.arange(length, device=embeds.device).expand(batch, -1)
        state.next_position = self._next_position(positions, layout.valid)
        for group in state.groups:
            rows = group.samples[:, None].expand_as(group.positions)
            group.embeddings = embeds[rows, group.positions]
        edit = run_steps([(s, None) for s in self.pre_steps], state.groups, embeds, layout,
                         num_layers=self.num_layers) if self.pre_steps else None
        if (edit is None or not edit.changes) and self.positions == "original":
            return None
        new_layout, index = layout.keep(edit.keep) if edit is not None else (layout, None)
        kwargs = dict(kwargs)
        if index is not None:
            embeds = gather_slots(embeds, index, dim=1, fill=0.0)
            positions = gather_slots(positions, index, dim=positions.ndim - 1, fill=1)
            self.adapter.prune_language_inputs(kwargs, layout, index)
        if edit is not None:
            embeds = edit.apply_features(embeds, new_layout)
        if self.positions == "contiguous":
            contiguous = (new_layout.valid.long().cumsum(1) - 1).masked_fill(~new_layout.valid, 1)
            positions = contiguous.expand(*positions.shape[:-2], -1, -1) if positions.ndim == 3 else contiguous
            renumbered = self._next_position(positions, new_layout.valid)
            state.position_shift = state.next_position - renumbered
        kwargs["inputs_embeds"] = embeds
        kwargs["position_ids"] = positions
        kwargs["attention_mask"] = new_layout.valid.to(mask.dtype if mask is not None else torch.long)
        state.lm_layout = new_layout
        state.lm_changed = True
        return args, kwargs

    @staticmethod
    def _next_position(positions: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        rope = positions[-3:] if positions.ndim == 3 else positions[None]
        masked = rope.masked_fill(~valid[None], torch.iinfo(rope.dtype).min)
        return masked.amax(dim=(0, 2)) + 1

    def _decode_lm(self, args, kwargs):
        state = self.state
        kwargs = dict(kwargs)
        mask = kwargs.get("attention_mask")
        query = kwargs["inputs_embeds"].shape[1]
        if mask is not None and isinstance(mask, torch.Tensor) and mask.ndim == 2:
            tail = mask[:, state.seq_len:].to(torch.bool)
        else:
            tail = torch.ones(state.visual.batch_size, state.decoded + query, dtype=torch.bool,
                              device=kwargs["inputs_embeds"].device)
        state.tail_valid = tail
        if state.position_shift is not None and kwargs.get("position_ids") is not None:
            positions = kwargs["position_ids"]
            shift = state.position_shift.to(positions.device)
            kwargs["position_ids"] = positions - (shift[None, :, None] if positions.ndim == 3 else shift[:, None])
        if state.lm_changed:
            dtype = mask.dtype if isinstance(mask, torch.Tensor) else torch.long
            kwargs["attention_mask"] = torch.cat([state.lm_layout.valid, tail], dim=1).to(dtype)
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
                hidden = kwargs.get("hidden_states", args[0] if args else None)
                self.state.probe_inputs[index] = AttentionInputs(
                    hidden, kwargs["position_embeddings"], kwargs.get("attention_mask"))
            return None
        return hook

    def _needs_probe(self, layer: int) -> bool:
        if layer in self.in_steps:
            return True
        return self.layerwise_from is not None and layer > self.layerwise_from and self._layerwise_active()

    def _layerwise_active(self) -> bool:
        state = self.state
        return state is not None and any(
            not getattr(s, "done", False) for g in state.groups for s in g.layerwise.values())

    def _steps_at(self, layer: int) -> list[tuple[Reducer, int]]:
        steps = [(s, layer) for s in self.in_steps.get(layer, [])]
        if self.layerwise_from is not None and layer > self.layerwise_from and self._layerwise_active():
            started = {key for g in self.state.groups for key in g.layerwise}
            steps += [(s, layer) for s in self.reducer.steps()
                      if isinstance(s, LayerwiseReducer) and id(s) in started and s.layer < layer]
        return steps

    def _prefill_layer(self, index: int, args, kwargs):
        state = self.state
        hidden = args[0] if args else kwargs["hidden_states"]
        steps = self._steps_at(index)
        if steps:
            current = state.current.layout if state.current is not None else state.lm_layout
            probe = last_query_attention(self.adapter.attention_of(self.adapter.layers[index - 1]),
                                         state.probe_inputs.pop(index - 1), self.probe_queries)
            edit = run_steps(steps, state.groups, hidden, current, importance=probe.mean(dim=1),
                             num_layers=self.num_layers)
            hidden = self._apply_in_llm(edit, current, hidden, kwargs)
        state.layer_counts[index] = int(hidden.shape[1])
        if state.current is None:
            return None
        state.layer_layouts[index] = state.current.layout
        kwargs = dict(kwargs)
        kwargs["attention_mask"] = state.current.attention_mask
        kwargs["position_embeddings"] = state.current.position_embeddings
        if kwargs.get("position_ids") is not None:
            kwargs["position_ids"] = state.current.position_ids
        if args:
            return (hidden, *args[1:]), kwargs
        kwargs["hidden_states"] = hidden
        return args, kwargs

    def _apply_in_llm(self, edit: SequenceEdit, layout: SequenceLayout, hidden: torch.Tensor, kwargs) -> torch.Tensor:
        if not edit.changes:
            return hidden
        state = self.state
        new_layout, index = layout.keep(edit.keep)
        hidden = edit.apply_features(gather_slots(hidden, index, dim=1, fill=0.0), new_layout)
        if not edit.drops:
            return hidden
        cos, sin = kwargs["position_embeddings"] if state.current is None else state.current.position_embeddings
        positions = kwargs.get("position_ids") if state.current is None else state.current.position_ids
        state.current = LayoutInputs(
            new_layout,
            (gather_slots(cos, index, dim=1), gather_slots(sin, index, dim=1)),
            None if positions is None else gather_slots(positions, index, dim=positions.ndim - 1, fill=1),
            causal_mask_for(self.adapter.text_config, new_layout.valid, new_layout.length, hidden.dtype),
        )
        return hidden

    def _decode_layer(self, index: int, args, kwargs):
        state = self.state
        layout = state.layer_layouts.get(index)
        if layout is None:
            return None
        hidden = args[0] if args else kwargs["hidden_states"]
        key_valid = torch.cat([layout.valid, state.tail_valid.to(layout.valid.device)], dim=1)
        kwargs = dict(kwargs)
        kwargs["attention_mask"] = causal_mask_for(self.adapter.text_config, key_valid, hidden.shape[1],
                                                   hidden.dtype)
        return args, kwargs
