"""Named progress of a benchmark: what runs now, and how far the part has come.

With tqdm installed and a terminal, one bar per part whose label names the current measurement
(``end-to-end 16 frames: st_simdiff r=0.3, timing 2/3``); without tqdm, one line per measurement on
stderr; disabled, nothing.
"""

from __future__ import annotations

import sys
from typing import Any


class Progress:
    """Progress of one benchmark part over ``total`` steps."""

    def __init__(self, part: str, total: int, *, enabled: bool = True) -> None:
        self.part, self.total, self.enabled = part, total, enabled
        self.done = 0
        self._bar: Any = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self._bar = tqdm(total=total, desc=part, leave=False, dynamic_ncols=True, file=sys.stderr)

    def now(self, what: str) -> None:
        """Name the step that starts now."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_description_str(f"{self.part} {what}", refresh=True)
        else:
            print(f"[{self.part} {self.done + 1}/{self.total}] {what}", file=sys.stderr, flush=True)

    def advance(self, steps: int = 1) -> None:
        """Count finished steps."""
        self.done += steps
        if self._bar is not None:
            self._bar.update(steps)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
