"""The prefill phase: the steps that reduce a video's tokens while the model reads the prompt.

* on the language model's input: encoder and pre-LLM steps drop and merge rows of
  ``inputs_embeds``; the position ids, attention mask and extra per-token inputs (Qwen3-VL
  deepstack) follow;
* before each decoder layer: in-LLM steps run before layer K with the probe of layer K-1, the hidden
  states shrink and every later layer gets the matching mask (a causal mask for softmax attention,
  the 2-D padding mask for a recurrent layer, whose convolution and recurrent states then hold the
  reduced sequence) and rotary embeddings;
* inside a decoder layer, for steps whose ``position`` is ``"after_attention"`` (FrameFusion): a
  pre-hook on layer K-1's post-attention norm reduces ``residual + attention`` with layer K-1's
  probe, so its MLP runs on the kept tokens only; a hook on the MLP hands the layer a zero to add
  to its (full-length) residual and a hook on the layer returns ``reduced + MLP output``, exactly
  what the layer computes for the reduced tokens. Layer K-1's cache keeps every token it saw;
* labels: a prefill called with ``labels`` (``[B, S]``, one per input position) gets the model's own
  loss over the reduced sequence: every slot of the final layout takes the label of the position it
  holds (new tokens and added padding are ignored), and the model's loss function shifts them as
  usual, so a label is predicted from the kept token before it.
"""

from __future__ import annotations

from typing import Any

import torch

from tokenreduce.adapters import hf
from tokenreduce.adapters.encoder import media_signals
from tokenreduce.adapters.layout import SequenceLayout, VisualLayout, gather_slots
from tokenreduce.adapters.llm_input import reduce_llm_input
from tokenreduce.adapters.probe import AttentionInputs, key_states, last_query_attention
from tokenreduce.adapters.schedule import Schedule, encoder_layer
from tokenreduce.adapters.state import ForwardState, LayoutInputs
from tokenreduce.adapters.steps import SequenceEdit, run_steps, video_groups
from tokenreduce.interfaces import Reducer, Signal


