"""Selection overhead: how long each strategy (and each community detector) takes to decide.

Inputs are seeded random tensors of the paper's scale by default: 64 frames of 13x13 tokens
(LLaVA-Video's grid) with d = 3584 (Qwen2-7B's hidden size), plus the signals a strategy
declares (importance ``[B,T,H,W]``, keys ``[B,T,H,W,64]``, embeddings = the features). To give
graph-based strategies realistic structure, each token is its previous frame's token plus a
little noise, so temporal neighbours are similar as in real video. Times are the best of
``repeats`` runs after one warm-up, on the given device: wall clock (``seconds``) and the
process's CPU time over all threads (``cpu_seconds``; CPU device only), which depends far less on
other work on a shared machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass

import torch

import tokenreduce as tr
from tokenreduce.compare import build_at_ratio, required_signals
from tokenreduce.interfaces import Reducer, Signal

KEY_DIM = 64
TEMPORAL_NOISE = 0.3  # relative size of the change from one frame to the next


@dataclass(frozen=True)
class SelectionRun:
    """One strategy's selection time at one scale."""

    strategy: str
    community: str | None
    device: str
    tokens: int
    dim: int
    kept: int
    seconds: float
    cpu_seconds: float | None

    def as_dict(self) -> dict:
        return asdict(self)


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


def time_reducer(reducer: Reducer, tokens: tr.VisualTokens, repeats: int) -> tuple[float, float | None, int]:
    """Best-of-``repeats`` wall and CPU seconds (CPU: None on CUDA) of ``reducer(tokens)`` after a
    warm-up, and the kept count."""
    tokens = _tokens_for(reducer, tokens)
    on_cuda = tokens.device.type == "cuda"
    sync = torch.cuda.synchronize if on_cuda else (lambda: None)
    reduction = reducer(tokens)
    wall = cpu = float("inf")
    for _ in range(repeats):
        sync()
        start, cpu_start = time.perf_counter(), time.process_time()
        reducer(tokens)
        sync()
        wall = min(wall, time.perf_counter() - start)
        cpu = min(cpu, time.process_time() - cpu_start)
    extra = 0 if reduction.extra is None else int(reduction.extra.shape[1])
    return wall, None if on_cuda else cpu, int(reduction.kept_counts()[0]) + extra


def community_variants(strategies: Sequence[str]) -> list[tuple[str, str]]:
    """``(strategy, detector)`` for every strategy whose config has a ``community`` field × every detector."""
    variants = []
    for name in strategies:
        if "community" in tr.build(name).config.field_names():
            variants += [(name, detector) for detector in tr.COMMUNITY.names()]
    return variants


def selection_overhead(*, strategies: Sequence[str], ratio: float, frames: int, height: int, width: int, dim: int,
                       repeats: int, device: str = "cpu",
                       progress: Callable[[Sequence], Iterator] = iter) -> tuple[list[SelectionRun], list[str]]:
    """Selection time of every strategy, and of every community detector inside the strategies
    that have one; returns the runs and notes about what could not run."""
    tokens = paper_tokens(frames, height, width, dim, device)
    plan: list[tuple[str, str | None]] = [(name, None) for name in strategies]
    plan += community_variants(strategies)
    runs, notes = [], []
    for name, detector in progress(plan):
        try:
            reducer = build_at_ratio(name, ratio)
            if detector is not None:
                reducer = tr.build(reducer.config.replace(community=detector))
            seconds, cpu_seconds, kept = time_reducer(reducer, tokens, repeats)
        except (tr.MissingDependencyError, tr.MissingSignalError) as exc:
            notes.append(f"skipped {name}{f' with {detector}' if detector else ''}: {exc}")
            continue
        runs.append(SelectionRun(name, detector, device, tokens.num_tokens, dim, kept, seconds, cpu_seconds))
    return runs, notes
