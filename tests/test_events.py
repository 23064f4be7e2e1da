"""The temporal-difference event detector (eq. 6) and its dynamic (percentile) threshold."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from simdiff_oracles import cosine

import tokenreduce as tr
from tokenreduce.errors import ConfigError
from tokenreduce.graph import SpatioTemporalGraphBuilder, TemporalDifference


def detect(x, valid=None, **options):
    tokens = tr.VisualTokens(x, valid)
    graph = SpatioTemporalGraphBuilder().build_graph(tokens)
    return TemporalDifference(**options).detect(tokens, graph)


def test_later_token_of_a_changed_position_is_the_event():
    x = torch.zeros(1, 3, 2, 2, 4)
    x[..., 0] = 1
    x[0, 1, 1, 0] = torch.tensor([0.0, 1, 0, 0])  # changes in frame 1 and back in frame 2
    events = detect(x)[0].reshape(3, 2, 2)
    assert events.nonzero().tolist() == [[1, 1, 0], [2, 1, 0]]


def test_threshold_is_strict_and_padding_is_never_an_event():
    x = torch.zeros(1, 2, 1, 2, 2)
    x[0, 0, 0, 0] = torch.tensor([1.0, 0])
    x[0, 1, 0, 0] = torch.tensor([0.0, 1])  # cos 0
    x[0, 0, 0, 1] = torch.tensor([1.0, 0])
    x[0, 1, 0, 1] = torch.tensor([1.0, 1])  # cos 0.7071
    assert detect(x, tau_diff=0.0)[0].tolist() == [False] * 4
    assert detect(x, tau_diff=0.5)[0].tolist() == [False, False, True, False]
    assert detect(x, tau_diff=0.75)[0].tolist() == [False, False, True, True]
    valid = torch.tensor([[[[True, True]], [[False, True]]]])
    assert detect(x, valid, tau_diff=0.75)[0].tolist() == [False, False, False, True]


def test_zero_vectors():
    x = torch.ones(1, 2, 1, 1, 3)
    x[0, 1] = 0
    assert detect(x)[0].tolist() == [False, True]  # similarity 0 < 0.2
    assert detect(x, ignore_zero_vectors=True)[0].tolist() == [False, False]  # official NaN


@pytest.mark.parametrize("percentile", [0.0, 50.0, 90.0, 100.0])
def test_dynamic_threshold_matches_numpy_percentile(percentile):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 3, 3, 5, generator=g)
    got = detect(x, percentile=percentile)
    for b in range(2):
        flat = x[b].reshape(36, 5)
        later = list(range(9, 36))
        diffs = [1 - cosine(flat[n - 9], flat[n]) for n in later]
        cut = np.percentile(np.array(diffs, dtype=np.float32), percentile)
        expected = {n for n, d in zip(later, diffs) if d > cut + 1e-6}
        borderline = {n for n, d in zip(later, diffs) if abs(d - cut) <= 1e-6}
        found = set(got[b].nonzero().flatten().tolist())
        assert expected <= found <= expected | borderline


def test_percentile_validation():
    with pytest.raises(ConfigError, match="percentile"):
        TemporalDifference(percentile=120.0)


def test_single_frame_has_no_events():
    assert not bool(detect(torch.randn(1, 1, 3, 3, 4)).any())
    assert not bool(detect(torch.randn(1, 1, 3, 3, 4), percentile=50.0).any())
