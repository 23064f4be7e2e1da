"""Repeated measurements and the verdicts they allow.

A benchmark on a shared machine measures the machine as much as the code: every timing is kept as
all its repeats (``Spread``: min / median / max), and a comparison with a target says "meets" or
"misses" only when every pairing of the repeats agrees. When the repeats straddle the target, vary
too much, or are too few to show how much they vary, the verdict says so instead of guessing.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

MIN_REPEATS = 3  # fewer repeats show no spread: their verdicts are marked as unverified
WIDE_SPREAD = 0.25  # (max - min) / median above this: too noisy for a verdict


@dataclass(frozen=True)
class Spread:
    """All repeats of one measurement."""

    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        return cls(tuple(float(v) for v in values))

    @property
    def min(self) -> float:
        return min(self.values)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def max(self) -> float:
        return max(self.values)

    @property
    def relative(self) -> float:
        """``(max - min) / median`` (0 for a single value)."""
        return (self.max - self.min) / self.median if self.median > 0 else 0.0

    @property
    def wide(self) -> bool:
        return self.relative > WIDE_SPREAD

    def ratio(self, other: Spread) -> Spread:
        """Every ratio of a repeat of ``self`` to a repeat of ``other``: the range a ratio of the two
        measurements can honestly take."""
        return Spread.of([a / b for a in self.values for b in other.values if b > 0] or [float("nan")])

    def text(self, scale: float = 1.0, digits: int = 0) -> str:
        """``min / median / max`` times ``scale``."""
        return " / ".join(f"{scale * v:.{digits}f}" for v in (self.min, self.median, self.max))

    def as_dict(self) -> dict[str, object]:
        return {"min": self.min, "median": self.median, "max": self.max, "values": list(self.values)}


def verdict(ratio: Spread, target: float, *, repeats: int | None = None, noisy: bool = False) -> str:
    """``meets`` / ``misses`` ``<= target`` when every repeat agrees, else why there is no verdict.

    ``repeats=None`` is a deterministic measurement (peak memory): one value decides.
    """
    if repeats is not None and repeats < MIN_REPEATS:
        return f"unverified: {repeats} repeat(s) show no spread, rerun with --repeats {MIN_REPEATS} or more"
    if noisy:
        return f"no verdict: the repeats vary by more than {WIDE_SPREAD:.0%} (a busy machine)"
    if ratio.max <= target:
        return f"meets <= {target}x"
    if ratio.min > target:
        return f"misses <= {target}x"
    return f"no verdict: the repeats straddle {target}x ({ratio.min:.2f}-{ratio.max:.2f}x)"
