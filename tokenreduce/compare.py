"""Run several registered strategies on one encoded video and summarise what each kept.

Used by ``tokenreduce demo`` and ``tokenreduce visualize``. Every strategy gets the signals it
declares in ``requires`` (over all its steps); signals a weight-free run cannot produce come from
the encoder's documented proxies (``EncodedVideo.proxies``) and are listed in the table.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tokenreduce as tr
from tokenreduce.adapters.record import VideoRecord
from tokenreduce.encoders import EncodedVideo
from tokenreduce.errors import ConfigError
from tokenreduce.interfaces import Reducer, Signal
from tokenreduce.pipeline import run_in_order
from tokenreduce.tokens import Reduction, VisualTokens

# Not reductions worth comparing on their own: the identity and the composition container.
NOT_COMPARED = frozenset({"keep_all", "pipeline"})


@dataclass(frozen=True)
class StrategyRun:
    """One strategy's result on the video."""

    label: str
    reduction: Reduction
    seconds: float
    proxies: tuple[str, ...]
    # tokens handed on by the steps the budget measures (``Reducer.budget_steps``) where the strategy
    # refines them later with a budget of its own (FlashVID, HoliTom deep in the LLM); None otherwise
    budgeted: int | None = None

    @property
    def kept(self) -> int:
        """Tokens handed on: kept grid tokens plus new tokens (VisionZip's contextual ones)."""
        return int(self.reduction.output_counts()[0])

    @property
    def total(self) -> int:
        return int(self.reduction.valid[0].sum())

    def role_count(self, role: str) -> int:
        return int(self.reduction.stats.roles.get(role, [0])[0])

    @classmethod
    def from_record(cls, label: str, video: VideoRecord) -> StrategyRun:
        """A video of a model run (``session.last.videos[i]``, or a loaded report's): what the model's
        own signals kept, with its roles and the time its steps took; no proxies."""
        return cls(label, video.reduction(), video.seconds, ())


def default_strategies() -> list[str]:
    """Every registered strategy that is a reduction of its own (not ``keep_all``/``pipeline``)."""
    return [name for name in tr.STRATEGIES.names() if name not in NOT_COMPARED]


DEFAULT_RATIO = 0.3  # the budget of a strategy given by name when no ratio is asked for (the paper's r)


def build_at_ratio(spec: str | Path | dict[str, Any], ratio: float | None) -> Reducer:
    """Build ``spec`` (name, config dict or .json/.yaml path) at budget ``ratio``.

    The strategy's own rule does it (``Reducer.at_budget``: every budget field of the spec is
    replaced by ``ratio``, whatever the strategy's reference budget is). ``ratio=None`` keeps the
    budget a config dict or file states, and gives a bare name ``DEFAULT_RATIO``: a command-line
    ratio overrides a config file only when it is given.
    """
    reducer = tr.build(spec)
    if ratio is None:
        if not (isinstance(spec, str) and not _is_file(spec)):
            return reducer
        ratio = DEFAULT_RATIO
    return tr.build(type(reducer).at_budget(ratio, reducer.config))


def _is_file(spec: str | Path) -> bool:
    return Path(spec).suffix.lower() in (".json", ".yaml", ".yml")


