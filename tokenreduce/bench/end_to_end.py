"""End-to-end cost of a video prompt: time to first token, prefill time and peak memory, full vs reduced.

For every frame count the full model and each (strategy, ratio) run on the same prompt in the same
process, so the ratios compare like with like. Per run:

- ``ttft_s``: one forward pass over the prompt with the KV cache on and the first token picked
  (vision tower + selection + LLM prefill + LM head on the last position), wall clock; the best
  of ``repeats`` after one warm-up. The repeats of all configurations of one frame count are
  interleaved (full, strategy 1, strategy 2, ..., full, ...), so that other work on the machine
  disturbs them alike.
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
  inside a ``record_function`` range around the forward, in a separate untimed pass.
- ``kept_tokens``: visual tokens in the last decoder layer's KV cache.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass

import torch

import tokenreduce as tr
from tokenreduce.adapters import hf
from tokenreduce.bench.model import TEXT_TOKENS, VideoPrompt, build_model, video_prompt
from tokenreduce.compare import build_at_ratio
from tokenreduce.interfaces import Reducer


@dataclass(frozen=True)
class PrefillRun:
    """One measured configuration (``strategy == "full"`` is the unreduced model)."""

    frames: int
    strategy: str
    ratio: float
    visual_tokens: int
    kept_tokens: int
    ttft_s: float
    vision_s: float
    prefill_s: float
    ttft_cpu_s: float
    prefill_cpu_s: float
    peak_bytes: int

    def as_dict(self) -> dict:
        return asdict(self)


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


def _prefill(model: torch.nn.Module, prompt: VideoPrompt) -> int:
    """One prefill forward; returns the visual tokens left in the last layer's KV cache."""
    with torch.inference_mode():
        out = model(**prompt.inputs, use_cache=True, logits_to_keep=1)
        out.logits[:, -1].argmax(-1)
    cache = hf.output_cache(out)
    return hf.cache_length(cache, hf.cache_layers(cache) - 1) - TEXT_TOKENS


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

    def measure(self, run: Callable[[], object]) -> int:
        if self.device.type == "cuda":
            run()
            return self.peak
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            run()
        events = list(prof.profiler.kineto_results.events())
        window = next(e for e in events if e.name() == self.RANGE)
        start, end = window.start_ns(), window.start_ns() + window.duration_ns()
        current = peak = 0
        for event in sorted((e for e in events if e.name() == "[memory]"), key=lambda e: e.start_ns()):
            if start <= event.start_ns() <= end:
                current += event.nbytes()
                peak = max(peak, current)
        return peak

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


@contextlib.contextmanager
def reduced(model: torch.nn.Module, reducer: Reducer | None) -> Iterator[None]:
    """The model with ``reducer`` applied through its adapter (``tr.apply``), or unchanged for ``None``."""
    if reducer is None:
        yield
        return
    with tr.apply(model, reducer):
        yield


Timing = tuple[float, float, float, float]  # wall, vision wall, CPU, vision CPU seconds of one prefill


def _timed_prefill(model: torch.nn.Module, prompt: VideoPrompt, timer: _VisionTimer, device: torch.device) -> Timing:
    timer.seconds = timer.cpu_seconds = 0.0
    _sync(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    _prefill(model, prompt)
    _sync(device)
    return time.perf_counter() - start, timer.seconds, time.process_time() - cpu_start, timer.cpu_seconds


def measure(model: torch.nn.Module, prompt: VideoPrompt, configs: Sequence[tuple[str, float, Reducer | None]], *,
            frames: int, repeats: int, device: torch.device) -> list[PrefillRun]:
    """Time and memory of every ``(label, ratio, reducer)`` at one frame count (see the module docstring)."""
    timer = _VisionTimer(model.model.visual, device)
    memory = _PeakMemory(model.model.language_model, device)
    kept, peaks = [], []
    timings: list[list[Timing]] = [[] for _ in configs]
    try:
        for _, _, reducer in configs:  # warm-up, kept count and peak memory
            with reduced(model, reducer):
                kept.append(_prefill(model, prompt))
                peaks.append(memory.measure(lambda: _prefill(model, prompt)))
        for _ in range(repeats):
            for runs_of_config, (_, _, reducer) in zip(timings, configs):
                with reduced(model, reducer):
                    runs_of_config.append(_timed_prefill(model, prompt, timer, device))
    finally:
        timer.close()
        memory.close()
    results = []
    for (label, ratio, _), count, peak, runs_of_config in zip(configs, kept, peaks, timings):
        wall, vision, _, _ = min(runs_of_config)
        results.append(PrefillRun(
            frames=frames, strategy=label, ratio=ratio, visual_tokens=prompt.visual_tokens, kept_tokens=count,
            ttft_s=wall, vision_s=vision, prefill_s=wall - vision,
            ttft_cpu_s=min(t[2] for t in runs_of_config), prefill_cpu_s=min(t[2] - t[3] for t in runs_of_config),
            peak_bytes=peak))
    return results


def cannot_apply(model: torch.nn.Module, reducer: Reducer) -> str | None:
    """Why ``tr.apply(model, reducer)`` refuses (a missing backend, a stage or layer the model's
    adapter does not support), or ``None`` when it installs."""
    try:
        with tr.apply(model, reducer):
            return None
    except (tr.TokenReduceError, NotImplementedError, ValueError) as exc:
        return str(exc)


def end_to_end(*, size: str, frame_counts: Sequence[int], strategies: Sequence[str], ratios: Sequence[float],
               resolution: int, repeats: int, device: str = "cpu",
               progress: Callable[[Sequence], Iterator] = iter) -> tuple[list[PrefillRun], list[str]]:
    """Measure the full model and every (strategy, ratio) at every frame count.

    Returns the runs and notes: the strategies ``tr.apply`` cannot install on the model (a missing
    optional backend, a stage its adapter does not support) are skipped with the reason.
    """
    torch_device = torch.device(device)
    model = build_model(size, device=device)
    reducers: list[tuple[str, float, Reducer | None]] = [("full", 1.0, None)]
    notes = []
    for name in strategies:
        for ratio in ratios:
            reducer = build_at_ratio(name, ratio)
            problem = cannot_apply(model, reducer)
            if problem:
                notes.append(f"skipped {name} r={ratio:g}: {problem}")
            else:
                reducers.append((name, ratio, reducer))
    runs = []
    for frames in progress(list(frame_counts)):
        prompt = video_prompt(frames, resolution, device=device)
        runs += measure(model, prompt, reducers, frames=frames, repeats=repeats, device=torch_device)
    return runs, notes
