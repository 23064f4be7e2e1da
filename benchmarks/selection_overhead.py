"""Selection overhead at the paper's scale (64 frames x 13x13 tokens, d = 3584), for docs/performance.md.

    python benchmarks/selection_overhead.py                 # CPU
    python benchmarks/selection_overhead.py --device cuda   # on a GPU

Extra arguments are passed to ``tokenreduce bench``; results go to benchmarks/results/.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tokenreduce.cli import main

RESULTS = Path(__file__).resolve().parent / "results"

if __name__ == "__main__":
    extra = sys.argv[1:]
    device = extra[extra.index("--device") + 1] if "--device" in extra else "cpu"
    sys.exit(main(["bench", "--part", "selection", "--repeats", "5",
                   "--json", str(RESULTS / f"selection-{device}.json"), *extra]))
