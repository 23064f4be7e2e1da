"""The budgets ``evs`` and ``vidcom2`` share: ``ratio`` / ``count`` as everywhere, or vLLM's ``prune_ratio``."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from factories import make_features, make_valid

import tokenreduce as tr

NAMES = ["evs", "vidcom2"]


@pytest.mark.parametrize("grid,q,evs,vidcom2", [
    ((4, 2, 3), 0.5, 12, 12),    # int(24 * 0.5)
    ((4, 2, 3), 0.9, 6, 4),      # int(24 * 0.1) = 2: below one frame (EVS: 6) and one token per frame (4)
    ((5, 4, 5), 0.9, 20, 9),     # 100 * (1 - 0.9) = 9.999999999999998: vLLM truncates the double to 9
    ((50, 1, 2), 0.9, 9, 50),
    ((10, 1, 1), 0.7, 3, 10),    # 10 * 0.30000000000000004 -> 3
    ((3, 2, 2), 0.0, 12, 12),    # q = 0 keeps everything
    ((1, 4, 4), 0.99, 16, 1),    # one frame: EVS keeps it all, VidCom2 one token
])
def test_prune_ratio_keeps_vllms_count(grid, q, evs, vidcom2):
    tokens = tr.VisualTokens(make_features(2, *grid, 4))
    for name, expected in (("evs", evs), ("vidcom2", vidcom2)):
        reducer = tr.build(name, prune_ratio=q)
        assert reducer.planned_counts(tokens).tolist() == [expected] * 2, name
        assert reducer(tokens).kept_counts().tolist() == [expected] * 2, name


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("ratio", [0.05, 0.28, 0.3, 0.5, 1.0])
def test_ratio_and_count_keep_exactly_their_budget_with_padding(name, ratio):
    features, valid = make_features(3, 5, 4, 3, 6, seed=1, static=0.9), make_valid(3, 5, 4, 3, seed=1)
    tokens = tr.VisualTokens(features, valid)
    valid_counts = tokens.valid_counts().tolist()
    expected = [max(1, math.ceil(Fraction(repr(ratio)) * n)) for n in valid_counts]
    assert tr.build(name, ratio=ratio)(tokens).kept_counts().tolist() == expected
    assert tr.build(name, count=7)(tokens).kept_counts().tolist() == [min(7, n) for n in valid_counts]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("config,field", [
    ({"prune_ratio": 1.0}, "prune_ratio"),
    ({"prune_ratio": -0.1}, "prune_ratio"),
    ({"prune_ratio": 0.5, "ratio": 0.5}, "ratio=0.5"),
    ({"prune_ratio": 0.5, "count": 4}, "count=4"),
    ({"ratio": 0.0}, "ratio"),
    ({"ratio": 0.5, "count": 3}, "count"),
    ({"count": 0}, "count"),
    ({"prune_rate": 0.5}, "prune_rate"),
])
def test_bad_configs_name_the_field(name, config, field):
    with pytest.raises(tr.ConfigError, match=field):
        tr.build(name, **config)


@pytest.mark.parametrize("name", NAMES)
def test_wrong_types_name_the_field_and_configs_round_trip(name):
    for value in ("0.5", True, [0.5]):
        with pytest.raises(tr.ConfigTypeError, match=f"{name}.prune_ratio"):
            tr.build(name, prune_ratio=value)
    with pytest.raises(tr.ConfigError, match=rf"{name}.prune_ratio must be in \[0, 1\).*got nan"):
        tr.build(name, prune_ratio=float("nan"))  # a number of the right type: the range is the news
    reducer = tr.build(name, prune_ratio=0.75)
    assert tr.build(reducer.config.to_dict()).config == reducer.config
    assert reducer.stage is tr.Stage.PRE_LLM and not reducer.requires
