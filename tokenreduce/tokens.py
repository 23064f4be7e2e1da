"""The data model: visual tokens on a grid in, a reduction of them out.

``VisualTokens`` holds a batch of token grids ``[B, T, H, W, D]``; every token has the flat
index ``n = t*H*W + h*W + w``, which is also its order in the model's sequence. A reducer
returns a ``Reduction``: which flat indices each sample keeps, why (``Role`` flags), and,
for merging strategies, the merged features.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from tokenreduce.errors import InputError, InputTypeError, MissingSignalError, brief


class Role(enum.IntFlag):
    """Why a token was kept (or what happened to it). Flags combine: ``REPRESENTATIVE | EVENT``.

    ``KEPT`` is set exactly on the kept tokens, so ``roles != 0`` never hides a dropped token
    that still carries information flags (e.g. ``ABSORBED``).
    """

    NONE = 0
    KEPT = 1
    REPRESENTATIVE = 2  # central token of a similarity community
    EVENT = 4  # later token of a temporal edge whose similarity fell below a threshold
    IMPORTANT = 8  # ranked high by an importance signal (attention)
    MERGED = 16  # kept token whose features average several original tokens
    ABSORBED = 32  # dropped token whose features were averaged into a kept token
    SAMPLED = 64  # chosen by a content-free rule (random, uniform)
    UNGROUPED = 128  # in no community (no edge above threshold), kept as is
    FILLED = 256  # added to reach the budget after the main selection


ROLE_NAMES: tuple[Role, ...] = tuple(r for r in Role if r is not Role.NONE)


def _shape_text(shape: Any) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"


def _check_grid_tensor(
    name: str, value: Any, grid: tuple[int, ...], *, kind: str, device: torch.device
) -> torch.Tensor:
    """Validate an optional per-token tensor whose leading dims must be the grid ``[B,T,H,W]``."""
    if not isinstance(value, torch.Tensor):
        raise InputTypeError(f"{name} must be a torch.Tensor of shape [B, T, H, W]={_shape_text(grid)}, "
                             f"got {type(value).__name__}")
    if tuple(value.shape[:4]) != grid or (kind != "signal" and value.ndim != 4):
        expected = _shape_text(grid) + (" + trailing dims" if kind == "signal" else "")
        raise InputError(f"{name} must have shape [B, T, H, W]={expected} to match features, "
                         f"got {_shape_text(value.shape)}")
    if value.device != device:
        raise InputError(f"{name} is on {value.device} but features are on {device}")
    if kind == "bool" and value.dtype != torch.bool:
        raise InputTypeError(f"{name} must be a bool tensor, got dtype {value.dtype}")
    if kind == "float":
        if not value.is_floating_point():
            raise InputTypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    return value


def non_finite_at(values: torch.Tensor, valid: torch.Tensor | None = None) -> list[int] | None:
    """The index of the first NaN or inf of a float tensor ``[B, T, H, W, ...]`` at a ``valid``
    token (anywhere when ``valid`` is ``None``), or ``None`` when there is none.

    One fused reduction decides the common case: ``aminmax`` propagates NaN and returns an
    infinite extreme when there is one, and, unlike a sum, it cannot overflow on finite values (an
    fp16 sum of finite features easily does). Only when it finds something is an element-wise mask
    built, to tell padding from valid tokens and to name the culprit.
    """
    if values.numel() == 0:
        return None
    low, high = torch.aminmax(values)
    if bool(torch.isfinite(low) & torch.isfinite(high)):
        return None
    bad = ~torch.isfinite(values)
    if valid is not None:
        bad &= valid.reshape(*valid.shape, *[1] * (values.ndim - valid.ndim))
    found = bad.nonzero()
    return None if found.shape[0] == 0 else [int(i) for i in found[0].tolist()]


def _where(index: list[int], values: torch.Tensor) -> str:
    """``(first at [B=.., T=.., ...]: value)`` for an error message."""
    axes = ", ".join(f"{axis}={i}" for axis, i in zip("BTHWD", index[:5]))
    rest = "".join(f", {i}" for i in index[5:])
    return f"(first at [{axes}{rest}]: {values[tuple(index)].item()})"


def _check_context(context: Mapping[str, Any], batch: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Validate ``VisualTokens.context``: a bool ``"valid"`` ``[B, M]`` and ``[B, M, ...]`` tensors."""
    if not isinstance(context, Mapping) or "valid" not in context:
        raise InputError("context must be a dict with a bool 'valid' tensor [B, M] (and [B, M, ...] signals)")
    valid = context["valid"]
    if not isinstance(valid, torch.Tensor) or valid.dtype != torch.bool or valid.ndim != 2 or valid.shape[0] != batch:
        raise InputError(f"context['valid'] must be a bool tensor [B, M] with B={batch}")
    checked = {}
    for key, value in context.items():
        if not isinstance(value, torch.Tensor) or tuple(value.shape[:2]) != tuple(valid.shape):
            raise InputError(f"context[{key!r}] must be a tensor [B, M, ...]={_shape_text(valid.shape)} + trailing "
                             f"dims, got {type(value).__name__} {_shape_text(getattr(value, 'shape', ()))}")
        if value.device != device:
            raise InputError(f"context[{key!r}] is on {value.device} but features are on {device}")
        checked[key] = value
    return checked


