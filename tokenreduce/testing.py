"""The property suite every strategy passes, as a public helper for plugin authors.

A strategy package tests its strategy in two lines::

    from tokenreduce.testing import check_strategy

    def test_norm_select():
        check_strategy("norm_select")

``check_strategy`` builds the strategy at each of its ``examples()`` and at random budgets
(``Reducer.at_budget``) and runs it on random token grids drawn by hypothesis (padding, T = 1,
H = W = 1, batches, redundant and random content), with every signal it declares. Checked: kept
indices are sorted, unique, in range and never padding; roles mark exactly the kept tokens; the
kept count equals ``planned_counts``; a ``ratio`` / ``count`` budget of a ``BudgetedReducer`` hands
on exactly ``keep_counts`` tokens (new tokens counted), which is ``rounding(ratio · N)``; ratio 1
keeps everything; the same input gives the same result; a batch equals its samples one by one;
every example reduces the suite's grids (settings that keep everything test nothing); the config
round-trips through JSON; a missing required signal is an error naming it. Each check is a
function of its own (``check_invariants``, ...) for suites that want them as separate tests; the
grid strategies (``grids``, ``ratios``) and the token factories (``make_features``, ``make_valid``,
``make_tokens``) are public too.

Needs hypothesis (``pip install 'tokenreduce[test]'``). The number of examples per check is
hypothesis' (``max_examples`` of the active settings profile) unless ``max_examples`` is given.
"""

from __future__ import annotations

import dataclasses
import json
import math
from fractions import Fraction
from typing import Any

import torch

import tokenreduce as tr
from tokenreduce.errors import MissingDependencyError
from tokenreduce.interfaces import BudgetConfig, BudgetedReducer, Reducer, Signal

KEY_DIM = 16  # width of the random key states handed to strategies that read keys
NUM_LAYERS = 4  # the LLM layer count the suite's tokens carry (cost budgets need one)
CONTEXT_TOKENS = 3  # tokens after the video handed to strategies that read the context
SUITE_SHAPES = ((2, 4, 4, 4, 8), (1, 6, 3, 5, 6), (3, 2, 4, 4, 8))  # grids every example must reduce


def _hypothesis() -> Any:
    try:
        import hypothesis
    except ImportError:
        raise MissingDependencyError("tokenreduce.testing needs hypothesis: pip install 'tokenreduce[test]'") from None
    return hypothesis


# ----- token grids --------------------------------------------------------------------------------
def make_features(b: int, t: int, h: int, w: int, d: int, *, seed: int = 0, static: float = 0.0,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Random features ``[B, T, H, W, D]``; ``static`` in [0, 1] blends every frame towards the first,
    so that a share of the tokens is temporally redundant (what similarity strategies look for)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, h, w, d, generator=generator)
    if static:
        x = (1 - static) * x + static * x[:, :1]
    return x.to(dtype)


def make_valid(b: int, t: int, h: int, w: int, *, seed: int = 0, keep_prob: float = 0.7) -> torch.Tensor:
    """A random padding mask ``[B, T, H, W]`` with at least one valid token per sample."""
    generator = torch.Generator().manual_seed(seed + 1)
    valid = torch.rand(b, t, h, w, generator=generator) < keep_prob
    valid.view(b, -1)[:, 0] = True
    return valid


def make_tokens(reducer: Reducer | None, features: torch.Tensor, *, valid: torch.Tensor | None = None,
                seed: int = 0, num_layers: int = NUM_LAYERS) -> tr.VisualTokens:
    """``VisualTokens`` carrying every signal ``reducer`` (all its steps) requires or uses when
    present, seeded: random importance, random key states, the features as embeddings, random
    final-norm states, and three context tokens (the prompt after the video) with keys and states."""
    b, t, h, w, d = features.shape
    generator = torch.Generator().manual_seed(seed + 2)
    wanted = frozenset() if reducer is None else signals_of(reducer)
    importance = torch.rand(b, t, h, w, generator=generator) if Signal.IMPORTANCE in wanted else None
    signals: dict[str, torch.Tensor] = {}
    if Signal.KEYS in wanted:
        signals[Signal.KEYS.value] = torch.randn(b, t, h, w, KEY_DIM, generator=generator)
    if Signal.EMBEDDINGS in wanted:
        signals[Signal.EMBEDDINGS.value] = features.clone()
    if Signal.NORMED in wanted:
        signals[Signal.NORMED.value] = torch.randn(b, t, h, w, d, generator=generator).to(features.dtype)
    context = None
    if Signal.CONTEXT in wanted:
        context = {"valid": torch.ones(b, CONTEXT_TOKENS, dtype=torch.bool),
                   Signal.KEYS.value: torch.randn(b, CONTEXT_TOKENS, KEY_DIM, generator=generator),
                   Signal.NORMED.value: torch.randn(b, CONTEXT_TOKENS, d, generator=generator).to(features.dtype)}
    return tr.VisualTokens(features, valid, importance, signals=signals, num_layers=num_layers, context=context)


