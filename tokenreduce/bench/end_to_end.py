"""End-to-end cost of a video prompt: time to first token, prefill time and peak memory, full vs reduced.

For every frame count the full model and each (strategy, ratio) run on the same prompt in the same
process, so the ratios compare like with like. Per run:

- ``ttft_s``: one forward pass over the prompt with the KV cache on and the first token picked
  (vision tower + selection + LLM prefill + LM head on the last position), wall clock, as all
  ``repeats`` (min / median / max) after a warm-up pass of the full model and one of the
  configuration (the memory pass below). The repeats of
  all configurations of one frame count are interleaved (full, strategy 1, strategy 2, ..., full,
  ...), so that other work on the machine disturbs them alike.
- ``vision_s``: the part of it spent in the vision tower (forward hooks); ``prefill_s`` is
  ``ttft_s - vision_s``: the selection overhead plus the LLM prefill, which reduction shrinks.
- ``ttft_cpu_s`` / ``prefill_cpu_s``: the same in CPU time of the process (all its threads,
  ``time.process_time``), best of the same runs; on a shared CPU machine it depends far less on
  other processes than wall-clock time does.
- ``peak_bytes``: peak activation memory of the language model: the highest amount of tensor
  memory allocated while the language model's forward runs (pre-LLM selection, decoder layers,
  KV cache) above what was allocated when it started; weights, inputs and the vision tower's own
  activations are excluded. On CUDA it is ``torch.cuda.max_memory_allocated`` over that window;
  on CPU the running sum of the PyTorch profiler's allocation/free events (``profile_memory=True``)
  inside a ``record_function`` range around the forward, in the untimed warm-up pass (what native
  code writes to stderr during that pass, the profiler's own lines, is silenced; the timed passes
  run the same forward unsilenced).
- ``kept_tokens``: visual tokens in the last decoder layer's KV cache.
- ``logits`` (kept in memory, not in the JSON): the first token's logits, for ``--check-logits``.

Results come out as they are measured: ``measure`` yields the runs of a frame count after each
round of repeats, so that a caller can write them before the next one starts.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

import tokenreduce as tr
from tokenreduce.adapters import hf
from tokenreduce.adapters.chunked_prefill import DEFAULT_PREFILL_CHUNK
from tokenreduce.bench.model import TEXT_TOKENS, VideoPrompt, build_model, video_prompt
from tokenreduce.bench.progress import Progress
from tokenreduce.bench.selection import Spec
from tokenreduce.bench.spread import Spread
from tokenreduce.compare import build_at_ratio, label_of
from tokenreduce.interfaces import Reducer

T = TypeVar("T")


@dataclass(frozen=True)
class PrefillRun:
    """One measured configuration (``strategy == "full"`` is the unreduced model)."""

    frames: int
    strategy: str
    ratio: float
    config: dict[str, Any] | None
    visual_tokens: int
    kept_tokens: int
    ttft_s: Spread | None  # timings are None until the first timed repeat has run
    vision_s: Spread | None
    prefill_s: Spread | None
    ttft_cpu_s: Spread | None
    prefill_cpu_s: Spread | None
    peak_bytes: int
    logits: torch.Tensor | None = None

    @property
    def label(self) -> str:
        return "full" if self.strategy == "full" else f"{self.strategy} r={self.ratio:g}"

    @property
    def repeats(self) -> int:
        return 0 if self.ttft_s is None else len(self.ttft_s.values)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"frames": self.frames, "strategy": self.strategy, "ratio": self.ratio,
                               "config": self.config, "visual_tokens": self.visual_tokens,
                               "kept_tokens": self.kept_tokens, "peak_bytes": self.peak_bytes,
                               "repeats": self.repeats}
        for name in ("ttft_s", "vision_s", "prefill_s", "ttft_cpu_s", "prefill_cpu_s"):
            value = getattr(self, name)
            out[name] = None if value is None else value.as_dict()
        return out


@dataclass(frozen=True)
class Config:
    """One configuration to measure: a label, its keep ratio, the reducer (``None``: full model)."""

    label: str
    ratio: float
    reducer: Reducer | None

    @property
    def title(self) -> str:
        return self.label if self.reducer is None else f"{self.label} r={self.ratio:g}"

    @property
    def name(self) -> str:
        """The registered strategy name (``full`` for the unreduced model)."""
        return "full" if self.reducer is None else (self.reducer.registered_name or self.reducer.config.name)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _VisionTimer:
    """Wall-clock and CPU seconds spent in a module's forward, via forward pre/post hooks."""

    def __init__(self, module: torch.nn.Module, device: torch.device) -> None:
        self.seconds = self.cpu_seconds = 0.0
        self._device = device
        self._start = self._cpu_start = 0.0
        self._handles = [module.register_forward_pre_hook(self._begin), module.register_forward_hook(self._end)]

    def _begin(self, *_: object) -> None:
        _sync(self._device)
        self._start, self._cpu_start = time.perf_counter(), time.process_time()

    def _end(self, *_: object) -> None:
        _sync(self._device)
        self.seconds += time.perf_counter() - self._start
        self.cpu_seconds += time.process_time() - self._cpu_start

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def _prefill(model: torch.nn.Module, prompt: VideoPrompt) -> tuple[int, torch.Tensor]:
    """One prefill forward; returns the visual tokens left in the last layer's KV cache and the
    first token's logits."""
    with torch.inference_mode():
        out = model(**prompt.inputs, use_cache=True, logits_to_keep=1)
        logits = out.logits[:, -1]
        logits.argmax(-1)
    cache = hf.output_cache(out)
    return hf.cache_length(cache, hf.cache_layers(cache) - 1) - TEXT_TOKENS, logits


