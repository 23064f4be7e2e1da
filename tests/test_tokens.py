"""VisualTokens / Reduction: the data model and its input validation."""

from __future__ import annotations

import pytest
import torch

import tokenreduce as tr


def grid(b=2, t=3, h=4, w=5, d=6):
    return torch.randn(b, t, h, w, d)


def test_flat_index_is_sequence_order():
    b, t, h, w, d = 1, 3, 4, 5, 2
    x = torch.zeros(b, t, h, w, d)
    for ti in range(t):
        for hi in range(h):
            for wi in range(w):
                x[0, ti, hi, wi, 0] = ti * h * w + hi * w + wi
    flat = tr.VisualTokens(x).flat_features()
    assert torch.equal(flat[0, :, 0], torch.arange(t * h * w, dtype=torch.float32))


def test_shape_properties():
    tokens = tr.VisualTokens(grid())
    assert (tokens.batch_size, tokens.grid, tokens.num_tokens, tokens.dim) == (2, (3, 4, 5), 60, 6)
    assert tokens.valid_counts().tolist() == [60, 60]
    assert tokens.budget_counts().tolist() == [60, 60]


@pytest.mark.parametrize("bad, error, words", [
    (torch.randn(3, 4, 5, 6), ValueError, ["features", "[B, T, H, W, D]", "rank 4"]),
    (torch.randn(1, 2, 3, 4, 5, 6), ValueError, ["features", "rank 6"]),
    (torch.ones(1, 2, 3, 4, 5, dtype=torch.long), TypeError, ["features", "floating-point", "int64"]),
    ([[1.0]], TypeError, ["features", "torch.Tensor", "list"]),
    (torch.randn(0, 2, 3, 4, 5), ValueError, ["empty B axis"]),
    (torch.randn(1, 0, 3, 4, 5), ValueError, ["empty T axis", "empty video"]),
    (torch.randn(1, 2, 3, 4, 0), ValueError, ["empty D axis"]),
])
def test_bad_features(bad, error, words):
    with pytest.raises(error) as info:
        tr.VisualTokens(bad)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_features(value):
    x = grid()
    x[1, 2, 3, 4, 5] = value
    with pytest.raises(ValueError, match="features contain NaN or inf"):
        tr.VisualTokens(x)


def test_valid_mask_checks():
    x = grid()
    with pytest.raises(ValueError, match=r"valid must have shape \[B, T, H, W\]=\(2, 3, 4, 5\).*got \(2, 3, 4\)"):
        tr.VisualTokens(x, valid=torch.ones(2, 3, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="valid must be a bool tensor"):
        tr.VisualTokens(x, valid=torch.ones(2, 3, 4, 5))
    empty = torch.ones(2, 3, 4, 5, dtype=torch.bool)
    empty[1] = False
    with pytest.raises(ValueError, match=r"no token of sample\(s\) \[1\]"):
        tr.VisualTokens(x, valid=empty)


def test_importance_checks():
    x = grid()
    with pytest.raises(ValueError, match=r"importance must have shape \[B, T, H, W\]=\(2, 3, 4, 5\)"):
        tr.VisualTokens(x, importance=torch.rand(2, 60))
    with pytest.raises(TypeError, match="importance must be a floating-point tensor"):
        tr.VisualTokens(x, importance=torch.ones(2, 3, 4, 5, dtype=torch.long))
    bad = torch.rand(2, 3, 4, 5)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="importance contains NaN"):
        tr.VisualTokens(x, importance=bad)
    valid = torch.ones(2, 3, 4, 5, dtype=torch.bool)
    valid[0, 0, 0, 0] = False  # a NaN under padding is allowed
    tr.VisualTokens(x, valid=valid, importance=bad)


def test_signals_checks():
    x = grid()
    tokens = tr.VisualTokens(x, signals={"keys": torch.randn(2, 3, 4, 5, 7)})
    assert tokens.flat_signal("keys").shape == (2, 60, 7)
    with pytest.raises(ValueError, match=r"signals\['keys'\] must have shape"):
        tr.VisualTokens(x, signals={"keys": torch.randn(2, 3, 4, 7)})
    with pytest.raises(tr.MissingSignalError, match="'embeddings'"):
        tokens.flat_signal("embeddings")
    with pytest.raises(tr.MissingSignalError, match="importance"):
        tokens.flat_importance()


def test_other_argument_checks():
    x = grid()
    with pytest.raises(ValueError, match="num_layers"):
        tr.VisualTokens(x, num_layers=0)
    with pytest.raises(ValueError, match="budget_base"):
        tr.VisualTokens(x, budget_base=torch.tensor([3]))
    with pytest.raises(TypeError, match="unknown VisualTokens field"):
        tr.VisualTokens(x).replace(colour=1)


def test_sample_and_replace():
    x = grid()
    valid = torch.rand(2, 3, 4, 5) > 0.3
    valid[:, 0, 0, 0] = True
    tokens = tr.VisualTokens(x, valid, torch.rand(2, 3, 4, 5), num_layers=7)
    one = tokens.sample(1)
    assert one.batch_size == 1 and one.num_layers == 7
    assert torch.equal(one.valid[0], valid[1])
    with pytest.raises(IndexError):
        tokens.sample(2)
    assert tokens.replace(importance=None).importance is None


