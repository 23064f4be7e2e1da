"""Tables, target checks, JSON and the plot of benchmark results."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from tokenreduce.bench.end_to_end import PrefillRun
from tokenreduce.bench.selection import SelectionRun

PREFILL_TARGET = 0.40  # at r = 0.3: prefill (selection included) at most 0.40x of full
MEMORY_TARGET = 0.50  # at r = 0.3: peak activation memory at most 0.5x of full
TARGET_RATIO = 0.3


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def selection_table(runs: Sequence[SelectionRun]) -> str:
    rows = [(r.strategy, r.community or "-", r.device, str(r.tokens), str(r.dim), str(r.kept),
             f"{1000 * r.seconds:.2f}") for r in runs]
    return _table(("strategy", "community", "device", "tokens", "d", "kept", "ms"), rows)


def _full_of(runs: Sequence[PrefillRun]) -> dict[int, PrefillRun]:
    return {r.frames: r for r in runs if r.strategy == "full"}


def _times(value: float, reference: float | None) -> str:
    return f"{value / reference:.2f}" if reference else "-"


def end_to_end_table(runs: Sequence[PrefillRun]) -> str:
    """Every run with its times, memory, and the ratios to the full model at the same frame count."""
    full = _full_of(runs)
    rows = []
    for r in runs:
        base = full.get(r.frames)
        rows.append((str(r.frames), r.strategy, "-" if r.strategy == "full" else f"{r.ratio:g}",
                     f"{r.kept_tokens}/{r.visual_tokens}", f"{1000 * r.ttft_s:.0f}", f"{1000 * r.vision_s:.0f}",
                     f"{1000 * r.prefill_s:.0f}", f"{r.peak_bytes / 2**20:.1f}",
                     _times(r.prefill_s, base and base.prefill_s), _times(r.ttft_s, base and base.ttft_s),
                     _times(r.peak_bytes, base and base.peak_bytes)))
    return _table(("frames", "strategy", "r", "visual kept", "TTFT ms", "vision ms", "prefill ms", "peak MiB",
                   "prefill x", "TTFT x", "memory x"), rows)


def growth_exponent(runs: Sequence[PrefillRun]) -> float | None:
    """Slope of log(prefill time) against log(frames) between the smallest and largest count (1 = linear)."""
    if len(runs) < 2:
        return None
    first, last = min(runs, key=lambda r: r.frames), max(runs, key=lambda r: r.frames)
    if first.frames == last.frames or first.prefill_s <= 0 or last.prefill_s <= 0:
        return None
    return math.log(last.prefill_s / first.prefill_s) / math.log(last.frames / first.frames)


def target_lines(runs: Sequence[PrefillRun]) -> list[str]:
    """The targets, checked at the largest frame count, and the growth exponents."""
    full = _full_of(runs)
    lines = []
    at_target = [r for r in runs if r.strategy != "full" and math.isclose(r.ratio, TARGET_RATIO) and r.frames in full]
    if at_target:
        frames = max(r.frames for r in at_target)
        for r in (r for r in at_target if r.frames == frames):
            prefill = r.prefill_s / full[frames].prefill_s
            memory = r.peak_bytes / full[frames].peak_bytes
            lines.append(f"target at r={TARGET_RATIO}, {frames} frames, {r.strategy}: prefill {prefill:.2f}x full "
                         f"({'meets' if prefill <= PREFILL_TARGET else 'misses'} <= {PREFILL_TARGET}x), "
                         f"peak memory {memory:.2f}x ({'meets' if memory <= MEMORY_TARGET else 'misses'} "
                         f"<= {MEMORY_TARGET}x)")
    configs = sorted({(r.strategy, r.ratio) for r in runs})
    for strategy, ratio in configs:
        exponent = growth_exponent([r for r in runs if (r.strategy, r.ratio) == (strategy, ratio)])
        if exponent is not None:
            name = strategy if strategy == "full" else f"{strategy} r={ratio:g}"
            lines.append(f"growth of prefill time with frames, {name}: exponent {exponent:.2f} (1.00 = linear)")
    return lines


def plot(runs: Sequence[PrefillRun], out: str | Path, *, title: str = "") -> Path:
    """Prefill time and peak memory against frames: one line for full and one per strategy and ratio."""
    from tokenreduce.viz import load_matplotlib

    Figure, _ = load_matplotlib()
    figure = Figure(figsize=(10, 4))
    time_axis, memory_axis = figure.subplots(1, 2)
    for strategy, ratio in sorted({(r.strategy, r.ratio) for r in runs}, key=lambda c: (c[0] != "full", c)):
        points = sorted((r for r in runs if (r.strategy, r.ratio) == (strategy, ratio)), key=lambda r: r.frames)
        label = "full" if strategy == "full" else f"{strategy} r={ratio:g}"
        frames = [r.frames for r in points]
        time_axis.plot(frames, [r.prefill_s for r in points], marker="o", label=label)
        memory_axis.plot(frames, [r.peak_bytes / 2**20 for r in points], marker="o", label=label)
    time_axis.set(xlabel="frames", ylabel="prefill time (s, selection included)", title="prefill time")
    memory_axis.set(xlabel="frames", ylabel="peak activation memory (MiB)", title="peak memory")
    time_axis.legend(fontsize=8)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    return out
