"""Native torch segment reductions against torch-scatter, on ST-SimDiff's workload.

    PYTHONPATH=. python benchmarks/bench_segment_ops.py

Per-community sums of normalised features (``tokenreduce.graph.blocked.segment_sums``: one
``embedding_bag`` for fp32 features) and per-community minima of node ids
(``scatter_reduce(amin)``, what labels and connected components use), against
``torch_scatter.scatter_add`` (same row blocks) / ``scatter_min`` when torch-scatter is installed.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from tokenreduce.graph.blocked import BLOCK_ROWS, segment_sums


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=64 * 169)
    parser.add_argument("--dim", type=int, default=3584)
    parser.add_argument("--communities", default="30,700,5000")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    try:
        import torch_scatter
    except ImportError:
        torch_scatter = None
    g = torch.Generator().manual_seed(0)
    flat = torch.randn(args.nodes, args.dim, generator=g)
    scale = torch.rand(args.nodes, generator=g)
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, torch-scatter "
          f"{getattr(torch_scatter, '__version__', 'not installed')}")
    print("| communities | op | native ms | torch-scatter ms |")
    print("|---|---|---|---|")
    for count in (int(c) for c in args.communities.split(",")):
        segment = torch.sort(torch.randint(0, count, (args.nodes,), generator=g)).values
        native_sum, native_min, other_sum, other_min = measure(flat, scale, segment, count, args.repeat,
                                                               torch_scatter)
        print(f"| {count} | sums of normalised features | {native_sum:.1f} | {other_sum:.1f} |")
        print(f"| {count} | min member id | {native_min:.2f} | {other_min:.2f} |", flush=True)


def measure(flat: torch.Tensor, scale: torch.Tensor, segment: torch.Tensor, count: int, repeat: int,
            torch_scatter: object) -> tuple[float, float, float, float]:
    """(native sums, native min, torch-scatter sums, torch-scatter min) in ms (NaN when absent)."""
    ids = torch.arange(flat.shape[0])
    native_sum = median_ms(lambda: segment_sums(flat, scale, ids, segment, count), repeat)
    native_min = median_ms(lambda: torch.full((count,), flat.shape[0]).scatter_reduce_(
        0, segment, ids, reduce="amin"), repeat)
    if torch_scatter is None:
        return native_sum, native_min, float("nan"), float("nan")

    def scatter_blocked() -> torch.Tensor:  # row blocks, so that each scaled block stays in cache
        sums = torch.zeros(count, flat.shape[1])
        for start in range(0, flat.shape[0], BLOCK_ROWS):
            stop = start + BLOCK_ROWS
            torch_scatter.scatter_add(  # type: ignore[attr-defined]
                flat[start:stop] * scale[start:stop, None], segment[start:stop], dim=0, out=sums)
        return sums

    other_sum = median_ms(scatter_blocked, repeat)
    other_min = median_ms(lambda: torch_scatter.scatter_min(  # type: ignore[attr-defined]
        ids, segment, dim=0, dim_size=count), repeat)
    return native_sum, native_min, other_sum, other_min

if __name__ == "__main__":
    main()