class _PeakMemory:
    """Peak tensor memory allocated inside a module's forward, above what it started with."""

    RANGE = "tokenreduce.bench.llm"

    def __init__(self, module: torch.nn.Module, device: torch.device) -> None:
        self.device = device
        self.peak = 0
        self._range: torch.profiler.record_function | None = None
        self._before = 0
        self._handles = [module.register_forward_pre_hook(self._begin), module.register_forward_hook(self._end)]

    def _begin(self, *_: object) -> None:
        if self.device.type == "cuda":
            _sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._before = torch.cuda.memory_allocated(self.device)
        else:
            self._range = torch.profiler.record_function(self.RANGE)
            self._range.__enter__()

    def _end(self, *_: object) -> None:
        if self.device.type == "cuda":
            _sync(self.device)
            self.peak = int(torch.cuda.max_memory_allocated(self.device) - self._before)
        elif self._range is not None:
            self._range.__exit__(None, None, None)
            self._range = None

    def measure(self, run: Callable[[], T]) -> tuple[int, T]:
        """``run()``'s result and the peak memory its module forward allocated."""
        if self.device.type == "cuda":
            result = run()
            return self.peak, result
        from torch.profiler import ProfilerActivity, profile

        # the native profiler writes "USDT ... profiler_start" and allocator notes to stderr
        with native_stderr_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            result = run()
        events = list(prof.profiler.kineto_results.events())
        window = next(e for e in events if e.name() == self.RANGE)
        start, end = window.start_ns(), window.start_ns() + window.duration_ns()
        current = peak = 0
        for event in sorted((e for e in events if e.name() == "[memory]"), key=lambda e: e.start_ns()):
            if start <= event.start_ns() <= end:
                current += event.nbytes()
                peak = max(peak, current)
        return peak, result

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Send what native code writes to the process's stderr (file descriptor 2) to /dev/null."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def reduced(model: torch.nn.Module, reducer: Reducer | None,
            prefill_chunk: int | None = DEFAULT_PREFILL_CHUNK) -> Iterator[None]:
    """The model with ``reducer`` applied through its adapter (``tr.apply``, with its
    ``prefill_chunk``), or unchanged for ``None``."""
    if reducer is None:
        yield
        return
    with tr.apply(model, reducer, prefill_chunk=prefill_chunk):
        yield


Timing = tuple[float, float, float, float]  # wall, vision wall, CPU, vision CPU seconds of one prefill


