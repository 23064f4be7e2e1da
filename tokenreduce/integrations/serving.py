"""A tokenreduce strategy inside a serving engine: which strategies can run there, and running one.

A serving engine (vLLM) reduces a video's tokens between the vision encoder and the language
model, and fixes *how many* it keeps before the encoder runs, when the prompt's placeholders are
sized. So only pre-LLM strategies that read the visual features alone can run there, and each one
must keep exactly the engine's count:

- a budgeted strategy (``uniform``, ``random``, ``evs``, ``vidcom2``, ``st_simdiff_select``, ``fit_budget`` …) is
  built with ``count=`` that number for each video (the budget language: any of its budget fields,
  ``ratio`` or an alternative such as ``prune_ratio``, in the user's config would contradict the
  engine's and is refused);
- a content-driven strategy (``keep_all``, ``st_simdiff_reference_stage1``, a pipeline) runs inside
  ``fit_budget``, which trims or fills its kept set to the count by even spacing.

``ServingStrategy.select`` runs the reducer on one video's LLM-input embeddings through the same
steps ``tr.apply`` runs in transformers (``run_steps``), so both engines keep the same set for the
same features. Nothing here knows an engine; ``vllm_serving`` is the vLLM side.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tokenreduce.adapters.layout import SequenceLayout
from tokenreduce.adapters.steps import VideoGroup, run_steps
from tokenreduce.config import Config, build
from tokenreduce.config_files import load_config
from tokenreduce.errors import ServingError, TokenReduceError
from tokenreduce.interfaces import BudgetConfig, BudgetedReducer, Reducer, Signal, Stage
from tokenreduce.registry import STRATEGIES
from tokenreduce.strategies.fit_budget import FitBudget

FEATURE_SIGNALS = frozenset({Signal.FEATURES, Signal.EMBEDDINGS})


def parse_spec(spec: str, source: str) -> dict[str, Any]:
    """The config dict a user wrote as a registered name, a JSON object or a .json/.yaml file path."""
    text = spec.strip()
    if not text:
        raise ServingError(f"{source} is empty; give a strategy name (e.g. uniform), a JSON object or a "
                           "config file path")
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ServingError(f"{source} is not valid JSON: {exc}") from None
    elif text.lower().endswith((".json", ".yaml", ".yml")) or "/" in text:
        data = load_config(text)
    else:
        data = {"name": text}
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        raise ServingError(f"{source} must name a strategy: a JSON object needs a \"name\" key, got {text!r}")
    return data


def unservable_reason(reducer: Reducer) -> str | None:
    """Why ``reducer`` cannot run between a serving engine's vision encoder and its LLM, or None."""
    for step in reducer.steps():
        step_name = step.registered_name or type(step).__name__
        what = step_name if step is reducer else f"its step {step_name}"
        if step.stage is Stage.IN_LLM:
            return (f"{what} runs inside the language model (before decoder layer {step.layer}, on its "
                    "attention); run it in transformers with tr.apply")
        if step.stage is Stage.ENCODER:
            return f"{what} reads the vision encoder's attention, which a serving engine does not expose"
        needs = step.requires - FEATURE_SIGNALS
        if needs:
            return (f"{what} needs {', '.join(sorted(s.value for s in needs))}, which only a model run by "
                    "tr.apply provides")
    return None


def servable_strategies() -> list[str]:
    """Registered strategies that can run in a serving engine with their default settings."""
    names = []
    for name in STRATEGIES.names():
        try:
            reducer = build(name)
        except TokenReduceError:
            continue
        if unservable_reason(reducer) is None:
            names.append(name)
    return names


@dataclass(frozen=True)
class VideoSelection:
    """What a strategy kept of one video: ``keep`` bool ``[N]``; ``features`` ``[N, D]`` holds merged
    features at the kept rows when the strategy merges (else None); ``seconds`` the selection time."""

    keep: torch.Tensor
    features: torch.Tensor | None
    seconds: float


def budget_fields(config: Config) -> tuple[str, ...]:
    """The fields of ``config`` that state a budget (``ratio``, ``count`` and the strategy's
    alternatives, e.g. ``prune_ratio``): the engine's count replaces them all."""
    return type(config).budget_fields() if isinstance(config, BudgetConfig) else ()