def signals_of(reducer: Reducer) -> frozenset[Signal]:
    """Every signal ``reducer`` or one of its steps requires or reads when present."""
    parts = [reducer, *reducer.steps()]
    return frozenset().union(*(p.requires for p in parts), *(p.optional for p in parts))


@dataclasses.dataclass(frozen=True)
class Grid:
    """A seeded random token grid: ``shape`` ``(B, T, H, W, D)``, redundancy ``static``, padding."""

    shape: tuple[int, int, int, int, int]
    seed: int = 0
    static: float = 0.0
    padded: bool = False

    def tokens(self, reducer: Reducer) -> tr.VisualTokens:
        """The grid's ``VisualTokens`` with the signals ``reducer`` reads."""
        b, t, h, w, _ = self.shape
        features = make_features(*self.shape, seed=self.seed, static=self.static)
        valid = make_valid(b, t, h, w, seed=self.seed) if self.padded else None
        return make_tokens(reducer, features, valid=valid, seed=self.seed)


def grids(max_side: int = 4, max_batch: int = 3) -> Any:
    """Hypothesis strategy of ``Grid``: 1..``max_batch`` samples of 1..4 frames of up to
    ``max_side`` x ``max_side`` tokens, random or redundant content, with or without padding."""
    st = _hypothesis().strategies
    shapes = st.tuples(st.integers(1, max_batch), st.integers(1, 4), st.integers(1, max_side),
                       st.integers(1, max_side), st.integers(1, 8))
    return st.builds(Grid, shapes, st.integers(0, 2**16), st.sampled_from([0.0, 0.9, 1.0]), st.booleans())


def ratios() -> Any:
    """Hypothesis strategy of keep ratios in (0, 1]: the usual ones and any other."""
    st = _hypothesis().strategies
    return st.sampled_from([0.05, 0.1, 0.3, 0.5, 0.7, 1.0]) | st.floats(0.01, 1.0)


# ----- building a strategy at its examples and budgets ------------------------------------------------
def strategy_class(strategy: str | type[Reducer]) -> type[Reducer]:
    """The class of a registered name (or the class itself)."""
    return tr.STRATEGIES.get(strategy) if isinstance(strategy, str) else strategy


def build_example(strategy: str | type[Reducer], example: dict[str, Any], ratio: float | None = None) -> Reducer:
    """The strategy at ``example``, with its budget replaced by ``ratio`` when given."""
    cls = strategy_class(strategy)
    config = cls.Config.from_dict(example) if ratio is None else cls.at_budget(ratio, example)
    return cls(config)


def _settings(max_examples: int | None) -> Any:
    hypothesis = _hypothesis()
    options: dict[str, Any] = {"deadline": None, "suppress_health_check": list(hypothesis.HealthCheck)}
    if max_examples is not None:
        options["max_examples"] = max_examples
    return hypothesis.settings(**options)


def _examples(cls: type[Reducer]) -> list[dict[str, Any]]:
    examples = cls.examples()
    if not examples:
        raise AssertionError(f"{cls.registered_name}.examples() is empty: a strategy declares at least one setting")
    return examples


def _budgeted(cls: type[Reducer]) -> bool:
    return cls.budgeted and issubclass(cls.Config, BudgetConfig)


def _at_examples_and_random_budgets(cls: type[Reducer], max_examples: int | None) -> Any:
    """Decorator making a check ``(example, ratio, grid)`` a hypothesis test over ``cls``'s examples,
    each at its own budget (``ratio`` None) or, for a budgeted strategy, at a random ratio, on random grids."""
    hypothesis = _hypothesis()
    st = hypothesis.strategies
    budgets = st.none() | ratios() if _budgeted(cls) else st.none()
    return lambda check: _settings(max_examples)(
        hypothesis.given(example=st.sampled_from(_examples(cls)), ratio=budgets, grid=grids())(check))


