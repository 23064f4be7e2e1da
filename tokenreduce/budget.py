"""Token budgets: a ratio, an absolute count, or the FLOP-style cost of FrameFusion/ST-SimDiff.

A budget turns "how many tokens may this sample keep" into an exact integer. Ratios are
taken as the decimal number they are written as, so ``ceil(0.28 * 100)`` is 28, not the 29
that binary floating point would give (``0.28 * 100 == 28.000000000000004``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import torch

from tokenreduce.errors import ConfigError, brief

Rounding = Literal["ceil", "round", "floor"]


def check_ratio(ratio: float, name: str = "ratio") -> float:
    """Validate a keep ratio in (0, 1]; return it as a float."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
        raise ConfigError(f"{name} must be a number in (0, 1], got {brief(ratio)}")
    if not 0 < ratio <= 1:  # exact for any int (no float conversion) and false for NaN
        raise ConfigError(f"{name} must be in (0, 1], got {brief(ratio)}")
    return float(ratio)


def check_count(count: int, name: str = "count") -> int:
    """Validate an absolute token count >= 1."""
    if isinstance(count, bool) or not isinstance(count, int):
        raise ConfigError(f"{name} must be an int >= 1, got {brief(count)}")
    if count < 1:
        raise ConfigError(f"{name} must be >= 1, got {count}")
    return count


def scaled_count(n: int, ratio: float, rounding: Rounding = "ceil") -> int:
    """``rounding(ratio * n)``.

    ``ceil`` and ``floor`` use the decimal value of ``ratio`` (exact rational arithmetic);
    ``round`` reproduces Python's ``round(n * ratio)`` on floats (half to even), which is what
    the official FastV and FrameFusion code computes.
    """
    if rounding == "round":
        return round(n * ratio)
    exact = Fraction(repr(float(ratio))) * n
    return math.ceil(exact) if rounding == "ceil" else math.floor(exact)


def cost_prune_ratio(sparsity: Sequence[float], cost: float, num_layers: int, *, clamp: bool = False) -> float:
    """The fraction of the remaining visual tokens to prune so that the whole LLM costs ``cost``.

    FrameFusion/ST-SimDiff formula: after the layers listed in ``sparsity`` (the fraction removed
    before each of them), ``s = prod(1 - S_i)`` tokens are left and ``total = sum_j prod_{i<=j}
    (1 - S_i)`` layer-equivalents were spent; the remaining ``num_layers - len(sparsity)`` layers
    must run on ``(1 - p) * s`` so that the total is ``num_layers * cost``. Returns ``p``, or 0
    when even keeping everything fits. Evaluated in the same float order as the reference code.

    An exhausted budget (already spent, or no layer left) raises ``ConfigError`` as the reference
    does; with ``clamp=True`` it returns 1.0 instead (prune everything that is left).
    """
    check_ratio(cost, "cost")
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers >= 2**63:
        raise ConfigError(f"num_layers must be an int below 2**63, got {brief(num_layers)}")
    if clamp and num_layers >= 1 and len(sparsity) >= num_layers:
        return 1.0
    if num_layers < 1 or len(sparsity) >= num_layers:
        raise ConfigError(f"num_layers ({num_layers}) must exceed the number of merged layers "
                          f"({len(sparsity)})")
    s = 1.0
    total = 0.0
    for fraction in sparsity:
        s *= 1 - fraction
        total += s
    remain = num_layers * cost - total
    if remain < 0 and clamp:
        return 1.0
    if remain < 0:
        raise ConfigError(f"cost={cost} is too small: {total:.3f} layer-equivalents of "
                          f"{num_layers} layers are already spent")
    keep = remain / ((num_layers - len(sparsity)) * s)
    return 0.0 if keep > 1 else 1 - keep


@dataclass(frozen=True)
class Budget:
    """How many tokens a sample keeps: exactly one of ``ratio``, ``count`` or ``cost``.

    - ``ratio`` in (0, 1]: keep ``rounding(ratio * n)`` (``ceil`` by default) of the ``n`` tokens
      the budget refers to;
    - ``count`` >= 1: keep that many (or all, when fewer are available);
    - ``cost`` in (0, 1]: the FrameFusion/ST-SimDiff FLOP-style budget: keep ``rounding((1 - p) * n)``
      with ``p = cost_prune_ratio(sparsity, cost, num_layers)`` (``round`` as in the reference).

    The result is clipped to the number of tokens available, never below 1 when any is available.
    """

    ratio: float | None = None
    count: int | None = None
    cost: float | None = None
    rounding: Rounding = "ceil"

    def __post_init__(self) -> None:
        given = [name for name in ("ratio", "count", "cost") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ConfigError("a budget needs exactly one of ratio, count or cost; "
                              f"got {given or 'none'}")
        if self.ratio is not None:
            check_ratio(self.ratio)
        if self.count is not None:
            check_count(self.count)
        if self.cost is not None:
            check_ratio(self.cost, "cost")
        if self.rounding not in ("ceil", "round", "floor"):
            raise ConfigError(f"rounding must be 'ceil', 'round' or 'floor', got {brief(self.rounding)}")

    def keep_count(
        self,
        base: int,
        available: int | None = None,
        *,
        num_layers: int | None = None,
        sparsity: Sequence[float] = (),
        clamp: bool = False,
    ) -> int:
        """Tokens to keep out of ``base`` (the count a ratio refers to), at most ``available``.

        A cost budget already spent raises ``ConfigError`` (as the reference code does), or keeps
        one token with ``clamp`` (``cost_prune_ratio``)."""
        available = base if available is None else available
        if self.count is not None:
            wanted = self.count
        elif self.ratio is not None:
            wanted = scaled_count(base, self.ratio, self.rounding)
        else:
            if num_layers is None:
                raise ConfigError("a cost budget needs the LLM's layer count: set num_layers in the "
                                  "config, or run inside a model (tr.apply) which provides it")
            assert self.cost is not None
            wanted = scaled_count(base, 1 - cost_prune_ratio(sparsity, self.cost, num_layers, clamp=clamp),
                                  "round")
        return max(min(wanted, available), 1 if available > 0 else 0)

    def keep_counts(
        self,
        base: torch.Tensor,
        available: torch.Tensor | None = None,
        *,
        num_layers: int | None = None,
        sparsity: Sequence[float] = (),
    ) -> torch.Tensor:
        """Per-sample ``keep_count``: ``base`` and ``available`` are long ``[B]``; returns long ``[B]``."""
        available = base if available is None else available
        counts = [
            self.keep_count(int(b), int(a), num_layers=num_layers, sparsity=sparsity)
            for b, a in zip(base.tolist(), available.tolist())
        ]
        return torch.tensor(counts, dtype=torch.long, device=base.device)
