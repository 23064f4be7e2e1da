"""The interfaces a strategy is written against.

A *reducer* decides which visual tokens a model may skip. It is a pure function of a
``VisualTokens`` batch (and the signals it declares in ``requires``) to a ``Reduction``. It never
imports a model: adapters gather the signals, call it at its ``stage``, and apply the result.

The building blocks ST-SimDiff is composed of are interfaces too, so that research variants swap
one part by name in a config: ``GraphBuilder`` -> ``CommunityDetector`` + ``EventDetector`` ->
selection -> ``BudgetPruner`` (with an ``ImportanceScorer``).

Exact budget: a reducer with a budget keeps exactly the count its budget documents
(``Budget.keep_count``), computed per sample from ``VisualTokens.budget_counts()`` and clipped to
the valid tokens; ``planned_counts`` states that count before running. Reducers whose count is
decided by the content (thresholds, the reference ST-SimDiff stage 1) return ``None`` there.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from tokenreduce.budget import Budget, check_count, check_ratio
from tokenreduce.config import Config
from tokenreduce.errors import ConfigError, ConfigTypeError, InputTypeError, MissingSignalError, brief
from tokenreduce.tokens import Reduction, VisualTokens

if TYPE_CHECKING:
    from tokenreduce.graph.token_graph import TokenGraph


class Stage(enum.IntEnum):
    """Where in the data path a reducer runs (pipelines run steps in this order)."""

    ENCODER = 0  # inside the vision encoder: needs its attention / keys (VisionZip, FasterVLM)
    PRE_LLM = 1  # on the projector output, before the first decoder layer (ST-SimDiff stage 1)
    IN_LLM = 2  # before decoder layer K, with hidden states and the attention probe (FastV)


class Signal(str, enum.Enum):
    """Inputs a reducer may declare in ``requires``; adapters provide exactly these.

    ``FEATURES`` is always present. ``IMPORTANCE`` is ``VisualTokens.importance``: at ``IN_LLM``
    the last query's head-averaged attention of layer K-1 over the visual tokens; at
    ``ENCODER`` the attention the patches receive from CLS (or from all queries without a CLS).
    ``CONTEXT`` is ``VisualTokens.context``; the others are named entries of
    ``VisualTokens.signals``.
    """

    FEATURES = "features"
    IMPORTANCE = "importance"
    KEYS = "keys"  # ENCODER: encoder keys, head-averaged; IN_LLM: layer K-1's keys (rotary applied, heads concatenated)
    EMBEDDINGS = "embeddings"  # LLM input embeddings (projector output) when running in-LLM
    NORMED = "normed"  # IN_LLM: the hidden states after the language model's final norm
    CONTEXT = "context"  # IN_LLM: VisualTokens.context, the tokens after the video with "keys" and "normed"


class Component:
    """A configurable, registrable part: it owns a ``Config`` dataclass and is built from it.

    ``Component(config)`` or ``Component(**fields)``; ``component.config.to_dict()`` round-trips
    through ``tr.build``.
    """

    Config: ClassVar[type[Config]] = Config
    registered_name: ClassVar[str | None] = None

    def __init__(self, config: Config | None = None, /, **overrides: Any) -> None:
        if config is None:
            config = type(self).Config.from_dict(overrides)
        else:
            if not isinstance(config, type(self).Config):
                raise ConfigTypeError(f"{type(self).__name__} needs a {type(self).Config.__qualname__}, "
                                      f"got {type(config).__qualname__}")
            if overrides:
                config = config.replace(**overrides)
        self.config = config

    @classmethod
    def bind_config(cls, kind: str) -> None:
        """Tie ``cls.Config`` to ``cls`` (done at registration). A class that inherits its parent's
        config gets a subclass of it, so every registered name round-trips to its own class."""
        config_cls = vars(cls).get("Config")
        if config_cls is None or (config_cls.component not in (None, cls)):
            parent = cls.Config
            config_cls = dataclasses.dataclass(type("Config", (parent,), {
                "__qualname__": f"{cls.__qualname__}.Config", "__module__": cls.__module__,
            }))
            cls.Config = config_cls
        config_cls.component = cls
        config_cls.kind = kind

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.config.to_dict().items() if k != "name")
        return f"{type(self).__name__}({fields})"


# ----- reducers ----------------------------------------------------------------------------------
class Reducer(Component, abc.ABC):
    """Decides which visual tokens to keep. Subclasses implement ``reduce``.

    Class attributes:
        stage: where it runs (``Stage``); in-LLM reducers also expose ``layer``.
        requires: the ``Signal`` values it reads besides features (checked: missing -> error).
        optional: signals it uses when present and replaces by a documented fallback otherwise;
            adapters should provide them (e.g. ST-SimDiff's attention importance).
    """

    stage: ClassVar[Stage] = Stage.PRE_LLM
    requires: ClassVar[frozenset[Signal]] = frozenset()
    optional: ClassVar[frozenset[Signal]] = frozenset()

    @property
    def layer(self) -> int | None:
        """For ``IN_LLM`` reducers: the decoder layer index K the reduction runs before."""
        return getattr(self.config, "layer", None) if self.stage is Stage.IN_LLM else None

    def steps(self) -> list[Reducer]:
        """The single-stage steps an adapter drives, in run order (a plain reducer is one step)."""
        return [self]

    def __call__(self, tokens: VisualTokens) -> Reduction:
        if not isinstance(tokens, VisualTokens):
            raise InputTypeError(f"{type(self).__name__} expects tr.VisualTokens, got {type(tokens).__name__}; "
                            "wrap features of shape [B, T, H, W, D] with tr.VisualTokens(features)")
        self.check_signals(tokens)
        reduction = self.reduce(tokens)
        if reduction.keep_mask.shape != (tokens.batch_size, tokens.num_tokens):
            raise RuntimeError(f"{type(self).__name__} returned keep_mask of shape "
                               f"{tuple(reduction.keep_mask.shape)}, expected "
                               f"{(tokens.batch_size, tokens.num_tokens)}")
        return reduction

    def check_signals(self, tokens: VisualTokens) -> None:
        """Raise ``MissingSignalError`` naming every required signal ``tokens`` lacks."""
        missing = []
        for signal in self.requires:
            if signal is Signal.IMPORTANCE:
                if tokens.importance is None:
                    missing.append("importance=[B, T, H, W]")
            elif signal is Signal.CONTEXT:
                if tokens.context is None:
                    missing.append("context={'valid': [B, M], ...}")
            elif signal is not Signal.FEATURES and signal.value not in tokens.signals:
                missing.append(f"signals[{signal.value!r}]")
        if missing:
            raise MissingSignalError(f"{self.registered_name or type(self).__name__} needs "
                                     f"{', '.join(sorted(missing))} in VisualTokens (inside a model "
                                     "tr.apply provides them)")

    @abc.abstractmethod
    def reduce(self, tokens: VisualTokens) -> Reduction:
        """Return the reduction of ``tokens``; never keep a token outside ``tokens.valid``."""

    def planned_counts(self, tokens: VisualTokens) -> torch.Tensor | None:
        """``[B]`` long: the exact kept count per sample, or ``None`` when the content decides."""
        return None


@dataclasses.dataclass
class EncoderConfig(Config):
    """Config mixin of encoder-stage reducers: the vision-encoder layer whose attention and keys
    they read (negative counts from the end; -2 = second-to-last, the VisionZip / FasterVLM
    choice). An adapter raises a clear error when the tower has no such layer."""

    encoder_layer: int = -2


@dataclasses.dataclass
class BudgetConfig(Config):
    """Config mixin for a ratio or absolute-count budget.

    Exactly one of ``ratio`` (fraction of the tokens, ceil) and ``count`` applies; with neither,
    ``default_ratio`` is used.
    """

    ratio: float | None = None
    count: int | None = None

    default_ratio: ClassVar[float] = 0.5
    rounding: ClassVar[str] = "ceil"

    def validate(self) -> None:
        super().validate()
        if self.ratio is not None and self.count is not None:
            raise ConfigError(f"{self.name}: give ratio or count, not both "
                              f"(ratio={self.ratio}, count={self.count})")
        if self.ratio is None and self.count is None:
            object.__setattr__(self, "ratio", self.default_ratio)
        if self.ratio is not None:
            check_ratio(self.ratio, f"{self.name}.ratio")
        if self.count is not None:
            check_count(self.count, f"{self.name}.count")

    def budget(self) -> Budget:
        return Budget(ratio=self.ratio, count=self.count, rounding=self.rounding)  # type: ignore[arg-type]


class BudgetedReducer(Reducer):
    """A reducer whose kept count is fixed by a ``Budget`` (its config has ``budget()``)."""

    def keep_counts(self, tokens: VisualTokens) -> torch.Tensor:
        """``[B]`` long: tokens each sample keeps under this reducer's budget."""
        return self.config.budget().keep_counts(  # type: ignore[attr-defined]
            tokens.budget_counts(), tokens.valid_counts(), num_layers=tokens.num_layers
        )

    def planned_counts(self, tokens: VisualTokens) -> torch.Tensor | None:
        return self.keep_counts(tokens)


#: Where an in-LLM step of decoder layer ``l >= 1`` runs: ``"before_layer"`` (before layer ``l``,
#: i.e. after layer ``l-1``'s MLP) or ``"after_attention"`` (inside layer ``l-1``, on
#: ``residual + attention`` after its attention block and before its MLP; that layer's KV cache
#: keeps every token it attended over). Layer 0 steps always run before layer 0. A reducer chooses
#: with a ``position`` field in its config; without one it runs ``"before_layer"``.
IN_LLM_POSITIONS = ("before_layer", "after_attention")


def in_llm_position(reducer: Reducer) -> str:
    """The ``IN_LLM_POSITIONS`` entry ``reducer`` asks for (its config's ``position``, if any)."""
    position = getattr(reducer.config, "position", "before_layer")
    if position not in IN_LLM_POSITIONS:
        raise ConfigError(f"{reducer.registered_name or type(reducer).__name__}.position must be one of "
                          f"{IN_LLM_POSITIONS}, got {brief(position)}")
    return position


class LayerwiseReducer(Reducer):
    """An in-LLM reducer that acts over several decoder layers (e.g. FrameFusion).

    The adapter calls ``state = start(tokens)`` with the visual tokens entering the first layer
    (``layer``), then before each following decoder layer ``step(state, layer, tokens)`` with the
    tokens still present (``valid``), their current hidden states and the attention probe of the
    previous layer as ``importance``; it applies each returned ``Reduction`` and stops calling once
    ``state.done``. ``reduce(tokens)`` runs the same schedule on fixed tensors (tests, tools).
    """

    stage: ClassVar[Stage] = Stage.IN_LLM

    @abc.abstractmethod
    def start(self, tokens: VisualTokens) -> Any:
        """Fresh per-forward state (must expose a bool ``done``)."""

    @abc.abstractmethod
    def step(self, state: Any, layer: int, tokens: VisualTokens) -> Reduction:
        """Reduce ``tokens`` before decoder ``layer``; update ``state``."""


# ----- ST-SimDiff building blocks ----------------------------------------------------------------
class GraphBuilder(Component, abc.ABC):
    """Builds the token graph (nodes = flat token indices of every sample, edges weighted)."""

    @abc.abstractmethod
    def build_graph(self, tokens: VisualTokens) -> TokenGraph:
        """A batched ``TokenGraph`` over the valid tokens of ``tokens``."""


class CommunityDetector(Component, abc.ABC):
    """Partitions the nodes of a graph into communities."""

    @abc.abstractmethod
    def detect(self, graph: TokenGraph, edge_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Community label per node, long ``[B, N]``.

        Only edges with ``edge_mask`` (default: all) count. Labels are comparable within one
        sample only; a node without an edge is its own community.
        """


class EventDetector(Component, abc.ABC):
    """Marks event tokens: moments where the content changes."""

    @abc.abstractmethod
    def detect(self, tokens: VisualTokens, graph: TokenGraph) -> torch.Tensor:
        """Bool ``[B, N]``: the event tokens (always within ``tokens.valid``)."""


class ImportanceScorer(Component, abc.ABC):
    """Scores every token; higher is more important."""

    @abc.abstractmethod
    def score(self, tokens: VisualTokens) -> torch.Tensor:
        """Float ``[B, N]`` (values at invalid tokens are ignored)."""


class BudgetPruner(Component, abc.ABC):
    """Trims (or fills) a candidate set to an exact per-sample count."""

    @abc.abstractmethod
    def prune(self, tokens: VisualTokens, candidates: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Bool ``[B, N]`` with exactly ``counts[b]`` valid tokens of sample ``b``.

        Candidates are preferred: a set larger than the count is trimmed, a smaller one is filled.
        """
