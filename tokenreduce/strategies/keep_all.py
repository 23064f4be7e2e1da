"""``keep_all``: the identity reduction (ratio 1.0); the control every comparison starts from."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from tokenreduce.config import Config
from tokenreduce.errors import ConfigError
from tokenreduce.interfaces import Reducer
from tokenreduce.registry import register_strategy
from tokenreduce.tokens import Reduction, VisualTokens

WHY = "keep_all keeps every token: its only budget is ratio 1 (use random or uniform for a control at ratio r)"


@register_strategy("keep_all")
class KeepAll(Reducer):
    """Keep every valid token (no reduction); a model under it behaves exactly as without tokenreduce.

    ``ratio`` is accepted as 1 only (any other budget is a ``ConfigError``).
    """

    budgeted: ClassVar[bool] = False

    @dataclasses.dataclass
    class Config(Config):
        ratio: float = 1.0

        def validate(self) -> None:
            if self.ratio != 1.0:
                raise ConfigError(f"{WHY}; got ratio={self.ratio}")

    @classmethod
    def with_budget(cls, settings: Mapping[str, Any] | Config | None = None, *, ratio: float | None = None,
                    count: int | None = None) -> Config:
        if ratio != 1.0 or count is not None:
            raise ConfigError(f"{WHY}; got {'ratio' if count is None else 'count'}={ratio if count is None else count}")
        return cls.Config()

    @classmethod
    def examples(cls) -> list[dict[str, Any]]:
        return [{}]

    def reduce(self, tokens: VisualTokens) -> Reduction:
        valid = tokens.flat_valid()
        return Reduction(valid.clone(), grid=tokens.grid, valid=valid)

    def planned_counts(self, tokens: VisualTokens) -> torch.Tensor:
        return tokens.valid_counts()
