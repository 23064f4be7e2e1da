"""Selection primitives: the exact top-k by threshold agrees with the sorting one, ties included."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenreduce.selection import top_k_exact, top_k_mask


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 6), width=st.integers(1, 40), k=st.integers(1, 45), levels=st.integers(1, 5),
       masked=st.floats(0.0, 0.9), seed=st.integers(0, 10**6))
def test_top_k_exact_equals_top_k_mask(rows, width, k, levels, masked, seed):
    """Few distinct levels force ties at the boundary; -inf entries are never chosen as found."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, levels, (rows, width), generator=g).float()
    absent = torch.rand(rows, width, generator=g) < masked
    scores = scores.masked_fill(absent, float("-inf"))
    values, indices = top_k_exact(scores, k)
    assert values.shape == indices.shape == (rows, min(k, width))
    assert torch.equal(values, scores.gather(1, indices))
    found = torch.zeros_like(absent).scatter_(1, indices, values > float("-inf"))
    expected = top_k_mask(scores, torch.full((rows,), k), ~absent)
    assert torch.equal(found, expected)
    assert all(len(set(row.tolist())) == len(row) for row in indices)  # no index twice in a row


def test_top_k_exact_on_many_rows_and_batches():
    scores = torch.tensor([[[3.0, 1.0, 3.0, 3.0, 0.0]], [[1.0, 1.0, 1.0, 1.0, 1.0]]])
    values, indices = top_k_exact(scores, 2)
    assert indices.tolist() == [[[0, 2]], [[0, 1]]] and values.tolist() == [[[3.0, 3.0]], [[1.0, 1.0]]]
