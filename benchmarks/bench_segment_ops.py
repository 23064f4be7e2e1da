"""Native torch segment reductions against torch-scatter, on ST-SimDiff's workload.

    PYTHONPATH=. python benchmarks/bench_segment_ops.py

Per-community sums of normalised features (``index_add_`` over blocks of rows, what
``tokenreduce.graph.blocked.segment_sums`` does) and per-community minima of node ids
(``scatter_reduce(amin)``, what labels and connected components use), against
``torch_scatter.scatter_add`` / ``scatter_min`` when torch-scatter is installed.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from tokenreduce.graph.blocked import segment_sums


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
        ids = torch.arange(args.nodes)
        native_sum = median_ms(lambda: segment_sums(flat, scale, segment, count), args.repeat)
        native_min = median_ms(lambda: torch.full((count,), args.nodes).scatter_reduce_(
            0, segment, ids, reduce="amin"), args.repeat)
        other_sum = other_min = float("nan")
        if torch_scatter is not None:
            other_sum = median_ms(lambda: torch_scatter.scatter_add(
                flat * scale[:, None], segment, dim=0, dim_size=count), args.repeat)
            other_min = median_ms(lambda: torch_scatter.scatter_min(ids, segment, dim=0, dim_size=count),
                                  args.repeat)
        print(f"| {count} | sums of normalised features | {native_sum:.1f} | {other_sum:.1f} |")
        print(f"| {count} | min member id | {native_min:.2f} | {other_min:.2f} |", flush=True)


if __name__ == "__main__":
    main()
