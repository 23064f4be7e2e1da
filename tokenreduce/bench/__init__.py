"""``tokenreduce bench``: selection overhead per strategy and end-to-end prefill cost, full vs reduced.

``run(options)`` runs the parts asked for, prints tables, and writes JSON and a plot. The
measurement code lives in ``selection`` and ``end_to_end``; ``benchmarks/*.py`` in the source
tree call this with the settings of docs/performance.md.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

import tokenreduce as tr
from tokenreduce.bench.end_to_end import end_to_end
from tokenreduce.bench.report import end_to_end_table, plot, selection_table, target_lines
from tokenreduce.bench.selection import selection_overhead
from tokenreduce.compare import default_strategies

END_TO_END_PREFERRED = ("st_simdiff", "fastv", "visionzip", "framefusion", "evs", "vidcom2", "dart", "uniform")


@dataclass(frozen=True)
class BenchOptions:
    parts: Sequence[str] = ("selection", "end-to-end")
    device: str = "cpu"
    strategies: Sequence[str] | None = None
    ratios: Sequence[float] = (0.3, 0.5)
    selection_frames: int = 64
    selection_grid: int = 13
    dim: int = 3584
    size: str = "base"
    frame_counts: Sequence[int] = (8, 16, 32)
    resolution: int = 336
    repeats: int = 3
    json_path: str | None = None
    plot_path: str | None = "tokenreduce-bench.png"
    progress: bool = True
    threads: int | None = None


def machine() -> dict[str, object]:
    """What the numbers were measured on."""
    info: dict[str, object] = {"python": platform.python_version(), "torch": torch.__version__,
                               "tokenreduce": tr.__version__, "cpu": platform.processor() or platform.machine(),
                               "cpu_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


def _progress(enabled: bool, description: str):
    if not enabled:
        return iter
    try:
        from tqdm import tqdm
    except ImportError:
        return iter
    return lambda items: iter(tqdm(items, desc=description, leave=False))


def _end_to_end_strategies() -> list[str]:
    registered = set(tr.STRATEGIES.names())
    return [name for name in END_TO_END_PREFERRED if name in registered]


def run(options: BenchOptions) -> int:
    """Run the benchmark parts of ``options``; print tables; write JSON and the plot."""
    if options.device == "cuda" and not torch.cuda.is_available():
        raise tr.TokenReduceError("--device cuda was asked for but no CUDA device is available")
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    result: dict[str, object] = {"machine": machine(), "options": asdict(options)}
    if "selection" in options.parts:
        strategies = list(options.strategies or default_strategies())
        runs, notes = selection_overhead(
            strategies=strategies, ratio=min(options.ratios), frames=options.selection_frames,
            height=options.selection_grid, width=options.selection_grid, dim=options.dim,
            repeats=options.repeats, device=options.device,
            progress=_progress(options.progress, "selection"))
        print(f"Selection overhead ({options.selection_frames} frames x {options.selection_grid}x"
              f"{options.selection_grid} tokens, d={options.dim}, r={min(options.ratios)}, {options.device}):")
        print(selection_table(runs))
        for note in notes:
            print(note)
        print()
        result["selection"] = {"runs": [r.as_dict() for r in runs], "notes": notes}
    if "end-to-end" in options.parts:
        strategies = list(options.strategies or _end_to_end_strategies())
        runs, notes = end_to_end(
            size=options.size, frame_counts=options.frame_counts, strategies=strategies, ratios=options.ratios,
            resolution=options.resolution, repeats=options.repeats, device=options.device,
            progress=_progress(options.progress, "end-to-end"))
        print(f"End to end (random-weight Qwen2-VL-style model '{options.size}', {options.resolution}px frames, "
              f"{options.device}, best of {options.repeats}):")
        print(end_to_end_table(runs))
        checks = target_lines(runs)
        for line in checks + notes:
            print(line)
        print()
        result["end_to_end"] = {"runs": [r.as_dict() for r in runs], "targets": checks, "notes": notes}
        if options.plot_path:
            print(f"wrote {plot(runs, options.plot_path, title=f'{options.size} model, {options.device}')}")
    if options.json_path:
        Path(options.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(options.json_path).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {options.json_path}")
    return 0