class Prefill:
    """Runs the scheduled steps of one reducer during a prefill; every call gets the prefill's state."""

    def __init__(self, adapter: Any, schedule: Schedule, *, positions: str, probe_queries: int,
                 modalities: tuple[str, ...]) -> None:
        self.adapter = adapter
        self.schedule = schedule
        self.positions = positions
        self.probe_queries = probe_queries
        self.modalities = modalities

    # ----- labels: the loss over the reduced sequence -----------------------------------------------
    @staticmethod
    def take_labels(state: ForwardState, args: tuple, kwargs: dict[str, Any]):
        """Keep the call's labels for ``output_with_loss`` and call the model without them (its own
        loss would compare the reduced logits with the full-length labels)."""
        if kwargs.get(hf.LABELS) is None:
            return None
        kwargs = dict(kwargs)
        state.labels = kwargs.pop(hf.LABELS)
        state.loss_kwargs = {k: kwargs[k] for k in hf.LOSS_ARGUMENTS if k in kwargs}
        return args, kwargs

    def output_with_loss(self, state: ForwardState, output: Any) -> Any:
        """The model's output with the loss of the call's labels over the reduced sequence."""
        if state.labels is None:
            return None
        layout = state.current_layout
        labels = state.labels.to(layout.source.device)
        mapped = torch.where(layout.source >= 0, labels.gather(1, layout.source.clamp(min=0)), hf.IGNORE_INDEX)
        logits = output[hf.LOGITS]
        mapped = mapped[:, mapped.shape[1] - logits.shape[1]:]  # logits_to_keep: the last slots only
        loss = hf.causal_lm_loss(self.adapter.model, logits, mapped.to(logits.device), **state.loss_kwargs)
        return hf.with_loss(output, loss)

    # ----- the language model's input -----------------------------------------------------------
    def language_model_input(self, state: ForwardState, args: tuple, kwargs: dict[str, Any]):
        """Locate the grids; run the encoder and pre-LLM steps on the LLM input; ``None`` when it is unchanged."""
        embeds = kwargs.get(hf.INPUTS_EMBEDS)
        if embeds is None:
            raise RuntimeError("the language model was called without inputs_embeds during a reduced prefill")
        batch, length = embeds.shape[:2]
        visual = self.adapter.visual_layout(state.call, self.modalities, embeds)
        state.visual = visual if visual is not None else VisualLayout(batch, length, ())
        state.groups = video_groups(state.visual, embeds.device)
        if length != state.visual.seq_len or batch != state.visual.batch_size:
            raise RuntimeError(f"the language model received a sequence of shape {(batch, length)}, the visual "
                               f"layout describes {(state.visual.batch_size, state.visual.seq_len)}")
        state.seq_len = length
        schedule = self.schedule
        reduced = reduce_llm_input(embeds, kwargs.get(hf.POSITION_IDS), kwargs.get(hf.ATTENTION_MASK), state.groups,
                                   schedule.encoder_steps + schedule.pre_steps, num_layers=schedule.num_layers,
                                   positions_policy=self.positions, encoder_signals=self._encoder_signals(state),
                                   record_embeddings=any(Signal.EMBEDDINGS in s.requires | s.optional
                                                         for s in schedule.steps))
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

    def _encoder_signals(self, state: ForwardState) -> dict[int, list[tuple[torch.Tensor, torch.Tensor]]] | None:
        """Per encoder step: ``(importance, keys)`` of every span, from its vision layer."""
        steps = self.schedule.encoder_steps
        if not steps or not state.visual.spans:
            return None
        per_layer: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for layer in {encoder_layer(step) for step in steps}:
            per_layer[layer] = media_signals(self.adapter, state.call, state.visual, layer)
        return {id(step): per_layer[encoder_layer(step)] for step in steps}

    # ----- before a decoder layer ---------------------------------------------------------------
    def record_probe_inputs(self, state: ForwardState, index: int, args: tuple, kwargs: dict[str, Any]) -> None:
        """Keep what layer ``index``'s attention received when a later step reads its probe."""
        if self.schedule.needs_probe(index + 1, state):
            hidden = kwargs.get(hf.HIDDEN_STATES, args[0] if args else None)
            state.probe_inputs[index] = AttentionInputs(hidden, kwargs[hf.POSITION_EMBEDDINGS],
                                                        kwargs.get(hf.ATTENTION_MASK))

    def before_layer(self, state: ForwardState, index: int, args: tuple, kwargs: dict[str, Any]):
        """Run the steps scheduled before decoder layer ``index`` and hand it the pruned layout."""
        hidden = args[0] if args else kwargs[hf.HIDDEN_STATES]
        steps = [(s, layer) for s, layer in self.schedule.steps_at(index, state)
                 if not self.schedule.runs_mid_layer(s, layer)]
        state.layer_kwargs = kwargs
        if steps:
            current = state.current_layout
            edit = run_steps(steps, state.groups, hidden, current, importance=self._probe_importance(state, index - 1),
                             num_layers=self.schedule.num_layers,
                             sequence_signals=self._sequence_signals(state, steps, index - 1, hidden))
            hidden = self._apply(state, edit, current, hidden, kwargs)
        state.layer_counts[index] = int(hidden.shape[1])
        if state.current is None:
            return None
        state.layer_layouts[index] = state.current.layout
        kwargs = dict(kwargs)
        softmax = index in self.schedule.softmax
        kwargs[hf.ATTENTION_MASK] = state.current.attention_mask if softmax else hf.recurrent_mask(
            state.current.layout.valid)
        kwargs[hf.POSITION_EMBEDDINGS] = state.current.position_embeddings
        if kwargs.get(hf.POSITION_IDS) is not None:
            kwargs[hf.POSITION_IDS] = state.current.position_ids
        state.layer_kwargs = kwargs
        if args:
            return (hidden, *args[1:]), kwargs
        kwargs[hf.HIDDEN_STATES] = hidden
        return args, kwargs

    def _probe_importance(self, state: ForwardState, layer: int) -> torch.Tensor | None:
        """``[B, L]`` head-averaged probe of decoder layer ``layer``, if it was recorded (computed once,
        for the steps after that layer's attention and those before the next layer alike)."""
        inputs = state.probe_inputs.pop(layer, None)
        if inputs is not None:
            attention = self.adapter.attention_of(self.adapter.layers[layer])
            state.importance[layer] = last_query_attention(attention, inputs, self.probe_queries).mean(dim=1)
            if any(Signal.KEYS in s.requires | s.optional for s in self.schedule.in_steps.get(layer + 1, [])):
                state.keys[layer] = key_states(attention, inputs)
        return state.importance.get(layer)

    def _sequence_signals(self, state: ForwardState, steps: list[tuple[Reducer, int]], probed: int,
                          hidden: torch.Tensor) -> dict[str, torch.Tensor]:
        """The in-LLM signals besides the probe that ``steps`` declare, over every slot of ``hidden``:
        ``"keys"`` of decoder layer ``probed`` and ``"normed"`` (the final norm of ``hidden``)."""
        wanted = set().union(*(s.requires | s.optional for s, _ in steps))
        signals = {}
        if Signal.KEYS in wanted and probed in state.keys:
            signals[Signal.KEYS.value] = state.keys[probed]
        if Signal.NORMED in wanted:
            signals[Signal.NORMED.value] = self.adapter.final_norm(hidden)
        return signals

    # ----- inside a decoder layer (steps at "after_attention") ----------------------------------
    def reduce_mid_layer(self, state: ForwardState, index: int, args: tuple):
        """Before layer ``index``'s post-attention norm: reduce ``residual + attention``."""
        if index + 1 >= self.schedule.num_layers:
            return None
        steps = [(s, layer) for s, layer in self.schedule.steps_at(index + 1, state)
                 if self.schedule.runs_mid_layer(s, layer)]
        if not steps:
            return None
        residual = args[0]
        current = state.current_layout
        edit = run_steps(steps, state.groups, residual, current, importance=self._probe_importance(state, index),
                         num_layers=self.schedule.num_layers,
                         sequence_signals=self._sequence_signals(state, steps, index, residual))
        reduced = self._apply(state, edit, current, residual, state.layer_kwargs)
        if reduced is residual:
            return None
        state.mid = [reduced]
        return (reduced, *args[1:])

    @staticmethod
    def mlp_output(state: ForwardState, output: torch.Tensor):
        """Keep the MLP's output on the reduced tokens; the layer adds a zero to its full-length residual."""
        if len(state.mid) != 1:
            return None
        state.mid.append(output)
        return output.new_zeros(())

    @staticmethod
    def layer_output(state: ForwardState, output: Any):
        """The layer's output for the reduced tokens: ``reduced + MLP output``."""
        if not state.mid:
            return None
        reduced, mlp_output = state.mid
        state.mid = []
        return reduced + mlp_output

    # ----- applying an edit ---------------------------------------------------------------------
    def _apply(self, state: ForwardState, edit: SequenceEdit, layout: SequenceLayout, hidden: torch.Tensor,
               kwargs: dict[str, Any]) -> torch.Tensor:
        if edit.extras:
            raise NotImplementedError("new tokens (Reduction.extra) are inserted before the LLM only; an in-LLM "
                                      "step returned some")
        if not edit.changes:
            return hidden
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
