"""The interfaces a strategy is written against.

A *reducer* decides which visual tokens a model may skip. It is a pure function of a
``VisualTokens`` batch (and the signals it declares in ``requires``) to a ``Reduction``. It never
imports a model: adapters gather the signals, call it at its ``stage``, and apply the result.

One budget language: every strategy's config has ``ratio`` (the fraction of a video's visual tokens
that reach the LLM, new tokens counted) and ``count`` (that many tokens), and names any budget of its
reference semantics (``cost``, ``prune_ratio``, ``dominant``/``contextual``) in
``Config.alternative_budgets``; ``Reducer.at_budget(ratio, settings)`` is the one rule that turns any
settings of a strategy into the same settings at budget ``ratio``, and ``Reducer.examples()`` the
settings a strategy is tested and shown at.

Exact budget: a reducer with a budget keeps exactly the count its budget documents
(``Budget.keep_count``), computed per sample from ``VisualTokens.budget_counts()`` and clipped to
the valid tokens; ``planned_counts`` states that count before running. Reducers whose count is
decided by the content (thresholds, the reference ST-SimDiff stage 1) return ``None`` there.

Shared config parts: ``BudgetConfig`` (``ratio`` / ``count``), ``EncoderConfig`` (``encoder_layer``
of encoder-stage reducers) and ``InLLMConfig`` (``layer`` and ``position`` of in-LLM reducers).
"""

from __future__ import annotations

import abc
import dataclasses
import enum
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import torch

from tokenreduce.budget import Budget, check_count, check_ratio
from tokenreduce.config import Config
from tokenreduce.errors import ConfigError, ConfigTypeError, InputTypeError, MissingSignalError
from tokenreduce.tokens import Reduction, VisualTokens


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


# ----- config parts shared by strategies ----------------------------------------------------------
@dataclasses.dataclass
class BudgetConfig(Config):
    """Config part of every strategy's budget: ``ratio`` or ``count``, or an alternative.

    ``ratio`` is the fraction of a video's visual tokens that reach the LLM, new tokens (merged or
    summary tokens a strategy inserts) counted; ``count`` is that many tokens. A strategy whose
    reference semantics use another budget lists those fields in ``alternative_budgets``; at most
    one budget field may be given. With none, ``default_ratio`` is used, or, when it is ``None``,
    the strategy's reference default (FrameFusion's cost 0.3, VisionZip's 191 + 30 per frame, ...).
    ``rounding`` is how a ratio becomes a count (``ceil`` unless the strategy's reference says
    otherwise).
    """

    ratio: float | None = None
    count: int | None = None

    default_ratio: ClassVar[float | None] = 0.5
    rounding: ClassVar[str] = "ceil"
    alternative_budgets: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def budget_fields(cls) -> tuple[str, ...]:
        """Every field that states a budget: ``ratio``, ``count`` and the alternatives."""
        return ("ratio", "count", *cls.alternative_budgets)

    def given_budget(self) -> str | None:
        """Which budget is set: ``"ratio"``, ``"count"``, ``"alternative"`` (any of
        ``alternative_budgets``; the strategy checks how they combine) or ``None``."""
        kinds = {"ratio": [f for f in ("ratio",) if self.ratio is not None],
                 "count": [f for f in ("count",) if self.count is not None],
                 "alternative": [f for f in self.alternative_budgets if getattr(self, f) is not None]}
        given = [kind for kind, fields in kinds.items() if fields]
        if len(given) > 1:
            fields = [f for kind in given for f in kinds[kind]]
            names = self.budget_fields()
            options = f"{', '.join(names[:-1])} or {names[-1]}"
            raise ConfigError(f"{self.name}: give one budget: {options}, not several "
                              f"(got {', '.join(f'{k}={getattr(self, k)!r}' for k in fields)})")
        return given[0] if given else None

    def validate(self) -> None:
        super().validate()
        given = self.given_budget()
        if self.ratio is not None:
            check_ratio(self.ratio, f"{self.name}.ratio")
        if self.count is not None:
            check_count(self.count, f"{self.name}.count")
        if given is None and self.default_ratio is not None:
            object.__setattr__(self, "ratio", self.default_ratio)

    def budget(self) -> Budget:
        """The ``ratio`` / ``count`` budget (strategies with alternatives map those themselves)."""
        return Budget(ratio=self.ratio, count=self.count, rounding=self.rounding)  # type: ignore[arg-type]


@dataclasses.dataclass
class EncoderConfig(Config):
    """Config part of encoder-stage reducers: the vision-encoder layer whose attention and keys
    they read (negative counts from the end; -2 = second-to-last, the VisionZip / FasterVLM
    choice). An adapter raises a clear error when the tower has no such layer."""

    encoder_layer: int = -2


#: Where an in-LLM step of decoder layer ``l >= 1`` runs: ``"before_layer"`` (before layer ``l``,
#: i.e. after layer ``l-1``'s MLP) or ``"after_attention"`` (inside layer ``l-1``, on
#: ``residual + attention`` after its attention block and before its MLP; that layer's KV cache
#: keeps every token it attended over). Layer 0 steps always run before layer 0.
IN_LLM_POSITIONS = ("before_layer", "after_attention")


