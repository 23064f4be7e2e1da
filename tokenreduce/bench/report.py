"""Tables, target checks, noise warnings and the plot of benchmark results.

Times are shown as ``min / median / max`` of the repeats; ratios to the full model use medians.
A target check says "meets" / "misses" only when every pairing of the repeats agrees
(``spread.verdict``); a measurement whose repeats vary too much is named in a warning.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path

from tokenreduce.bench.end_to_end import PrefillRun
from tokenreduce.bench.selection import SelectionRun
from tokenreduce.bench.spread import WIDE_SPREAD, Spread, verdict

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
             r.seconds.text(1000, 2), "-" if r.cpu_seconds is None else r.cpu_seconds.text(1000, 2))
            for r in runs]
    return _table(("strategy", "community", "device", "tokens", "d", "kept", "ms (min / median / max)",
                   "CPU ms (min / median / max)"), rows)


def selection_warnings(runs: Sequence[SelectionRun]) -> list[str]:
    """A warning naming the selections whose repeats vary too much to compare them closely."""
    noisy = [r for r in runs if (r.cpu_seconds or r.seconds).wide]
    if not noisy:
        return []
    names = ", ".join(f"{r.label} ({(r.cpu_seconds or r.seconds).text(1000, 1)} ms)" for r in noisy)
    return [f"warning: the repeats of {len(noisy)} selection(s) vary by more than {WIDE_SPREAD:.0%}: {names}; "
            "the machine is busy, compare those only roughly (more --repeats or --threads 1 help)"]


def _full_of(runs: Sequence[PrefillRun]) -> dict[int, PrefillRun]:
    return {r.frames: r for r in runs if r.strategy == "full"}


def _times(value: Spread, reference: Spread | None) -> str:
    if reference is None:
        return "-"
    ratio = value.median / reference.median
    return f"{ratio:.2f}" + ("~" if value.wide or reference.wide else "")


def end_to_end_table(runs: Sequence[PrefillRun]) -> str:
    """Every run with its times (min / median / max), memory, and the median ratios to the full
    model at the same frame count (``~``: the repeats of one side vary too much to trust it)."""
    full = _full_of(runs)
    rows = []
    for r in runs:
        base = full.get(r.frames)
        rows.append((str(r.frames), r.strategy, "-" if r.strategy == "full" else f"{r.ratio:g}",
                     f"{r.kept_tokens}/{r.visual_tokens}", r.ttft_s.text(1000), r.prefill_s.text(1000),
                     r.prefill_cpu_s.text(1000), f"{r.peak_bytes / 2**20:.1f}",
                     _times(r.prefill_s, base and base.prefill_s), _times(r.prefill_cpu_s, base and base.prefill_cpu_s),
                     _times(r.ttft_s, base and base.ttft_s),
                     f"{r.peak_bytes / base.peak_bytes:.2f}" if base and base.peak_bytes else "-"))
    return _table(("frames", "strategy", "r", "visual kept", "TTFT ms", "prefill ms", "prefill CPU ms", "peak MiB",
                   "prefill x", "prefill CPU x", "TTFT x", "memory x"), rows)


def growth_exponent(runs: Sequence[PrefillRun]) -> float | None:
    """Slope of log(median prefill CPU time) against log(frames) between the smallest and largest
    count (1 = linear)."""
    if len(runs) < 2:
        return None
    first, last = min(runs, key=lambda r: r.frames), max(runs, key=lambda r: r.frames)
    low, high = first.prefill_cpu_s.median, last.prefill_cpu_s.median
    if first.frames == last.frames or low <= 0 or high <= 0:
        return None
    return math.log(high / low) / math.log(last.frames / first.frames)


def target_lines(runs: Sequence[PrefillRun]) -> list[str]:
    """The targets, checked at the largest frame count, and the growth exponents."""
    full = _full_of(runs)
    lines = []
    at_target = [r for r in runs if r.strategy != "full" and math.isclose(r.ratio, TARGET_RATIO) and r.frames in full]
    if at_target:
        frames = max(r.frames for r in at_target)
        base = full[frames]
        for r in (r for r in at_target if r.frames == frames):
            wall, cpu = r.prefill_s.ratio(base.prefill_s), r.prefill_cpu_s.ratio(base.prefill_cpu_s)
            # CPU time is the steadier measure on a shared machine: the verdict uses it
            time_verdict = verdict(cpu, PREFILL_TARGET, repeats=min(r.repeats, base.repeats),
                                   noisy=r.prefill_cpu_s.wide or base.prefill_cpu_s.wide)
            memory = r.peak_bytes / base.peak_bytes if base.peak_bytes else float("nan")
            lines.append(f"target at r={TARGET_RATIO}, {frames} frames, {r.strategy}: prefill {wall.median:.2f}x full "
                         f"wall-clock / {cpu.median:.2f}x CPU time (CPU {cpu.min:.2f}-{cpu.max:.2f}x over the repeats: "
                         f"{time_verdict}), peak memory {memory:.2f}x "
                         f"({verdict(Spread.of([memory]), MEMORY_TARGET)})")
    for (strategy, ratio), group in itertools.groupby(sorted(runs, key=lambda r: (r.strategy, r.ratio, r.frames)),
                                                      key=lambda r: (r.strategy, r.ratio)):
        group = list(group)
        exponent = growth_exponent(group)
        if exponent is not None:
            noisy = any(r.prefill_cpu_s.wide for r in group)
            lines.append(f"growth of prefill CPU time with frames, {group[0].label}: exponent {exponent:.2f} "
                         f"(1.00 = linear){'; noisy repeats, indicative only' if noisy else ''}")
    return lines


def end_to_end_warnings(runs: Sequence[PrefillRun]) -> list[str]:
    """A warning naming the runs whose repeats vary too much for the ratios and verdicts above."""
    noisy = [r for r in runs if r.prefill_cpu_s.wide or r.prefill_s.wide]
    if not noisy:
        return []
    worst = max(noisy, key=lambda r: max(r.prefill_cpu_s.relative, r.prefill_s.relative))
    return [f"warning: the repeats of {len(noisy)} of {len(runs)} runs vary by more than {WIDE_SPREAD:.0%} "
            f"(worst: {worst.label} at {worst.frames} frames, prefill {worst.prefill_s.text(1000)} ms wall, "
            f"{worst.prefill_cpu_s.text(1000)} ms CPU); ratios marked ~ and verdicts on them are withheld. "
            "The machine is busy: more --repeats, --threads 1 or a quieter machine help."]


LINE_STYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h")


def line_style(index: int, label: str) -> dict[str, object]:
    """The look of the ``index``-th line: full is thick black; the others combine a colour (10), a
    dash pattern (4) and a marker (11), so that the first 220 lines all look different."""
    if label == "full":
        return {"color": "black", "linestyle": "-", "marker": "o", "linewidth": 2.2}
    return {"color": f"C{index % 10}", "linestyle": LINE_STYLES[index % len(LINE_STYLES)],
            "marker": MARKERS[index % len(MARKERS)], "linewidth": 1.4}


def plot(runs: Sequence[PrefillRun], out: str | Path, *, title: str = "") -> Path:
    """Median prefill CPU time (bars: min to max) and peak memory against frames: one line for full
    and one per strategy and ratio; every line has its own marker and dash pattern, so lines stay
    apart beyond the ten colours of the palette."""
    from tokenreduce.viz import load_matplotlib

    Figure, _ = load_matplotlib()
    figure = Figure(figsize=(11, 4.5))
    time_axis, memory_axis = figure.subplots(1, 2)
    labels = sorted({r.label for r in runs}, key=lambda label: (label != "full", label))
    for index, label in enumerate(labels):
        points = sorted((r for r in runs if r.label == label), key=lambda r: r.frames)
        frames = [r.frames for r in points]
        median = [r.prefill_cpu_s.median for r in points]
        error = [[m - r.prefill_cpu_s.min for m, r in zip(median, points)],
                 [r.prefill_cpu_s.max - m for m, r in zip(median, points)]]
        style = line_style(index, label)
        time_axis.errorbar(frames, median, yerr=error, capsize=2, label=label, **style)
        memory_axis.plot(frames, [r.peak_bytes / 2**20 for r in points], label=label, **style)
    time_axis.set(xlabel="frames", ylabel="prefill CPU time (s, selection included)",
                  title="prefill time (median; bars: min-max)")
    memory_axis.set(xlabel="frames", ylabel="peak activation memory (MiB)", title="peak memory")
    memory_axis.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    return out