# ----- the checks ------------------------------------------------------------------------------------
def check_reduction(reducer: Reducer, tokens: tr.VisualTokens, reduction: tr.Reduction) -> None:
    """Invariants of any reduction of ``tokens`` by ``reducer`` (raises ``AssertionError``)."""
    b, n = tokens.batch_size, tokens.num_tokens
    assert reduction.keep_mask.shape == (b, n) and reduction.roles.shape == (b, n)
    assert reduction.grid == tokens.grid
    valid = tokens.flat_valid()
    assert not bool((reduction.keep_mask & ~valid).any()), "kept padding"
    assert torch.equal((reduction.roles & int(tr.Role.KEPT)) != 0, reduction.keep_mask), "KEPT role != keep_mask"
    for i in range(b):
        kept = reduction.keep_indices(i)
        assert kept.dtype == torch.long
        assert torch.equal(kept, torch.unique(kept)), "kept indices must be sorted and unique"
        if kept.numel():
            assert 0 <= int(kept.min()) and int(kept.max()) < n
    assert bool((reduction.output_counts() >= 1).all()), "a sample hands on no token"
    planned = reducer.planned_counts(tokens)
    if planned is not None:
        assert reduction.kept_counts().tolist() == planned.tolist(), "kept count != planned_counts (exact budget)"
    if isinstance(reducer, BudgetedReducer) and reducer.config.given_budget() in ("ratio", "count") \
            and planned is not None:
        expected = expected_counts(reducer.config, tokens)
        assert reduction.output_counts().tolist() == expected, \
            f"a {reducer.config.given_budget()} budget must hand on {expected} tokens (new tokens counted)"
    if reduction.features is not None:
        assert reduction.features.shape[:2] == (b, n)
        assert bool(torch.isfinite(reduction.features[reduction.keep_mask]).all())


def expected_counts(config: BudgetConfig, tokens: tr.VisualTokens) -> list[int]:
    """What a ``ratio`` / ``count`` budget keeps per sample, computed from its definition:
    ``rounding(ratio · N)`` (``ratio`` read as the decimal it prints as) or ``count``, at most the
    valid tokens and at least one."""
    out = []
    for base, available in zip(tokens.budget_counts().tolist(), tokens.valid_counts().tolist()):
        if config.count is not None:
            wanted = config.count
        elif config.rounding == "round":
            wanted = round(base * config.ratio)
        else:
            exact = Fraction(repr(config.ratio)) * base
            wanted = math.ceil(exact) if config.rounding == "ceil" else math.floor(exact)
        out.append(max(min(wanted, available), 1 if available else 0))
    return out


def check_invariants(strategy: str | type[Reducer], max_examples: int | None = None) -> None:
    """Every example, at its own budget or a random one, on random grids: ``check_reduction``, and
    a freshly built reducer on freshly made tokens gives the same result (determinism)."""
    cls = strategy_class(strategy)

    @_at_examples_and_random_budgets(cls, max_examples)
    def run(example: dict[str, Any], ratio: float | None, grid: Grid) -> None:
        reducer = build_example(cls, example, ratio)
        tokens = grid.tokens(reducer)
        first = reducer(tokens)
        check_reduction(reducer, tokens, first)
        again = build_example(cls, example, ratio)
        second = again(grid.tokens(again))
        assert torch.equal(first.keep_mask, second.keep_mask), "not deterministic"
        assert torch.equal(first.roles, second.roles), "roles not deterministic"
        for name in ("features", "extra"):
            a, b = getattr(first, name), getattr(second, name)
            assert (a is None) == (b is None) and (a is None or torch.equal(a, b)), f"{name} not deterministic"

    run()


def check_batch_consistency(strategy: str | type[Reducer], max_examples: int | None = None) -> None:
    """A batch gives every sample what it gets alone (kept set, roles, merged and new tokens)."""
    cls = strategy_class(strategy)

    @_at_examples_and_random_budgets(cls, max_examples)
    def run(example: dict[str, Any], ratio: float | None, grid: Grid) -> None:
        reducer = build_example(cls, example, ratio)
        tokens = grid.tokens(reducer)
        batched = reducer(tokens)
        for i in range(tokens.batch_size):
            alone = reducer(tokens.sample(i))
            assert torch.equal(batched.keep_mask[i], alone.keep_mask[0]), f"sample {i} keeps another set alone"
            assert torch.equal(batched.roles[i], alone.roles[0]), f"sample {i} has other roles alone"
            if batched.features is not None:
                kept = batched.keep_mask[i]
                torch.testing.assert_close(batched.features[i][kept], alone.features[0][kept])
            if batched.extra is not None:
                torch.testing.assert_close(batched.extra[i], alone.extra[0])

    run()


def check_ratio_one(strategy: str | type[Reducer], max_examples: int | None = None) -> None:
    """``at_budget(1.0)`` of every example keeps every valid token (skipped for a pipeline: its
    budget is its last step's, earlier steps keep their own)."""
    hypothesis = _hypothesis()
    st = hypothesis.strategies
    cls = strategy_class(strategy)
    if issubclass(cls, tr.Pipeline):
        return

    @_settings(max_examples)
    @hypothesis.given(example=st.sampled_from(_examples(cls)), grid=grids())
    def run(example: dict[str, Any], grid: Grid) -> None:
        reducer = build_example(cls, example, 1.0)
        tokens = grid.tokens(reducer)
        reduction = reducer(tokens)
        assert torch.equal(reduction.keep_mask, tokens.flat_valid()), "ratio 1 dropped a token"

    run()


