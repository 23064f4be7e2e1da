"""End-to-end prefill time, time to first token and peak memory, full vs reduced, for docs/performance.md.

    python benchmarks/end_to_end.py                 # CPU, the ~137M-parameter model, 8..64 frames
    python benchmarks/end_to_end.py --device cuda   # on a GPU

Extra arguments are passed to ``tokenreduce bench`` (e.g. ``--strategy st_simdiff``); the JSON goes
to benchmarks/results/ and the plot to docs/images/.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tokenreduce.cli import main

ROOT = Path(__file__).resolve().parent.parent

if __name__ == "__main__":
    extra = sys.argv[1:]
    device = extra[extra.index("--device") + 1] if "--device" in extra else "cpu"
    sys.exit(main(["bench", "--part", "end-to-end", "--size", "base", "--frames", "8,16,32,64",
                   "--resolution", "336", "--repeats", "3", "--ratios", "0.3,0.5",
                   "--json", str(ROOT / "benchmarks" / "results" / f"end-to-end-{device}.json"),
                   "--plot", str(ROOT / "docs" / "images" / f"end-to-end-{device}.png"), *extra]))
