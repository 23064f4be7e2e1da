"""``tokenreduce demo`` / ``visualize``: video -> tokens -> every strategy -> table and picture."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenreduce.compare import DEFAULT_RATIO, budget_notes, default_strategies, format_table, run_strategies
from tokenreduce.encoders import VisionTowerEncoder, make_encoder
from tokenreduce.errors import TokenReduceError
from tokenreduce.model_showcase import run_in_model, video_inputs
from tokenreduce.video import demo_video_path, load_video
from tokenreduce.viz import render, write_html

DECODE_MAX_SIDE = 448  # frames are decoded at most this large: plenty for a 16-patch-wide grid


@dataclass(frozen=True)
class Showcase:
    """What to show: ``video=None`` is the bundled demo clip; ``strategies=None`` all registered ones."""

    video: str | None = None
    strategies: Sequence[str] | None = None
    ratio: float | None = None  # None: 0.3 for names, a config file's own budget for files
    frames: int = 16
    out: str = "tokenreduce-demo.png"
    html: bool = False
    model: str | None = None
    patches: int = 16
    columns: int = 8


def budget_text(ratio: float | None) -> str:
    """``"30%"`` for a ratio; without one, what each strategy was built at."""
    return f"{ratio:.0%}" if ratio is not None else f"{DEFAULT_RATIO:.0%} (config files: their own budget)"


def show(options: Showcase) -> int:
    """Run the showcase, print the table and the files written; returns the exit status (0)."""
    started = time.perf_counter()
    source = Path(options.video) if options.video is not None else demo_video_path()
    clip = load_video(source, options.frames, max_side=DECODE_MAX_SIDE)
    specs = list(options.strategies) if options.strategies else default_strategies()
    frames, timestamps = clip.frames, clip.timestamps
    if options.model is None:
        encoded = make_encoder(None, cols=options.patches).encode(clip.frames)
        runs, skipped = run_strategies(specs, encoded, options.ratio)
        encoder = encoded.encoder
    else:
        tower = VisionTowerEncoder(options.model)
        inputs, rows = video_inputs(tower, clip.frames)
        runs, skipped = run_in_model(tower, inputs, specs, options.ratio)
        frames, timestamps = clip.frames[rows], [clip.timestamps[i] for i in rows]
        encoder = f"{tower.name}, the whole model (each row: the record of its run in the model)"
    if not runs:
        raise TokenReduceError("no strategy could run here: "
                               + "; ".join(f"{spec}: {why}" for spec, why in skipped))
    t, h, w = runs[0].reduction.grid
    notes = [
        f"video: {source} ({clip.total_frames} frames, {len(clip.indices)} sampled)",
        f"tokens: {t} frames x {h}x{w} = {t * h * w}; encoder: {encoder}",
        f"ratio: {budget_text(options.ratio)}; selection time is "
        + ("the steps' time in the model run" if options.model else
           "the best of 3 runs on this machine's CPU after a warm-up"),
    ]
    if any(run.proxies for run in runs):
        notes.append("proxy signals: no model runs here, so attention-based strategies rank tokens by "
                     "the listed stand-ins, not by real attention")
    notes += budget_notes(runs)
    notes += [f"skipped {spec}: {why}" for spec, why in skipped]
    print(format_table(runs))
    print()
    for note in notes:
        print(note)
    title = (f"{source.name}: {options.ratio:.0%} of {t * h * w} tokens kept" if options.ratio is not None
             else f"{source.name}: {t * h * w} tokens, each row at its own budget")
    png = render(frames, runs, options.out, columns=options.columns, timestamps=timestamps, title=title)
    print(f"wrote {png}")
    if options.html:
        page = write_html(png, runs, Path(png).with_suffix(".html"), notes=notes)
        print(f"wrote {page}")
    print(f"done in {time.perf_counter() - started:.1f} s")
    return 0