def test_reduction_roles_and_stats():
    keep = torch.tensor([[True, False, True, False], [False, False, False, True]])
    roles = torch.tensor([[tr.Role.EVENT, tr.Role.ABSORBED, tr.Role.REPRESENTATIVE, 0],
                          [0, tr.Role.EVENT, 0, tr.Role.EVENT | tr.Role.IMPORTANT]], dtype=torch.int32)
    red = tr.Reduction(keep, roles, grid=(1, 2, 2))
    assert torch.equal((red.roles & tr.Role.KEPT) != 0, keep)
    assert red.keep_indices(0).tolist() == [0, 2]
    stats = red.stats
    assert stats.kept == [2, 1] and stats.total == [4, 4] and stats.ratio == [0.5, 0.25]
    assert stats.roles["EVENT"] == [1, 1]  # the dropped EVENT of sample 1 does not count
    assert stats.roles["REPRESENTATIVE"] == [1, 0]
    assert stats.roles["ABSORBED"] == [1, 0]
    assert "kept=[2, 1]" in str(stats)


def test_reduction_rejects_kept_padding_and_bad_shapes():
    keep = torch.tensor([[True, True]])
    with pytest.raises(ValueError, match="keeps padding"):
        tr.Reduction(keep, grid=(1, 1, 2), valid=torch.tensor([[True, False]]))
    with pytest.raises(ValueError, match="grid"):
        tr.Reduction(keep, grid=(1, 1, 3))
    with pytest.raises(ValueError, match="bool tensor"):
        tr.Reduction(keep.long(), grid=(1, 1, 2))


def test_kept_features_appends_extra():
    x = torch.arange(8, dtype=torch.float32).reshape(1, 4, 2)
    red = tr.Reduction(torch.tensor([[True, False, False, True]]), grid=(1, 2, 2),
                       extra=torch.full((1, 1, 2), -1.0))
    out = red.kept_features(x, 0)
    assert out.tolist() == [[0.0, 1.0], [6.0, 7.0], [-1.0, -1.0]]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_features_are_found_anywhere(dtype, value):
    """The fused check sees a bad value at every position (vector lanes and tails alike) and names it."""
    shape = (1, 2, 3, 1, 7)  # 42 elements: full SIMD lanes and a remainder
    for flat_index in range(42):
        x = torch.randn(shape).to(dtype)
        x.view(-1)[flat_index] = value
        with pytest.raises(ValueError, match="features contain NaN or inf") as info:
            tr.VisualTokens(x)
        position = list(torch.unravel_index(torch.tensor(flat_index), shape))
        assert "[" + ", ".join(f"{a}={int(i)}" for a, i in zip("BTHWD", position)) + "]" in str(info.value)


def test_finite_features_whose_sum_overflows_are_accepted():
    """fp16 holds at most 65504; a sum of these finite values would be inf, the check is not fooled."""
    x = torch.full((1, 4, 8, 8, 64), 60000.0, dtype=torch.float16)
    assert torch.isinf(x.sum())
    tr.VisualTokens(x)
    tr.VisualTokens(torch.full((1, 2, 2, 2, 8), 3e38))  # the fp32 sum overflows too


def test_replace_validates_what_it_changes():
    x = grid()
    valid = torch.ones(2, 3, 4, 5, dtype=torch.bool)
    valid[0, 0, 0, 0] = False
    importance = torch.rand(2, 3, 4, 5)
    importance[0, 0, 0, 0] = float("nan")  # allowed under padding
    tokens = tr.VisualTokens(x, valid=valid, importance=importance)
    bad = x.clone()
    bad[0, 1, 2, 3, 4] = float("inf")
    with pytest.raises(ValueError, match=r"features contain NaN or inf values \(first at \[B=0, T=1, H=2, W=3, D=4\]"):
        tokens.replace(features=bad)
    with pytest.raises(ValueError, match=r"importance contains NaN .* \[B=0, T=0, H=0, W=0\]"):
        tokens.replace(valid=torch.ones_like(valid))  # the NaN is no longer under padding
    with pytest.raises(ValueError, match="no token of sample"):
        tokens.replace(valid=torch.zeros_like(valid))
    with pytest.raises(ValueError, match=r"features must have shape \[B, T, H, W, D\]"):
        tokens.replace(features=x[0])
    assert tokens.replace(num_layers=3).num_layers == 3


def test_trusted_checks_structure_not_values():
    x = grid()
    x[0, 0, 0, 0, 0] = float("nan")
    tokens = tr.VisualTokens.trusted(x, valid=torch.zeros(2, 3, 4, 5, dtype=torch.bool))
    assert tokens.grid == (3, 4, 5)
    with pytest.raises(ValueError, match="rank 4"):
        tr.VisualTokens.trusted(x[0])
    with pytest.raises(ValueError, match=r"valid must have shape"):
        tr.VisualTokens.trusted(x, valid=torch.ones(2, 3, 4, dtype=torch.bool))
    assert tr.VisualTokens(grid()).replace_trusted(features=x).features is x


def test_library_copies_do_not_validate_again(monkeypatch):
    """Pipelines (and the reference variant, a pipeline of two stages) validate the user's tokens
    once, when they are made, not at every step."""
    from tokenreduce import tokens as tokens_module

    checked = []
    original = tokens_module.non_finite_at
    monkeypatch.setattr(tokens_module, "non_finite_at",
                        lambda values, valid=None: checked.append(values.shape) or original(values, valid))
    x = torch.randn(1, 4, 3, 3, 8)
    x[:, 1:] = x[:, :1] + 0.01 * torch.randn(1, 3, 3, 3, 8)
    tokens = tr.VisualTokens(x, importance=torch.rand(1, 4, 3, 3), num_layers=28)
    assert checked == [x.shape, (1, 4, 3, 3)]
    checked.clear()
    tr.build("st_simdiff", variant="reference", cost=0.3)(tokens)
    tr.Pipeline([tr.build("uniform", ratio=0.5), tr.build("attention_prune", ratio=0.3)])(tokens)
    tokens.sample(0)
    assert checked == []
