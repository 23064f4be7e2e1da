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
from tokenreduce.budget import scaled_count
from tokenreduce.encoders import EncodedVideo
from tokenreduce.errors import ConfigError
from tokenreduce.interfaces import Reducer, Signal
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

    @property
    def kept(self) -> int:
        """Tokens handed on: kept grid tokens plus new tokens (VisionZip's contextual ones)."""
        extra = 0 if self.reduction.extra is None else int(self.reduction.extra.shape[1])
        return int(self.reduction.kept_counts()[0]) + extra

    @property
    def total(self) -> int:
        return int(self.reduction.valid[0].sum())

    def role_count(self, role: str) -> int:
        return int(self.reduction.stats.roles.get(role, [0])[0])


def default_strategies() -> list[str]:
    """Every registered strategy that is a reduction of its own (not ``keep_all``/``pipeline``)."""
    return [name for name in tr.STRATEGIES.names() if name not in NOT_COMPARED]


CONTEXTUAL_SHARE = 10 / 64  # VisionZip's presets (54+10, 108+20, 162+30) give 1/6.4 to contextual tokens


def build_at_ratio(spec: str | Path | dict[str, Any], ratio: float, tokens_per_frame: int | None = None) -> Reducer:
    """Build ``spec`` (name, config dict or .json/.yaml path) with its budget set to ``ratio``.

    The budget field is ``ratio`` when the config has one, else ``cost`` (the FLOP-style budget of
    FrameFusion / ST-SimDiff's reference variant). Per-frame counts ``dominant`` + ``contextual``
    (VisionZip) become ``ceil(ratio * tokens_per_frame)`` tokens per frame split in the presets'
    proportion, with no CLS token (the grid has none). A config with none of these (an adaptive
    count such as PruMerge+'s) is built as given.
    """
    reducer = tr.build(spec)
    fields = reducer.config.field_names()
    changes: dict[str, Any] = {}
    if "ratio" in fields:
        changes = {"ratio": ratio, **({"count": None} if "count" in fields else {})}
    elif "cost" in fields:
        changes = {"cost": ratio}
    elif {"dominant", "contextual"} <= set(fields) and tokens_per_frame is not None:
        keep = scaled_count(tokens_per_frame, ratio)
        contextual = min(round(keep * CONTEXTUAL_SHARE), keep - 1)
        changes = {"dominant": keep - contextual, "contextual": contextual}
        changes.update({k: v for k, v in (("preset", None), ("cls_token", False)) if k in fields})
    return tr.build(reducer.config.replace(**changes)) if changes else reducer


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
    if isinstance(spec, (str, Path)) and Path(spec).suffix.lower() in (".json", ".yaml", ".yml"):
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


def run_strategy(spec: str | Path | dict[str, Any], encoded: EncodedVideo, ratio: float) -> StrategyRun:
    """Build ``spec`` at ``ratio`` and run it on ``encoded``; the time is the best of ``TIMED_RUNS``
    calls after a warm-up."""
    _, h, w = encoded.grid
    reducer = build_at_ratio(spec, ratio, tokens_per_frame=h * w)
    tokens, proxies = tokens_for(reducer, encoded)
    reduction = reducer(tokens)
    seconds = float("inf")
    for _ in range(TIMED_RUNS):
        start = time.perf_counter()
        reducer(tokens)
        seconds = min(seconds, time.perf_counter() - start)
    return StrategyRun(label_of(spec, reducer), reduction, seconds, proxies)


def run_strategies(specs: Sequence[str | Path | dict[str, Any]], encoded: EncodedVideo, ratio: float,
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