def check_exact_budget(strategy: str | type[Reducer], max_examples: int | None = None) -> None:
    """At random ratios and counts, a ``BudgetedReducer`` hands on exactly its budget
    (``check_reduction`` compares with ``expected_counts``); other strategies are skipped."""
    cls = strategy_class(strategy)
    if not (issubclass(cls, BudgetedReducer) and _budgeted(cls)):
        return
    hypothesis = _hypothesis()
    st = hypothesis.strategies

    @_settings(max_examples)
    @hypothesis.given(example=st.sampled_from(_examples(cls)), ratio=ratios(), count=st.none() | st.integers(1, 40),
                      grid=grids())
    def run(example: dict[str, Any], ratio: float, count: int | None, grid: Grid) -> None:
        budget = {"ratio": ratio} if count is None else {"count": count}
        reducer = cls(cls.with_budget(example, **budget))
        tokens = grid.tokens(reducer)
        check_reduction(reducer, tokens, reducer(tokens))

    run()


def check_degenerate_grids(strategy: str | type[Reducer]) -> None:
    """T = 1, H = W = 1 and a single token work at every example."""
    cls = strategy_class(strategy)
    for example in _examples(cls):
        reducer = build_example(cls, example)
        for shape in ((2, 1, 3, 4, 5), (2, 5, 1, 1, 3), (1, 1, 1, 1, 1)):
            tokens = make_tokens(reducer, make_features(*shape, seed=3))
            check_reduction(reducer, tokens, reducer(tokens))


def check_reduces_something(strategy: str | type[Reducer]) -> None:
    """Every example (but a strategy's ratio-1 control) hands on fewer tokens than it gets on at
    least one of the suite's grids: settings that keep everything would test nothing."""
    cls = strategy_class(strategy)
    if not cls.budgeted:
        return
    for example in _examples(cls):
        reducer = build_example(cls, example)
        outcomes = []
        for seed, shape in enumerate(SUITE_SHAPES):
            tokens = Grid(shape, seed=seed, static=0.5, padded=bool(seed % 2)).tokens(reducer)
            reduction = reducer(tokens)
            outcomes.append((reduction.output_counts() < tokens.valid_counts()).any())
        assert any(outcomes), (f"{cls.registered_name} at {example} keeps every token of the suite's grids "
                               f"{SUITE_SHAPES}: choose example settings that reduce them")


def check_missing_signals(strategy: str | type[Reducer]) -> None:
    """Without a signal it requires, every example raises ``MissingSignalError`` naming the strategy
    and each missing signal (never a crash deep inside torch)."""
    cls = strategy_class(strategy)
    for example in _examples(cls):
        reducer = build_example(cls, example)
        required = reducer.requires - {Signal.FEATURES}
        if not required:
            continue
        try:
            reducer(tr.VisualTokens(make_features(1, 2, 2, 2, 4)))
        except tr.MissingSignalError as error:
            text = str(error)
            assert (reducer.registered_name or type(reducer).__name__) in text, f"the error does not name it: {text}"
            assert all(signal.value in text for signal in required), f"the error does not name {required}: {text}"
        else:
            raise AssertionError(f"{cls.registered_name} at {example} ran without its signals {sorted(required)}")


def check_round_trip(strategy: str | type[Reducer]) -> None:
    """Every example's config survives ``to_dict`` -> JSON -> ``tr.build`` unchanged."""
    cls = strategy_class(strategy)
    for example in _examples(cls):
        config = build_example(cls, example).config
        again = tr.build(json.loads(json.dumps(config.to_dict()))).config
        assert again == config, f"{cls.registered_name}: {config} does not round-trip ({again})"


def check_strategy(strategy: str | type[Reducer], max_examples: int | None = None) -> None:
    """Run every check of the suite on one strategy (a registered name or a ``Reducer`` class)."""
    check_round_trip(strategy)
    check_missing_signals(strategy)
    check_reduces_something(strategy)
    check_degenerate_grids(strategy)
    check_invariants(strategy, max_examples)
    check_batch_consistency(strategy, max_examples)
    check_exact_budget(strategy, max_examples)
    check_ratio_one(strategy, max_examples)


__all__ = [
    "KEY_DIM",
    "NUM_LAYERS",
    "Grid",
    "build_example",
    "check_batch_consistency",
    "check_degenerate_grids",
    "check_exact_budget",
    "check_invariants",
    "check_missing_signals",
    "check_ratio_one",
    "check_reduces_something",
    "check_reduction",
    "check_round_trip",
    "check_strategy",
    "expected_counts",
    "grids",
    "make_features",
    "make_tokens",
    "make_valid",
    "ratios",
    "signals_of",
    "strategy_class",
]