def _timed_prefill(model: torch.nn.Module, prompt: VideoPrompt, timer: _VisionTimer, device: torch.device) -> Timing:
    timer.seconds = timer.cpu_seconds = 0.0
    _sync(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    _prefill(model, prompt)
    _sync(device)
    return time.perf_counter() - start, timer.seconds, time.process_time() - cpu_start, timer.cpu_seconds


def _run_of(config: Config, frames: int, prompt: VideoPrompt, kept: int, peak: int, logits: torch.Tensor | None,
            timings: list[Timing]) -> PrefillRun:
    spreads: list[Spread | None] = [None] * 5
    if timings:
        walls, visions, cpus, vision_cpus = zip(*timings)
        spreads = [Spread.of(walls), Spread.of(visions), Spread.of([w - v for w, v in zip(walls, visions)]),
                   Spread.of(cpus), Spread.of([c - v for c, v in zip(cpus, vision_cpus)])]
    return PrefillRun(frames, config.label, config.ratio,
                      None if config.reducer is None else config.reducer.config.to_dict(),
                      prompt.visual_tokens, kept, *spreads, peak_bytes=peak, logits=logits)


def measure(model: torch.nn.Module, prompt: VideoPrompt, configs: Sequence[Config], *, frames: int, repeats: int,
            device: torch.device, progress: Progress | None = None, keep_logits: bool = False,
            prefill_chunk: int | None = DEFAULT_PREFILL_CHUNK) -> Iterator[list[PrefillRun]]:
    """Time and memory of every configuration at one frame count (see the module docstring):
    yields the runs measured so far after each warm-up pass (timings still None) and after each
    round of repeats. Reduced runs prefill in chunks of ``prefill_chunk`` slots (``tr.apply``)."""
    timer = _VisionTimer(model.model.visual, device)
    memory = _PeakMemory(model.model.language_model, device)
    step = progress.now if progress is not None else (lambda what: None)
    done = progress.advance if progress is not None else (lambda: None)
    kept, peaks, logits = [], [], []
    timings: list[list[Timing]] = [[] for _ in configs]

    def measured() -> list[PrefillRun]:
        return [_run_of(*measurement) for measurement in
                zip(configs, [frames] * len(kept), [prompt] * len(kept), kept, peaks, logits, timings)]

    try:
        step(f"{frames} frames: warm-up")
        _prefill(model, prompt)  # one-time allocations (caches, workspaces) happen before any measurement
        done()
        for config in configs:  # each configuration's own warm-up: kept count, peak memory, logits
            step(f"{frames} frames: {config.title}, warm-up and memory")
            with reduced(model, config.reducer, prefill_chunk):
                peak, (count, first_logits) = memory.measure(lambda: _prefill(model, prompt))
            kept.append(count)
            peaks.append(peak)
            logits.append(first_logits.float().cpu() if keep_logits else None)
            done()
            yield measured()
        for round_index in range(repeats):
            for config, runs_of_config in zip(configs, timings):
                step(f"{frames} frames: {config.title}, timing {round_index + 1}/{repeats}")
                with reduced(model, config.reducer, prefill_chunk):
                    runs_of_config.append(_timed_prefill(model, prompt, timer, device))
                done()
            yield measured()
    finally:
        timer.close()
        memory.close()


def cannot_apply(model: torch.nn.Module, reducer: Reducer) -> str | None:
    """Why ``tr.apply(model, reducer)`` refuses (a missing backend, a stage or layer the model's
    adapter does not support), or ``None`` when it installs."""
    try:
        with tr.apply(model, reducer):
            return None
    except (tr.TokenReduceError, NotImplementedError, ValueError) as exc:
        return str(exc)


def logit_differences(runs: Sequence[PrefillRun], configs: Sequence[Config]) -> list[str]:
    """For every strategy measured in several configurations at one ratio and frame count: the
    largest difference of their first-token logits (0 when they compute the same thing, e.g. the
    same selection run another way)."""
    lines = []
    by_group: dict[tuple[str, float, int], list[PrefillRun]] = {}
    names = {config.label: config.name for config in configs}
    for run in runs:
        if run.logits is not None:
            by_group.setdefault((names.get(run.strategy, run.strategy), run.ratio, run.frames), []).append(run)
    for (name, ratio, frames), group in sorted(by_group.items()):
        if len(group) < 2:
            continue
        worst = max(float((run.logits - group[0].logits).abs().max()) for run in group[1:])
        scale = float(group[0].logits.abs().max())
        lines.append(f"logits at {frames} frames, {name} r={ratio:g}: {len(group)} configurations "
                     f"({', '.join(run.strategy for run in group)}) differ by at most {worst:.3g} "
                     f"(largest logit {scale:.3g})")
    return lines


def plan(model: torch.nn.Module, specs: Sequence[Spec], ratios: Sequence[float]) -> tuple[list[Config], list[str]]:
    """The full model and every (strategy, ratio) the model's adapter installs; notes on the others
    (a missing optional backend, a stage its adapter does not support)."""
    configs, notes = [Config("full", 1.0, None)], []
    for spec in specs:
        for ratio in ratios:
            reducer = build_at_ratio(spec, ratio)
            label = label_of(spec, reducer)
            problem = cannot_apply(model, reducer)
            if problem:
                notes.append(f"skipped {label} r={ratio:g}: {problem}")
            else:
                configs.append(Config(label, ratio, reducer))
    return configs, notes


def end_to_end(*, size: str, frame_counts: Sequence[int], strategies: Sequence[Spec], ratios: Sequence[float],
               resolution: int, repeats: int, device: str = "cpu", progress: bool = False,
               check_logits: bool = False, prefill_chunk: int | None = DEFAULT_PREFILL_CHUNK,
               on_runs: Callable[[list[PrefillRun]], None] = lambda runs: None,
               on_note: Callable[[str], None] = lambda note: None) -> tuple[list[PrefillRun], list[str]]:
    """Measure the full model and every (strategy, ratio) at every frame count.

    ``on_runs`` gets every run measured so far (the latest frame count's possibly not timed yet)
    after each pass. Returns the runs and notes: strategies ``tr.apply`` cannot install are
    skipped with the reason; with
    ``check_logits``, how far apart the logits of configurations of one strategy are. Reduced runs
    prefill in chunks of ``prefill_chunk`` slots (``tr.apply``; ``None``: unchunked).
    """
    torch_device = torch.device(device)
    model = build_model(size, device=device)
    configs, notes = plan(model, strategies, ratios)
    for note in notes:
        on_note(note)
    finished: list[PrefillRun] = []
    with Progress("end-to-end", len(frame_counts) * (1 + len(configs) * (1 + repeats)), enabled=progress) as bar:
        for frames in frame_counts:
            prompt = video_prompt(frames, resolution, device=device)
            latest: list[PrefillRun] = []
            for latest in measure(model, prompt, configs, frames=frames, repeats=repeats, device=torch_device,
                                  progress=bar, keep_logits=check_logits, prefill_chunk=prefill_chunk):
                on_runs(finished + latest)
            finished += latest
            if check_logits:
                for line in logit_differences(latest, configs):
                    notes.append(line)
                    on_note(line)
    return finished, notes