def parse_spec(text: str) -> str | dict[str, Any]:
    """A strategy as a command line gives it: a registered name, a ``.json``/``.yaml`` config file,
    an inline JSON object (``'{"name": "st_simdiff", "variant": "reference"}'``), or a name with
    options (``st_simdiff:variant=reference,tau_sim=0.7``; a value is read as JSON when it parses,
    else as a string). Returns what ``tr.build`` takes."""
    text = text.strip()
    if text.startswith("{"):
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"strategy {text!r} is not a valid JSON object: {exc}") from None
        if not isinstance(spec, dict) or "name" not in spec:
            raise ConfigError(f"a strategy given as JSON needs a \"name\", got {text!r}")
        return spec
    name, colon, options = text.partition(":")
    if not colon or Path(text).suffix.lower() in (".json", ".yaml", ".yml"):
        return text
    spec: dict[str, Any] = {"name": name.strip()}
    for option in filter(None, (o.strip() for o in options.split(","))):
        key, equals, value = option.partition("=")
        if not equals or not key.strip():
            raise ConfigError(f"strategy option {option!r} in {text!r} is not key=value")
        try:
            spec[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            spec[key.strip()] = value.strip()
    return spec


def label_of(spec: str | Path | dict[str, Any], reducer: Reducer) -> str:
    """How tables and plots name a strategy: its name, the file's stem, or the name with the
    options given (``st_simdiff(variant=reference)``)."""
    if isinstance(spec, dict):
        options = ", ".join(f"{k}={v}" for k, v in spec.items() if k != "name")
        return f"{reducer.config.name}({options})" if options else reducer.config.name
    if isinstance(spec, (str, Path)) and _is_file(spec):
        return f"{Path(spec).stem} ({reducer.config.name})"
    return reducer.config.name


def required_signals(reducer: Reducer) -> frozenset[Signal]:
    return frozenset().union(reducer.requires, *(step.requires for step in reducer.steps()))


def tokens_for(reducer: Reducer, encoded: EncodedVideo) -> tuple[VisualTokens, tuple[str, ...]]:
    """The ``VisualTokens`` ``reducer`` needs from ``encoded``, and the proxies used (``"importance=..."``)."""
    needs = required_signals(reducer)
    signals = {}
    proxies = []
    if Signal.IMPORTANCE in needs:
        proxies.append(f"importance={encoded.proxies.get('importance', 'given')}")
    if Signal.KEYS in needs:
        signals["keys"] = encoded.features
        proxies.append(f"keys={encoded.proxies.get('keys', 'features')}")
    if Signal.EMBEDDINGS in needs:
        signals["embeddings"] = encoded.features
    tokens = VisualTokens(
        encoded.features,
        importance=encoded.importance if Signal.IMPORTANCE in needs else None,
        signals=signals,
        num_layers=encoded.num_layers,
    )
    return tokens, tuple(proxies)


TIMED_RUNS = 3


def run_strategy(spec: str | Path | dict[str, Any], encoded: EncodedVideo, ratio: float | None) -> StrategyRun:
    """Build ``spec`` at ``ratio`` (``build_at_ratio``) and run it on ``encoded``; the time is the best
    of ``TIMED_RUNS`` calls after a warm-up."""
    reducer = build_at_ratio(spec, ratio)
    tokens, proxies = tokens_for(reducer, encoded)
    reduction = reducer(tokens)
    seconds = float("inf")
    for _ in range(TIMED_RUNS):
        start = time.perf_counter()
        reducer(tokens)
        seconds = min(seconds, time.perf_counter() - start)
    budget_steps = reducer.budget_steps()
    budgeted = (int(run_in_order(budget_steps, tokens).output_counts()[0])
                if len(budget_steps) < len(reducer.steps()) else None)
    return StrategyRun(label_of(spec, reducer), reduction, seconds, proxies, budgeted)


def run_strategies(specs: Sequence[str | Path | dict[str, Any]], encoded: EncodedVideo, ratio: float | None,
                   ) -> tuple[list[StrategyRun], list[tuple[str, str]]]:
    """Run every spec; returns the runs and ``(spec, reason)`` for those that could not run here
    (an optional backend missing, a signal no proxy exists for)."""
    runs, skipped = [], []
    for spec in specs:
        try:
            runs.append(run_strategy(spec, encoded, ratio))
        except (tr.MissingDependencyError, tr.MissingSignalError) as exc:
            skipped.append((str(spec), str(exc)))
    return runs, skipped


def budget_notes(runs: Sequence[StrategyRun]) -> list[str]:
    """A line for each run whose budget measures fewer steps than it ran: what entered at the
    budget and what its later step, with a budget of its own, left."""
    return [f"{run.label}: {run.budgeted} tokens ({100 * run.budgeted / run.total:.1f} %) reach the LLM at the "
            f"budget; {run.kept} after its deeper step, which has a budget of its own"
            for run in runs if run.budgeted is not None]


def format_table(runs: Sequence[StrategyRun]) -> str:
    """A plain-text table: strategy, kept, representatives, events, selection time, proxies."""
    header = ("strategy", "kept", "kept %", "representatives", "events", "time ms", "proxy signals")
    rows = [header] + [
        (run.label, str(run.kept), f"{100 * run.kept / run.total:.1f}", str(run.role_count("REPRESENTATIVE")),
         str(run.role_count("EVENT")), f"{1000 * run.seconds:.1f}", ", ".join(run.proxies) or "-")
        for run in runs
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i in (0, 6) else cell.rjust(w) for i, (cell, w) in
                       enumerate(zip(row, widths))).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
