"""``tokenreduce bench``: selection overhead per strategy and end-to-end prefill cost, full vs reduced.

``run(options)`` runs the parts asked for, shows what runs now, writes the JSON (and, for the
end-to-end part, the plot) as each measurement finishes, and prints tables with the spread of the
repeats, target checks and noise warnings. An interrupted run (Ctrl-C) keeps what finished. The
measurement code lives in ``selection`` and ``end_to_end``; ``benchmarks/*.py`` in the source tree
call this with the settings of docs/performance.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

import tokenreduce as tr
from tokenreduce.adapters.chunked_prefill import DEFAULT_PREFILL_CHUNK
from tokenreduce.bench.end_to_end import PrefillRun, end_to_end
from tokenreduce.bench.report import (
    end_to_end_table,
    end_to_end_warnings,
    plot,
    selection_table,
    selection_warnings,
    target_lines,
)
from tokenreduce.bench.results import ResultsFile, environment
from tokenreduce.bench.selection import SelectionRun, Spec, selection_overhead
from tokenreduce.compare import default_strategies

END_TO_END_PREFERRED = ("st_simdiff", "fastv", "visionzip", "framefusion", "evs", "vidcom2", "dart", "uniform")


@dataclass(frozen=True)
class BenchOptions:
    parts: Sequence[str] = ("selection", "end-to-end")
    device: str = "cpu"
    strategies: Sequence[Spec] | None = None
    ratios: Sequence[float] = (0.3,)
    selection_frames: int = 64
    selection_grid: int = 13
    dim: int = 3584
    size: str = "small"
    frame_counts: Sequence[int] = (8, 16, 32)
    resolution: int = 336
    repeats: int = 3
    json_path: str | None = "tokenreduce-bench.json"
    plot_path: str | None = "tokenreduce-bench.png"
    progress: bool = True
    threads: int | None = None
    check_logits: bool = False
    prefill_chunk: int | None = DEFAULT_PREFILL_CHUNK  # tr.apply's: slots per prefill chunk; None: unchunked


def _end_to_end_strategies() -> list[str]:
    registered = set(tr.STRATEGIES.names())
    return [name for name in END_TO_END_PREFERRED if name in registered]


def _header(options: BenchOptions) -> dict[str, Any]:
    settings = asdict(options)
    settings["strategies"] = None if options.strategies is None else [
        s if isinstance(s, dict) else str(s) for s in options.strategies]
    return {"machine": environment(), "options": settings}


def _selection(options: BenchOptions, results: ResultsFile) -> None:
    part = results.part("selection")
    runs: list[SelectionRun] = []

    def keep(run: SelectionRun) -> None:
        runs.append(run)
        part["runs"].append(run.as_dict())
        results.write()

    def note(line: str) -> None:
        part["notes"].append(line)
        results.write()

    selection_overhead(strategies=list(options.strategies or default_strategies()), ratio=min(options.ratios),
                       frames=options.selection_frames, height=options.selection_grid, width=options.selection_grid,
                       dim=options.dim, repeats=options.repeats, device=options.device, progress=options.progress,
                       on_run=keep, on_note=note)
    print(f"Selection overhead ({options.selection_frames} frames x {options.selection_grid}x"
          f"{options.selection_grid} tokens, d={options.dim}, r={min(options.ratios)}, {options.device}, "
          f"{options.repeats} repeats):")
    print(selection_table(runs))
    warnings = selection_warnings(runs)
    for line in part["notes"] + warnings:
        print(line)
    results.update("selection", warnings=warnings)
    print()


def _end_to_end(options: BenchOptions, results: ResultsFile) -> None:
    part = results.part("end_to_end")
    results.write()
    title = f"{options.size} model, {options.device}"

    def keep(runs: list[PrefillRun]) -> None:
        part["runs"] = [run.as_dict() for run in runs]
        results.write()
        timed = [run for run in runs if run.prefill_cpu_s is not None]
        if options.plot_path and timed and len(timed) == len(runs):  # after each round of repeats
            plot(timed, options.plot_path, title=title)

    def note(line: str) -> None:
        part["notes"].append(line)
        results.write()

    runs, _ = end_to_end(size=options.size, frame_counts=options.frame_counts,
                         strategies=list(options.strategies or _end_to_end_strategies()), ratios=options.ratios,
                         resolution=options.resolution, repeats=options.repeats, device=options.device,
                         progress=options.progress, check_logits=options.check_logits,
                         prefill_chunk=options.prefill_chunk, on_runs=keep, on_note=note)
    chunks = "unchunked" if options.prefill_chunk is None else f"chunks of {options.prefill_chunk}"
    print(f"End to end (random-weight Qwen2-VL-style model '{options.size}', {options.resolution}px frames, "
          f"{options.device}, {options.repeats} repeats, reduced prefill {chunks}; times min / median / max):")
    print(end_to_end_table(runs))
    checks, warnings = target_lines(runs), end_to_end_warnings(runs)
    for line in checks + part["notes"] + warnings:
        print(line)
    results.update("end_to_end", targets=checks, warnings=warnings)
    if options.plot_path and runs:
        print(f"wrote {options.plot_path}")
    print()


def run(options: BenchOptions) -> int:
    """Run the benchmark parts of ``options``; print tables; write JSON and the plot as results come."""
    if options.device == "cuda" and not torch.cuda.is_available():
        raise tr.TokenReduceError("--device cuda was asked for but no CUDA device is available")
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    results = ResultsFile(options.json_path, _header(options))
    try:
        if "selection" in options.parts:
            _selection(options, results)
        if "end-to-end" in options.parts:
            _end_to_end(options, results)
    except KeyboardInterrupt:
        where = f"; what finished is in {options.json_path}" if options.json_path else ""
        print(f"interrupted{where}")
        return 130
    results.finish()
    if options.json_path:
        print(f"wrote {options.json_path}")
    return 0
