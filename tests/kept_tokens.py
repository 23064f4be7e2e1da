"""Comparing what a reduction hands on with what an official-code oracle hands on: flat index ->
token, for one sample."""

from __future__ import annotations

import torch

import tokenreduce as tr


def kept_tokens(reduction: tr.Reduction, features: torch.Tensor, b: int = 0) -> dict[int, torch.Tensor]:
    """Flat index -> the token sample ``b`` hands on there (merged features when the reduction has
    them, else the input ``features`` ``[B, T, H, W, D]``)."""
    source = reduction.features if reduction.features is not None else features.reshape(
        features.shape[0], -1, features.shape[-1])
    return {int(i): source[b, i] for i in reduction.keep_indices(b)}


def assert_same_tokens(ours: dict[int, torch.Tensor], official: dict[int, torch.Tensor], *, rtol: float = 1e-5,
                       atol: float = 1e-5) -> None:
    """The same kept indices, exactly, and the same tokens there, up to float rounding."""
    assert sorted(ours) == sorted(official)
    for i, token in ours.items():
        torch.testing.assert_close(token, official[i].to(token.dtype), rtol=rtol, atol=atol)