class VisualTokens:
    """A batch of visual-token grids and the signals reducers may use.

    Args:
        features: float tensor ``[B, T, H, W, D]``; one grid per sample. Padded positions may
            hold any finite value (zeros are conventional).
        valid: optional bool ``[B, T, H, W]``; ``False`` marks padding (or tokens an earlier
            pipeline step dropped). Reducers never keep an invalid token.
        importance: optional float ``[B, T, H, W]``; higher means more important (e.g. the last
            query's attention inside the LLM, or CLS attention in the encoder).
        signals: optional named extra signals, each a tensor whose leading dims are
            ``[B, T, H, W]`` (e.g. ``"keys"``: encoder key states ``[B, T, H, W, Dk]``).
        budget_base: optional long ``[B]``: the token count ratio budgets refer to. Defaults to
            the number of valid tokens; a ``Pipeline`` sets it to the count before its first
            step so that each step's ratio is a fraction of the original video.
        num_layers: the LLM's decoder layer count when the tokens come from a model; cost
            budgets (FrameFusion / ST-SimDiff formula) need it.
        context: optional tokens of the sequence that are not on the grid, per sample:
            ``context["valid"]`` bool ``[B, M]`` marks the real ones and every other entry is a
            ``[B, M, ...]`` tensor. Inside the LLM these are the tokens after the video (the
            prompt) with the in-LLM signals of the grid tokens (``"keys"``, ``"normed"``).

    The constructor validates everything once: types, shapes, dtypes and devices (O(1)), and the
    values (finite features, and finite importance and signals at valid tokens; a valid token per
    sample; ``budget_base >= 1``) with one fused reduction each. ``replace`` validates only the
    fields it changes; library code that builds tokens from tensors it made or already validated
    uses ``VisualTokens.trusted`` and ``replace_trusted``, which check structure but not values.
    """

    VALUE_CHECKED = ("features", "valid", "importance", "signals", "budget_base")

    def __init__(
        self,
        features: torch.Tensor,
        valid: torch.Tensor | None = None,
        importance: torch.Tensor | None = None,
        *,
        signals: Mapping[str, torch.Tensor] | None = None,
        budget_base: torch.Tensor | None = None,
        num_layers: int | None = None,
        context: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        self._assign(features, valid, importance, signals, budget_base, num_layers, context,
                     check_values=self.VALUE_CHECKED)

    @classmethod
    def trusted(
        cls,
        features: torch.Tensor,
        valid: torch.Tensor | None = None,
        importance: torch.Tensor | None = None,
        *,
        signals: Mapping[str, torch.Tensor] | None = None,
        budget_base: torch.Tensor | None = None,
        num_layers: int | None = None,
        context: Mapping[str, torch.Tensor] | None = None,
    ) -> VisualTokens:
        """Tokens made by library code from tensors it produced or already validated (a pipeline
        step's survivors, an adapter's hidden states): types, shapes, dtypes and devices are
        checked, the values are not (no pass over the features)."""
        tokens = cls.__new__(cls)
        tokens._assign(features, valid, importance, signals, budget_base, num_layers, context, check_values=())
        return tokens

    def _assign(self, features: Any, valid: Any, importance: Any, signals: Any, budget_base: Any,
                num_layers: Any, context: Any, *, check_values: tuple[str, ...]) -> None:
        """Check the structure of every field and the values of the fields in ``check_values``."""
        if not isinstance(features, torch.Tensor):
            raise InputTypeError("features must be a torch.Tensor of shape [B, T, H, W, D], "
                                 f"got {type(features).__name__}")
        if features.ndim != 5:
            raise InputError("features must have shape [B, T, H, W, D] (rank 5), "
                             f"got rank {features.ndim} with shape {_shape_text(features.shape)}")
        if not features.is_floating_point():
            raise InputTypeError(f"features must be a floating-point tensor, got dtype {features.dtype}")
        if features.is_meta:
            raise InputError("features is a meta tensor (a shape without data); pass real values")
        for axis, size in zip("BTHWD", features.shape):
            if size == 0:
                raise InputError(f"features has an empty {axis} axis: shape "
                                 f"{_shape_text(features.shape)} (an empty video or batch)")
        grid = tuple(features.shape[:4])
        device = features.device
        if valid is not None:
            valid = _check_grid_tensor("valid", valid, grid, kind="bool", device=device)
            if "valid" in check_values:
                empty = ~valid.flatten(1).any(dim=1)
                if bool(empty.any()):
                    raise InputError(f"valid marks no token of sample(s) {empty.nonzero().flatten().tolist()}"
                                     " as valid: every sample needs at least one valid token")
        if "features" in check_values:
            bad = non_finite_at(features)
            if bad is not None:
                raise InputError(f"features contain NaN or inf values {_where(bad, features)}")
        if importance is not None:
            importance = _check_grid_tensor("importance", importance, grid, kind="float", device=device)
            bad = non_finite_at(importance, valid) if "importance" in check_values else None
            if bad is not None:
                raise InputError(f"importance contains NaN or inf values at valid tokens {_where(bad, importance)}")
        checked_signals: dict[str, torch.Tensor] = {}
        for key, value in (signals or {}).items():
            if not isinstance(key, str):
                raise InputTypeError(f"signals keys must be str, got {type(key).__name__}")
            checked_signals[key] = _check_grid_tensor(f"signals[{key!r}]", value, grid,
                                                      kind="signal", device=device)
            bad = non_finite_at(value, valid) if "signals" in check_values and value.is_floating_point() else None
            if bad is not None:
                raise InputError(f"signals[{key!r}] contains NaN or inf values at valid tokens {_where(bad, value)}")
        if budget_base is not None:
            if not isinstance(budget_base, torch.Tensor) or budget_base.shape != (grid[0],):
                raise InputError(f"budget_base must be a tensor of shape [B]=({grid[0]},)")
            budget_base = budget_base.to(device=device, dtype=torch.long)
            if "budget_base" in check_values and bool((budget_base < 1).any()):
                raise InputError("budget_base must be >= 1 for every sample")
        if num_layers is not None and (isinstance(num_layers, bool) or not isinstance(num_layers, int)
                                       or not 1 <= num_layers < 2**63):
            raise InputError(f"num_layers must be an int in [1, 2**63 - 1], got {brief(num_layers)}")
        self.features = features
        self.valid = valid
        self.importance = importance
        self.signals: dict[str, torch.Tensor] = checked_signals
        self.budget_base = budget_base
        self.num_layers = num_layers
        self.context = None if context is None else _check_context(context, grid[0], device)

    # ----- shape --------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return int(self.features.shape[0])

    @property
    def grid(self) -> tuple[int, int, int]:
        """``(T, H, W)``."""
        _, t, h, w, _ = self.features.shape
        return int(t), int(h), int(w)

    @property
    def num_tokens(self) -> int:
        """``N = T*H*W``, tokens per sample including padding."""
        t, h, w = self.grid
        return t * h * w

    @property
    def dim(self) -> int:
        return int(self.features.shape[-1])

    @property
    def device(self) -> torch.device:
        return self.features.device

    # ----- flat views (sequence order) ------------------------------------------------------
    def flat_features(self) -> torch.Tensor:
        """``[B, N, D]`` in sequence order."""
        return self.features.reshape(self.batch_size, self.num_tokens, self.dim)

    def flat_valid(self) -> torch.Tensor:
        """``[B, N]`` bool; all ``True`` when no mask was given."""
        if self.valid is None:
            return torch.ones(self.batch_size, self.num_tokens, dtype=torch.bool, device=self.device)
        return self.valid.reshape(self.batch_size, self.num_tokens)

    def flat_importance(self) -> torch.Tensor:
        """``[B, N]``; raises ``MissingSignalError`` when no importance was given."""
        if self.importance is None:
            raise MissingSignalError("this reducer needs VisualTokens.importance (e.g. the LLM's "
                                     "last-query attention); pass importance=[B, T, H, W]")
        return self.importance.reshape(self.batch_size, self.num_tokens)

    def flat_signal(self, name: str) -> torch.Tensor:
        """``[B, N, ...]`` view of a named signal; raises ``MissingSignalError`` when absent."""
        if name not in self.signals:
            raise MissingSignalError(f"this reducer needs the signal {name!r}; pass "
                                     f"VisualTokens(..., signals={{{name!r}: tensor}}); "
                                     f"given: {sorted(self.signals) or 'none'}")
        value = self.signals[name]
        return value.reshape(self.batch_size, self.num_tokens, *value.shape[4:])

    def valid_counts(self) -> torch.Tensor:
        """``[B]`` long: valid tokens per sample."""
        return self.flat_valid().sum(dim=1)

    def budget_counts(self) -> torch.Tensor:
        """``[B]`` long: the count ratio budgets refer to (``budget_base`` or the valid count)."""
        return self.budget_base if self.budget_base is not None else self.valid_counts()

    # ----- derived token sets ---------------------------------------------------------------
    def replace(self, **changes: Any) -> VisualTokens:
        """A copy with some fields replaced. The new fields are validated (and importance and
        signals again when ``valid`` changes: they must be finite at the valid tokens); the others
        were validated when these tokens were made. Shapes are always checked against each other."""
        changed = set(changes) | ({"importance", "signals"} if "valid" in changes else set())
        return self._copy(changes, check_values=tuple(k for k in self.VALUE_CHECKED if k in changed))

    def replace_trusted(self, **changes: Any) -> VisualTokens:
        """``replace`` for library code whose new fields it produced itself (a pipeline step's
        kept mask, merged features): structure is checked, values are not (see ``trusted``)."""
        return self._copy(changes, check_values=())

    def _copy(self, changes: dict[str, Any], *, check_values: tuple[str, ...]) -> VisualTokens:
        fields = {"features": self.features, "valid": self.valid, "importance": self.importance,
                  "signals": self.signals, "budget_base": self.budget_base,
                  "num_layers": self.num_layers, "context": self.context}
        unknown = set(changes) - set(fields)
        if unknown:
            raise InputTypeError(f"unknown VisualTokens field(s) {sorted(unknown)}; valid: {sorted(fields)}")
        fields.update(changes)
        tokens = VisualTokens.__new__(VisualTokens)
        tokens._assign(fields["features"], fields["valid"], fields["importance"], fields["signals"],
                       fields["budget_base"], fields["num_layers"], fields["context"], check_values=check_values)
        return tokens

    def sample(self, b: int) -> VisualTokens:
        """Sample ``b`` alone, as a batch of one."""
        if not 0 <= b < self.batch_size:
            raise IndexError(f"sample index {b} out of range for batch size {self.batch_size}")
        pick = slice(b, b + 1)
        return VisualTokens.trusted(
            self.features[pick],
            None if self.valid is None else self.valid[pick],
            None if self.importance is None else self.importance[pick],
            signals={k: v[pick] for k, v in self.signals.items()},
            budget_base=None if self.budget_base is None else self.budget_base[pick],
            num_layers=self.num_layers,
            context=None if self.context is None else {k: v[pick] for k, v in self.context.items()},
        )

    def __repr__(self) -> str:
        extras = [n for n in ("valid", "importance") if getattr(self, n) is not None]
        extras += [f"signals[{k!r}]" for k in self.signals]
        return (f"VisualTokens(shape={_shape_text(self.features.shape)}, dtype={self.features.dtype}, "
                f"device={self.device}" + (", with " + ", ".join(extras) if extras else "") + ")")


def _check_like_mask(name: str, value: Any, keep_mask: torch.Tensor, *, integer: bool) -> None:
    """A ``Reduction`` field that must be a ``[B, N]`` tensor like ``keep_mask`` (never broadcast):
    bool (``valid``) or an integer dtype (``roles``)."""
    kind = "an integer" if integer else "a bool"
    if not isinstance(value, torch.Tensor):
        raise InputTypeError(f"{name} must be {kind} torch.Tensor [B, N], got {type(value).__name__}")
    if integer and (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool):
        raise InputTypeError(f"{name} must be an integer tensor of Role flags, got dtype {value.dtype}")
    if not integer and value.dtype != torch.bool:
        raise InputTypeError(f"{name} must be a bool tensor, got dtype {value.dtype}")
    if value.shape != keep_mask.shape:
        raise InputError(f"{name} must have the shape of keep_mask [B, N]={_shape_text(keep_mask.shape)}, "
                         f"got {_shape_text(value.shape)}")
    if value.device != keep_mask.device:
        raise InputError(f"{name} is on {value.device} but keep_mask is on {keep_mask.device}")


@dataclass(frozen=True)
class ReductionStats:
    """Per-sample summary of a ``Reduction``."""

    kept: list[int]
    total: list[int]
    ratio: list[float]
    roles: dict[str, list[int]] = field(default_factory=dict)
    extra: int = 0  # the most real extra tokens any sample has

    def __str__(self) -> str:
        parts = [f"kept={self.kept}", f"of={self.total}"]
        parts += [f"{name.lower()}={counts}" for name, counts in self.roles.items() if any(counts)]
        if self.extra:
            parts.append(f"extra={self.extra}")
        return "ReductionStats(" + ", ".join(parts) + ")"


class Reduction:
    """What a reducer decided for a batch of token grids.

    Attributes:
        keep_mask: ``[B, N]`` bool, ``N = T*H*W``; flat index ``n = t*H*W + h*W + w``.
        roles: ``[B, N]`` int32 ``Role`` flags; ``Role.KEPT`` is set exactly where ``keep_mask``.
        features: ``None`` for pure selection; ``[B, N, D]`` for merging strategies (the values
            at kept positions are the tokens' new features).
        extra: ``None``, or ``[B, E, D]`` tokens that did not exist before (VisionZip's
            contextual tokens); they follow the kept tokens in the output sequence.
        extra_valid: ``None`` (every extra token is real) or bool ``[B, E]``: samples of a batch
            may make different numbers of extra tokens; ``False`` marks padding slots, which are
            never handed on (a strategy documents where its slots are, e.g. per frame).
        valid: ``[B, N]`` bool: the tokens that were eligible (not padding).
        grid: ``(T, H, W)``.
        info: free-form diagnostics (e.g. ``merge_ratio``), never needed to apply the result.
    """

    def __init__(
        self,
        keep_mask: torch.Tensor,
        roles: torch.Tensor | None = None,
        *,
        grid: tuple[int, int, int],
        valid: torch.Tensor | None = None,
        features: torch.Tensor | None = None,
        extra: torch.Tensor | None = None,
        extra_valid: torch.Tensor | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        if not isinstance(keep_mask, torch.Tensor):
            raise InputTypeError(f"keep_mask must be a bool torch.Tensor [B, N], got {type(keep_mask).__name__}")
        if keep_mask.dtype != torch.bool or keep_mask.ndim != 2:
            raise InputError(f"keep_mask must be a bool tensor [B, N], got {keep_mask.dtype} "
                             f"{_shape_text(keep_mask.shape)}")
        if keep_mask.is_meta:
            raise InputError("keep_mask is a meta tensor (a shape without data)")
        if (not isinstance(grid, tuple) or len(grid) != 3
                or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in grid)):
            raise InputTypeError(f"grid must be a tuple (T, H, W) of positive ints, got {brief(grid)}")
        t, h, w = grid
        if keep_mask.shape[1] != t * h * w:
            raise InputError(f"keep_mask has {keep_mask.shape[1]} columns, grid {grid} has {t * h * w}")
        if valid is None:
            valid = torch.ones_like(keep_mask)
        _check_like_mask("valid", valid, keep_mask, integer=False)
        if bool((keep_mask & ~valid).any()):
            raise InputError("keep_mask keeps padding (tokens outside valid)")
        if roles is None:
            roles = torch.zeros(keep_mask.shape, dtype=torch.int32, device=keep_mask.device)
        _check_like_mask("roles", roles, keep_mask, integer=True)
        roles = roles.to(torch.int32)
        roles = torch.where(keep_mask, roles | int(Role.KEPT), roles & ~int(Role.KEPT))
        for name, value in (("features", features), ("extra", extra), ("extra_valid", extra_valid)):
            if value is not None and not isinstance(value, torch.Tensor):
                raise InputTypeError(f"{name} must be a torch.Tensor or None, got {type(value).__name__}")
        if features is not None and features.shape[:2] != keep_mask.shape:
            raise InputError(f"features must be [B, N, D] with [B, N]={_shape_text(keep_mask.shape)}, "
                             f"got {_shape_text(features.shape)}")
        if extra is not None and (extra.ndim != 3 or extra.shape[0] != keep_mask.shape[0]):
            raise InputError(f"extra must be [B, E, D], got {_shape_text(extra.shape)}")
        if extra_valid is not None and (extra is None or extra_valid.dtype != torch.bool
                                        or extra_valid.shape != extra.shape[:2]):
            raise InputError("extra_valid must be a bool tensor [B, E] matching extra, got "
                             f"{extra_valid.dtype} {_shape_text(extra_valid.shape)}")
        self.keep_mask = keep_mask
        self.roles = roles
        self.grid = (int(t), int(h), int(w))
        self.valid = valid
        self.features = features
        self.extra = extra
        self.extra_valid = extra_valid
        self.info: dict[str, Any] = dict(info or {})

    @property
    def batch_size(self) -> int:
        return int(self.keep_mask.shape[0])

    def keep_indices(self, b: int) -> torch.Tensor:
        """Sorted ``LongTensor`` of the flat indices sample ``b`` keeps."""
        return self.keep_mask[b].nonzero().flatten()

    def kept_counts(self) -> torch.Tensor:
        """``[B]`` long: kept tokens per sample (extra tokens not included)."""
        return self.keep_mask.sum(dim=1)

    def kept_features(self, original: torch.Tensor, b: int) -> torch.Tensor:
        """The token features sample ``b`` hands on: kept (merged if merging) then extra tokens.

        ``original`` is the ``[B, N, D]`` input the reduction was computed on.
        """
        source = self.features if self.features is not None else original
        kept = source[b, self.keep_indices(b)]
        if self.extra is None:
            return kept
        extra = self.extra[b] if self.extra_valid is None else self.extra[b, self.extra_valid[b]]
        return torch.cat([kept, extra.to(kept.dtype)], dim=0)

    def extra_counts(self) -> torch.Tensor:
        """``[B]`` long: real extra tokens per sample (0 without extra tokens)."""
        if self.extra is None:
            return torch.zeros(self.batch_size, dtype=torch.long, device=self.keep_mask.device)
        if self.extra_valid is None:
            return torch.full((self.batch_size,), self.extra.shape[1], dtype=torch.long,
                              device=self.keep_mask.device)
        return self.extra_valid.sum(dim=1)

    def output_counts(self) -> torch.Tensor:
        """``[B]`` long: tokens handed on per sample, kept ones plus real extra tokens (what a
        ``ratio`` / ``count`` budget counts)."""
        return self.kept_counts() + self.extra_counts()

    @property
    def stats(self) -> ReductionStats:
        kept = self.kept_counts().tolist()
        total = self.valid.sum(dim=1).tolist()
        role_counts = {
            role.name: ((self.roles & int(role)) != 0).logical_and(self.keep_mask).sum(dim=1).tolist()
            for role in ROLE_NAMES
            if role not in (Role.KEPT, Role.ABSORBED)
        }
        role_counts["ABSORBED"] = ((self.roles & int(Role.ABSORBED)) != 0).sum(dim=1).tolist()
        return ReductionStats(
            kept=kept,
            total=total,
            ratio=[k / n for k, n in zip(kept, total)],
            roles=role_counts,
            extra=int(self.extra_counts().max()) if self.extra is not None else 0,
        )

    def __repr__(self) -> str:
        return f"Reduction(grid={self.grid}, {self.stats})"
