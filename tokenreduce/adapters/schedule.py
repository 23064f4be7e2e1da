"""Where each single-stage step of a reducer runs in one model: which vision-encoder layers the encoder
steps read, which steps run on the LLM input, and which run before (or inside) which decoder layer."""

from __future__ import annotations

from tokenreduce.adapters.state import ForwardState
from tokenreduce.errors import ConfigError, InputError
from tokenreduce.interfaces import EncoderConfig, LayerwiseReducer, Reducer, Stage

POSITION_POLICIES = ("original", "contiguous")


def encoder_layer(step: Reducer) -> int:
    """The vision-encoder layer an encoder step reads: its config's ``encoder_layer``
    (``EncoderConfig``), else the second-to-last (the VisionZip / FasterVLM choice)."""
    return step.config.encoder_layer if isinstance(step.config, EncoderConfig) else -2


class Schedule:
    """The steps of ``reducer`` placed in a decoder of ``num_layers`` layers (checked here, before any
    hook is installed)."""

    def __init__(self, reducer: Reducer, num_layers: int, positions: str) -> None:
        self.num_layers = num_layers
        self.steps = reducer.steps()
        self.encoder_steps: list[Reducer] = []
        self.pre_steps: list[Reducer] = []
        self.in_steps: dict[int, list[Reducer]] = {}
        self.after_attention: set[int] = set()  # id() of in-LLM steps running after the attention block
        for step in self.steps:
            self._place(step)
        self.layerwise = [s for s in self.steps if isinstance(s, LayerwiseReducer)]
        self.layerwise_from = min((s.layer for s in self.layerwise), default=None)
        if self.in_steps and positions == "contiguous":
            raise InputError("positions='contiguous' renumbers the LLM input and works with pre-LLM steps only; "
                             "in-LLM steps keep the original positions")

    def _place(self, step: Reducer) -> None:
        if step.stage is Stage.ENCODER:
            self.encoder_steps.append(step)
            return
        if step.stage is Stage.PRE_LLM:
            self.pre_steps.append(step)
            return
        layer = step.layer
        name = step.registered_name or type(step).__name__
        if layer is None:
            raise ConfigError(f"{name} runs in the LLM (Stage.IN_LLM) but its config has no layer: derive it from "
                              "tr.InLLMConfig (layer, position)")
        first = 0 if isinstance(step, LayerwiseReducer) else 1  # layer 0 has no previous layer to probe
        if not first <= layer < self.num_layers:
            raise ConfigError(f"{name}.layer must be in [{first}, "
                              f"{self.num_layers - 1}] for a decoder with {self.num_layers} layers, got {layer}")
        self.in_steps.setdefault(layer, []).append(step)
        if step.position == "after_attention":
            self.after_attention.add(id(step))

    @property
    def encoder_layers(self) -> set[int]:
        """Vision-encoder layers whose attention the encoder steps read."""
        return {encoder_layer(s) for s in self.encoder_steps}

    def runs_mid_layer(self, step: Reducer, layer: int) -> bool:
        """Step ``layer`` of ``step`` runs inside layer ``layer - 1``, after its attention block."""
        return layer >= 1 and id(step) in self.after_attention

    def steps_at(self, layer: int, state: ForwardState) -> list[tuple[Reducer, int]]:
        """The ``(step, layer)`` pairs that reduce before decoder ``layer`` in this prefill."""
        steps = [(s, layer) for s in self.in_steps.get(layer, [])]
        if self.layerwise_from is not None and layer > self.layerwise_from and state.layerwise_active():
            started = {key for g in state.groups for key in g.layerwise}
            steps += [(s, layer) for s in self.layerwise if id(s) in started and s.layer < layer]
        return steps

    def needs_probe(self, layer: int, state: ForwardState | None) -> bool:
        """Whether a step before ``layer`` reads the attention probe of layer ``layer - 1``."""
        if layer in self.in_steps:
            return True
        if self.layerwise_from is None or layer <= self.layerwise_from or state is None:
            return False
        return state.layerwise_wants_importance()