@dataclass
class ServingStrategy:
    """The user's strategy, checked for serving; builds the reducer that keeps a given count.

    ``source`` names where the choice came from (an environment variable, a file) in every error.
    """

    config: Config
    budgeted: bool
    source: str = "strategy"
    _reducers: dict[int, Reducer] = field(default_factory=dict, repr=False)

    @classmethod
    def from_spec(cls, spec: str, source: str = "strategy") -> ServingStrategy:
        """Parse, build and check a strategy; raise ``ServingError`` (or the config error) naming ``source``."""
        data = parse_spec(spec, source)
        try:
            reducer = build(data)
        except TokenReduceError as exc:
            raise type(exc)(f"{source}: {exc}") from None
        reason = unservable_reason(reducer)
        if reason is not None:
            raise ServingError(f"{source}: {data['name']} cannot run in a serving engine: {reason}. Strategies "
                               f"that can: {', '.join(servable_strategies())}")
        budgeted = isinstance(reducer, BudgetedReducer) and "count" in reducer.config.field_names()
        given = [k for k in budget_fields(reducer.config) if data.get(k) is not None]
        if budgeted and given:
            raise ServingError(f"{source}: {data['name']} keeps the count the engine reserves per video (vLLM: "
                               f"--video-pruning-rate); remove {', '.join(given)} from its config")
        return cls(reducer.config, budgeted, source)

    def reducer_for(self, count: int) -> Reducer:
        """The reducer that keeps exactly ``count`` tokens of a video (cached per count)."""
        if count not in self._reducers:
            if self.budgeted:
                cleared = {k: None for k in budget_fields(self.config) if k != "count"}
                self._reducers[count] = self.config.replace(count=count, **cleared).build()
            else:
                self._reducers[count] = FitBudget(strategy=self.config, count=count)
        return self._reducers[count]

    def select(self, embeds: torch.Tensor, grid: tuple[int, int, int], count: int,
               num_layers: int | None = None) -> VideoSelection:
        """Run the strategy on one video's LLM-input embeddings ``[T*H*W, D]`` (grid order) and keep
        exactly ``count`` of them; ``num_layers`` is the LLM's depth (cost budgets)."""
        t, h, w = grid
        n = t * h * w
        if embeds.ndim != 2 or embeds.shape[0] != n:
            raise ValueError(f"embeds must be [T*H*W, D] = [{n}, D] for grid {grid}, got {tuple(embeds.shape)}")
        if not 1 <= count <= n:
            raise ValueError(f"count must be in [1, {n}] for grid {grid}, got {count}")
        start = time.perf_counter()
        reducer = self.reducer_for(count)
        hidden = embeds.unsqueeze(0)
        positions = torch.arange(n, device=embeds.device).unsqueeze(0)
        group = VideoGroup(tuple(grid), [0], torch.zeros(1, dtype=torch.long, device=embeds.device), positions,
                           torch.ones(1, n, dtype=torch.bool, device=embeds.device), embeddings=hidden)
        layout = SequenceLayout.identity(1, n, None, embeds.device)
        edit = run_steps([(step, None) for step in reducer.steps()], [group], hidden, layout,
                         num_layers=num_layers)
        if edit.extras:
            raise ServingError(f"{self.source}: {self.config.name} added new tokens (Reduction.extra); a serving "
                              "engine has no prompt slots for them")
        keep = edit.keep[0]
        kept = int(keep.sum())
        if kept != count:
            raise RuntimeError(f"{self.source}: {self.config.name} kept {kept} tokens of a {grid} video, the "
                               f"engine reserved {count}")
        features = edit.apply_features(hidden, layout)[0] if edit.values else None
        return VideoSelection(keep, features, time.perf_counter() - start)

    def record(self, path: str | Path, grid: tuple[int, int, int], count: int, selection: VideoSelection) -> None:
        """Append one JSON line: the reducer that ran (with its count), the video's grid, the count, the
        kept flat indices and the selection time."""
        line = {"strategy": self.reducer_for(count).config.to_dict(), "grid": list(grid), "count": count,
                "kept": selection.keep.nonzero().flatten().tolist(), "seconds": selection.seconds}
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps(line) + "\n")
