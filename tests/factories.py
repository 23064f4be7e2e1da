"""Input factories shared by the tests: token grids with the signals a reducer declares."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

import tokenreduce as tr
from tokenreduce.interfaces import Signal

KEY_DIM = 16
NUM_LAYERS = 4


def make_features(
    b: int, t: int, h: int, w: int, d: int, *, seed: int = 0, static: float = 0.0, dtype=torch.float32
) -> torch.Tensor:
    """Random features; ``static`` in [0, 1] blends every frame towards the first one, so that a
    share of the tokens is temporally redundant (what similarity strategies look for)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, h, w, d, generator=g)
    if static:
        x = (1 - static) * x + static * x[:, :1]
    return x.to(dtype)


def make_valid(b: int, t: int, h: int, w: int, *, seed: int = 0, keep_prob: float = 0.7) -> torch.Tensor:
    """A random padding mask with at least one valid token per sample."""
    g = torch.Generator().manual_seed(seed + 1)
    valid = torch.rand(b, t, h, w, generator=g) < keep_prob
    valid.view(b, -1)[:, 0] = True
    return valid


def make_tokens(
    reducer: tr.Reducer | None,
    features: torch.Tensor,
    *,
    valid: torch.Tensor | None = None,
    seed: int = 0,
) -> tr.VisualTokens:
    """``VisualTokens`` carrying every signal ``reducer`` requires (random, seeded)."""
    b, t, h, w, d = features.shape
    g = torch.Generator().manual_seed(seed + 2)
    requires = reducer.requires if reducer is not None else frozenset()
    importance = torch.rand(b, t, h, w, generator=g) if Signal.IMPORTANCE in requires else None
    signals: dict[str, torch.Tensor] = {}
    if Signal.KEYS in requires:
        signals["keys"] = torch.randn(b, t, h, w, KEY_DIM, generator=g)
    if Signal.EMBEDDINGS in requires:
        signals["embeddings"] = features.clone()
    return tr.VisualTokens(features, valid, importance, signals=signals, num_layers=NUM_LAYERS)


def has_field(reducer_cls: type, name: str) -> bool:
    return name in {f.name for f in dataclasses.fields(reducer_cls.Config)}


def build_with_ratio(name: str, ratio: float | None) -> Any:
    """Build a registered strategy with its default config, setting ``ratio`` when it has one."""
    cls = tr.STRATEGIES.get(name)
    if ratio is not None and has_field(cls, "ratio"):
        return tr.build(name, ratio=ratio)
    return tr.build(name)
