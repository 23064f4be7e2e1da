"""Pictures of what a strategy kept, in the spirit of Figure 4 of the ST-SimDiff paper.

One row per strategy, one column per shown frame. Dropped tokens are darkened; kept tokens are
shown as they are, with *representative* tokens (central token of a similarity community) tinted
orange and *event* tokens (where the content changes over time) tinted blue; a token with both
roles shows the event colour. Other kept tokens (chosen by importance, sampling, merging) are
left untinted. The first row shows the frames themselves. Needs matplotlib (``tokenreduce[viz]``).
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tokenreduce.compare import StrategyRun, format_table
from tokenreduce.errors import MissingDependencyError
from tokenreduce.tokens import Role

REPRESENTATIVE_COLOUR = (1.0, 0.55, 0.0)  # orange
EVENT_COLOUR = (0.0, 0.55, 1.0)  # blue
TINT = 0.55  # how strongly a role colour covers its token
DROPPED_BRIGHTNESS = 0.25
CELL_PIXELS = 14  # display pixels per token side


def shown_rows(num_rows: int, columns: int) -> list[int]:
    """At most ``columns`` token rows (frames), evenly spread and always including the first and last."""
    if num_rows <= columns:
        return list(range(num_rows))
    if columns == 1:
        return [0]
    return sorted({round(i * (num_rows - 1) / (columns - 1)) for i in range(columns)})


def _display_frames(frames: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Frames resized so every token covers ``CELL_PIXELS`` square pixels: float ``[T, rows*c, cols*c, 3]``."""
    pixels = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0
    size = (rows * CELL_PIXELS, cols * CELL_PIXELS)
    return F.interpolate(pixels, size=size, mode="area").permute(0, 2, 3, 1).numpy()


def overlay(frames: np.ndarray, roles: np.ndarray) -> np.ndarray:
    """Frames ``[T, Hp, Wp, 3]`` with the tokens of ``roles`` (int ``[T, rows, cols]``) drawn on them."""
    kept = (roles & int(Role.KEPT)) != 0
    representative = kept & ((roles & int(Role.REPRESENTATIVE)) != 0)
    event = kept & ((roles & int(Role.EVENT)) != 0)
    brightness = np.where(kept, 1.0, DROPPED_BRIGHTNESS)[..., None]
    tint = np.zeros(roles.shape + (3,))
    amount = np.zeros(roles.shape + (1,))
    tint[representative] = REPRESENTATIVE_COLOUR
    amount[representative] = TINT
    tint[event] = EVENT_COLOUR
    amount[event] = TINT
    upsample = np.ones((1, CELL_PIXELS, CELL_PIXELS, 1))
    scale = lambda a: np.kron(a, upsample)  # token grid -> display pixels
    return np.clip(frames * scale(brightness) * (1 - scale(amount)) + scale(tint) * scale(amount), 0.0, 1.0)


def render(frames: np.ndarray, runs: Sequence[StrategyRun], out: str | Path, *, columns: int = 8,
           timestamps: Sequence[float] | None = None, title: str | None = None) -> Path:
    """Write the picture of ``runs`` over ``frames`` (uint8 ``[T, H, W, 3]``, one per token row) to ``out`` (PNG)."""
    Figure, Rectangle = load_matplotlib()
    if not runs:
        raise ValueError("runs is empty: there is nothing to draw")
    t, rows, cols = runs[0].reduction.grid
    if len(frames) != t:
        raise ValueError(f"frames has {len(frames)} frames but the token grid has {t} rows")
    picked = shown_rows(t, columns)
    shown = _display_frames(frames[picked], rows, cols)
    height, width = shown.shape[1:3]
    figure = Figure(figsize=(1.9 * len(picked) + 1.2, 1.9 * (height / width) * (len(runs) + 1) + 0.9))
    axes = figure.subplots(len(runs) + 1, len(picked), squeeze=False)
    for column, frame_row in enumerate(picked):
        axes[0, column].imshow(shown[column])
        label = f"t={timestamps[frame_row]:.1f}s" if timestamps is not None else f"frame {frame_row}"
        axes[0, column].set_title(label, fontsize=8)
    axes[0, 0].set_ylabel("video", fontsize=8)
    for r, run in enumerate(runs, start=1):
        roles = run.reduction.roles[0].reshape(t, rows, cols).cpu().numpy()[picked]
        drawn = overlay(shown, roles)
        for column in range(len(picked)):
            axes[r, column].imshow(drawn[column])
        axes[r, 0].set_ylabel(f"{_wrap(run.label)}\n{100 * run.kept / run.total:.0f}% kept", fontsize=8)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    handles = [Rectangle((0, 0), 1, 1, color=REPRESENTATIVE_COLOUR, alpha=TINT),
               Rectangle((0, 0), 1, 1, color=EVENT_COLOUR, alpha=TINT),
               Rectangle((0, 0), 1, 1, color=(0, 0, 0), alpha=1 - DROPPED_BRIGHTNESS)]
    figure.legend(handles, ["representative token", "event token", "dropped token"], loc="lower center",
                  ncol=3, fontsize=8, frameon=False)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    return out


def _wrap(label: str, width: int = 14) -> str:
    """Break a long strategy name over lines at underscores and spaces so row labels stay narrow."""
    lines, current = [], ""
    for part in re.split(r"(?<=[_ ])", label):
        if current and len(current) + len(part) > width:
            lines.append(current)
            current = ""
        current += part
    return "\n".join([*lines, current])


def write_html(png: str | Path, runs: Sequence[StrategyRun], out: str | Path, *, notes: Sequence[str] = ()) -> Path:
    """A self-contained HTML page: the picture (embedded) above the table and the notes."""
    image = base64.b64encode(Path(png).read_bytes()).decode("ascii")
    note_items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>tokenreduce</title></head><body>"
        f"<img alt='kept tokens per strategy' src='data:image/png;base64,{image}' style='max-width:100%'>"
        f"<pre>{html.escape(format_table(runs))}</pre><ul>{note_items}</ul></body></html>\n"
    )
    out = Path(out)
    out.write_text(page, encoding="utf-8")
    return out


def load_matplotlib():
    """``(Figure, Rectangle)``; the object API draws without touching pyplot's global backend."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.patches import Rectangle
    except ImportError:
        raise MissingDependencyError("pictures need matplotlib: pip install 'tokenreduce[viz]'") from None
    return Figure, Rectangle