@dataclasses.dataclass
class InLLMConfig(Config):
    """Config part of in-LLM reducers: the decoder layer ``layer`` (K) the step runs before, with
    layer K-1's attention as importance, and its ``position`` (``IN_LLM_POSITIONS``). ``first_layer``
    is the smallest K a strategy accepts (1: it reads layer K-1; 0 for steps that need no probe
    at their first layer). A strategy whose in-LLM step is optional (FlashVID, HoliTom) declares
    ``layer: int | None``, ``None`` leaving the step out. An adapter raises a clear error when the
    model has no layer K."""

    layer: int = 2
    position: Literal["before_layer", "after_attention"] = "before_layer"

    first_layer: ClassVar[int] = 1

    def validate(self) -> None:
        super().validate()
        if self.layer is not None and self.layer < self.first_layer:  # None: a composite leaves its in-LLM step out
            why = " (it reads layer K-1's attention)" if self.first_layer == 1 else ""
            raise ConfigError(f"{self.name}.layer must be >= {self.first_layer}{why}, got {self.layer}")


# ----- reducers ----------------------------------------------------------------------------------
class Reducer(Component, abc.ABC):
    """Decides which visual tokens to keep. Subclasses implement ``reduce``.

    Class attributes:
        stage: where it runs (``Stage``); in-LLM reducers have an ``InLLMConfig`` (``layer``).
        requires: the ``Signal`` values it reads besides features (checked: missing -> error).
        optional: signals it uses when present and replaces by a documented fallback otherwise;
            adapters should provide them (e.g. ST-SimDiff's attention importance).
        budgeted: False for reducers that keep every token by definition (``keep_all``): a model
            run that keeps everything warns unless the reducer says so.
    """

    stage: ClassVar[Stage] = Stage.PRE_LLM
    requires: ClassVar[frozenset[Signal]] = frozenset()
    optional: ClassVar[frozenset[Signal]] = frozenset()
    budgeted: ClassVar[bool] = True

    @property
    def layer(self) -> int | None:
        """For ``IN_LLM`` reducers: the decoder layer index K the reduction runs before."""
        if self.stage is not Stage.IN_LLM or not isinstance(self.config, InLLMConfig):
            return None
        return self.config.layer

    @property
    def position(self) -> str:
        """Where an in-LLM step of layer ``l >= 1`` runs (``IN_LLM_POSITIONS``)."""
        return self.config.position if isinstance(self.config, InLLMConfig) else "before_layer"

    def steps(self) -> list[Reducer]:
        """The single-stage steps an adapter drives, in run order (a plain reducer is one step)."""
        return [self]

    def budget_steps(self) -> list[Reducer]:
        """The first steps of ``steps()`` whose output the ``ratio`` / ``count`` budget measures:
        all of them, unless a strategy adds a refinement with a budget of its own after them
        (FlashVID's pruning and HoliTom's merge deep in the LLM)."""
        return self.steps()

    # ----- the budget language and the settings a strategy is shown at ----------------------
    @classmethod
    def at_budget(cls, ratio: float, settings: Mapping[str, Any] | Config | None = None) -> Config:
        """The config of this strategy that keeps ``ratio`` of a video's visual tokens: ``settings``
        (a dict or config; default: the defaults) with every budget field replaced by ``ratio``.

        The one rule every tool uses to run strategies on equal terms (``compare``, ``bench``,
        ``demo``, the tests).
        """
        check_ratio(ratio)
        return cls.with_budget(settings, ratio=ratio)

    @classmethod
    def with_budget(cls, settings: Mapping[str, Any] | Config | None = None, *, ratio: float | None = None,
                    count: int | None = None) -> Config:
        """``settings`` with every budget field replaced by ``ratio`` or ``count`` (exactly one).

        Override it when a strategy's budget lives elsewhere or cannot change (``keep_all``).
        """
        if (ratio is None) == (count is None):
            raise ConfigError(f"{cls.registered_name}: give a ratio or a count, not {'both' if ratio else 'neither'}")
        data = dict(settings.to_dict() if isinstance(settings, Config) else (settings or {}))
        own = data.pop("name", cls.registered_name)
        if own != cls.registered_name:
            raise ConfigError(f"{cls.registered_name} cannot take the settings of {own!r}")
        config_cls = cls.Config
        if not issubclass(config_cls, BudgetConfig):
            raise ConfigError(f"{cls.registered_name or cls.__name__} has no ratio / count budget")
        data.update({name: None for name in config_cls.budget_fields()})
        data.update(ratio=ratio, count=count)
        return config_cls.from_dict(data)

    @classmethod
    def examples(cls) -> list[dict[str, Any]]:
        """Settings (config dicts without ``name``) this strategy is tested and shown at; each must
        reduce the suite's grids (``tokenreduce.testing`` checks it). The first is the canonical one
        (the adapter matrix runs it). Default: ``ratio=0.3``."""
        return [{"ratio": 0.3}]

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


class BudgetedReducer(Reducer):
    """A reducer whose kept count is fixed by a ``Budget`` (its config has ``budget()``)."""

    def keep_counts(self, tokens: VisualTokens) -> torch.Tensor:
        """``[B]`` long: tokens each sample keeps under this reducer's budget."""
        return self.config.budget().keep_counts(  # type: ignore[attr-defined]
            tokens.budget_counts(), tokens.valid_counts(), num_layers=tokens.num_layers
        )

    def planned_counts(self, tokens: VisualTokens) -> torch.Tensor | None:
        return self.keep_counts(tokens)


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
