"""Selection overhead: how long each strategy (and each community detector) takes to decide.

Inputs are seeded random tensors of the paper's scale by default: 64 frames of 13x13 tokens
(LLaVA-Video's grid) with d = 3584 (Qwen2-7B's hidden size), plus the signals a strategy
declares (importance ``[B,T,H,W]``, keys ``[B,T,H,W,64]``, embeddings = the features). To give
graph-based strategies realistic structure, each token is its previous frame's token plus a
little noise, so temporal neighbours are similar as in real video. Each strategy runs once to warm
up, then ``repeats`` times: wall clock (``seconds``) and the process's CPU time over all threads
(``cpu_seconds``; CPU device only, which depends far less on other work on a shared machine), each
kept as all its repeats (min / median / max).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import tokenreduce as tr
from tokenreduce.bench.progress import Progress
from tokenreduce.bench.spread import Spread
from tokenreduce.compare import build_at_ratio, label_of, required_signals
from tokenreduce.interfaces import Reducer, Signal

KEY_DIM = 64
TEMPORAL_NOISE = 0.3  # relative size of the change from one frame to the next

Spec = str | Path | dict[str, Any]


@dataclass(frozen=True)
class SelectionRun:
    """One strategy's selection time at one scale."""

    strategy: str
    config: dict[str, Any]
    community: str | None
    device: str
    tokens: int
    dim: int
    kept: int
    seconds: Spread
    cpu_seconds: Spread | None

    @property
    def label(self) -> str:
        return self.strategy if self.community is None else f"{self.strategy} + {self.community}"

    def as_dict(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "config": self.config, "community": self.community,
                "device": self.device, "tokens": self.tokens, "dim": self.dim, "kept": self.kept,
                "seconds": self.seconds.as_dict(),
                "cpu_seconds": None if self.cpu_seconds is None else self.cpu_seconds.as_dict()}


def paper_tokens(frames: int, height: int, width: int, dim: int, device: str, seed: int = 0) -> tr.VisualTokens:
    """Seeded tokens with temporal structure and every signal a strategy may ask for."""
    generator = torch.Generator().manual_seed(seed)
    start = torch.randn(1, 1, height, width, dim, generator=generator)
    steps = torch.randn(1, frames, height, width, dim, generator=generator) * TEMPORAL_NOISE
    steps[:, 0] = 0
    features = (start + steps.cumsum(dim=1)).to(device)
    importance = torch.rand(1, frames, height, width, generator=generator).to(device)
    keys = torch.randn(1, frames, height, width, KEY_DIM, generator=generator).to(device)
    return tr.VisualTokens(features, importance=importance, signals={"keys": keys, "embeddings": features},
                           num_layers=28)


def _tokens_for(reducer: Reducer, tokens: tr.VisualTokens) -> tr.VisualTokens:
    needs = required_signals(reducer)
    signals = {name: value for name, value in tokens.signals.items() if Signal(name) in needs}
    return tokens.replace(importance=tokens.importance if Signal.IMPORTANCE in needs else None, signals=signals)


def time_reducer(reducer: Reducer, tokens: tr.VisualTokens, repeats: int) -> tuple[Spread, Spread | None, int]:
    """Wall and CPU seconds (CPU: None on CUDA) of ``repeats`` calls of ``reducer(tokens)`` after a
    warm-up, and the kept count."""
    tokens = _tokens_for(reducer, tokens)
    on_cuda = tokens.device.type == "cuda"
    sync = torch.cuda.synchronize if on_cuda else (lambda: None)
    reduction = reducer(tokens)
    wall, cpu = [], []
    for _ in range(repeats):
        sync()
        start, cpu_start = time.perf_counter(), time.process_time()
        reducer(tokens)
        sync()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - cpu_start)
    extra = int(reduction.extra_counts()[0])
    return Spread.of(wall), None if on_cuda else Spread.of(cpu), int(reduction.kept_counts()[0]) + extra


def community_variants(specs: Sequence[Spec]) -> list[tuple[Spec, str]]:
    """``(spec, detector)`` for every strategy whose config has a ``community`` field × every detector
    it can take (ST-SimDiff's reference variant refuses any but its own connected components)."""
    variants = []
    for spec in specs:
        config = tr.build(spec).config
        if "community" in config.field_names():
            variants += [(spec, detector) for detector in tr.COMMUNITY.names() if _takes(config, detector)]
    return variants


def _takes(config: tr.Config, detector: str) -> bool:
    try:
        config.replace(community=detector)
    except tr.ConfigError:
        return False
    return True


def selection_overhead(*, strategies: Sequence[Spec], ratio: float, frames: int, height: int, width: int, dim: int,
                       repeats: int, device: str = "cpu", progress: bool = False,
                       on_run: Callable[[SelectionRun], None] = lambda run: None,
                       on_note: Callable[[str], None] = lambda note: None) -> tuple[list[SelectionRun], list[str]]:
    """Selection time of every strategy, and of every community detector inside the strategies
    that have one; ``on_run`` / ``on_note`` see each result as it comes. Returns the runs and the
    notes about what could not run."""
    tokens = paper_tokens(frames, height, width, dim, device)
    plan: list[tuple[Spec, str | None]] = [(spec, None) for spec in strategies]
    plan += community_variants(strategies)
    runs, notes = [], []
    with Progress("selection", len(plan), enabled=progress) as bar:
        for spec, detector in plan:
            try:
                reducer = build_at_ratio(spec, ratio)
                if detector is not None:
                    reducer = tr.build(reducer.config.replace(community=detector))
                label = label_of(spec, reducer)
                bar.now(label + (f" + {detector}" if detector else ""))
                seconds, cpu_seconds, kept = time_reducer(reducer, tokens, repeats)
            except (tr.MissingDependencyError, tr.MissingSignalError) as exc:
                notes.append(f"skipped {spec}{f' with {detector}' if detector else ''}: {exc}")
                on_note(notes[-1])
                bar.advance()
                continue
            runs.append(SelectionRun(label, reducer.config.to_dict(), detector, device, tokens.num_tokens, dim,
                                     kept, seconds, cpu_seconds))
            on_run(runs[-1])
            bar.advance()
    return runs, notes
