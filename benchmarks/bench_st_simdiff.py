"""Time ST-SimDiff's selection per video, broken down into graph / communities / events / selection.

    PYTHONPATH=. python benchmarks/bench_st_simdiff.py                 # 64 frames, 13x13 and 14x15, d=3584
    PYTHONPATH=. python benchmarks/bench_st_simdiff.py --frames 16,32,64,128 --detectors connected_components
    PYTHONPATH=. python benchmarks/bench_st_simdiff.py --device cuda

The input is a synthetic video with real structure (persistent regions drawn from a palette,
plus noise and changes between frames), so that the graph has the edges, communities and events a
real video produces; purely random features would have no edge above tau_sim. Each measurement is
reported as minimum / median of ``--repeat`` runs after one warm-up (on a shared machine
the minimum is the better estimate of the uncontended cost). ``end_to_end`` is ``st_simdiff`` (paper
variant, ratio 0.3, with an importance signal) called as a user would; the stage columns call the
same building blocks one by one.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

import tokenreduce as tr
from tokenreduce.graph.centrality import centrality, community_sums
from tokenreduce.graph.events import TemporalDifference
from tokenreduce.graph.segments import community_keep_counts, rank_in_community
from tokenreduce.strategies.st_simdiff_select import build_graph

STAGES = ("graph", "communities", "events", "selection", "end_to_end")


def synthetic_video(frames: int, h: int, w: int, d: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    palette = torch.randn(12, d, generator=g)
    regions = torch.randint(0, 12, (1, 1, h // 3 + 1, w // 3 + 1), generator=g)
    layout = regions.repeat_interleave(3, 2).repeat_interleave(3, 3)[:, :, :h, :w].expand(1, frames, h, w).clone()
    change = torch.rand(1, frames, h, w, generator=g) < 0.08
    layout[change] = torch.randint(0, 12, (int(change.sum()),), generator=g)
    x = palette[layout] + 0.35 * torch.randn(1, frames, h, w, d, generator=g)
    return x.to(dtype)


def timed_ms(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """(minimum, median) wall time in ms over ``repeat`` runs after one warm-up."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    fn()
    times = []
    for _ in range(repeat):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1000)
    return min(times), statistics.median(times)


def breakdown(tokens: tr.VisualTokens, detector_name: str,
              repeat: int) -> tuple[dict[str, tuple[float, float]], int, int]:
    cfg = tr.build("st_simdiff", ratio=0.3, community=detector_name).config
    valid = tokens.flat_valid()
    graph = build_graph(tokens, cfg, temporal=True)
    mask = graph.weight > cfg.tau_sim
    detector = cfg.community.build()
    labels = detector.detect(graph, mask)

    def select() -> torch.Tensor:
        sums = community_sums(graph, labels, valid)
        keep = community_keep_counts(sums.sizes, [0.3])
        return rank_in_community(labels, centrality(graph, sums), valid) < keep

    events = TemporalDifference(tau_diff=cfg.tau_diff)
    reducer = tr.build("st_simdiff", ratio=0.3, community=detector_name)
    timed = tokens.replace(importance=torch.rand(tokens.features.shape[:4], device=tokens.device))
    times = {
        "graph": timed_ms(lambda: build_graph(tokens, cfg, temporal=True), repeat),
        "communities": timed_ms(lambda: detector.detect(graph, mask), repeat),
        "events": timed_ms(lambda: events.detect(tokens, graph), repeat),
        "selection": timed_ms(select, repeat),
        "end_to_end": timed_ms(lambda: reducer(timed), repeat),
    }
    return times, int(mask.sum()), len(torch.unique(labels))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", default="64", help="comma-separated frame counts")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dim", type=int, default=3584)
    parser.add_argument("--grids", default="13x13,14x15")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--detectors", default="connected_components,louvain,leiden")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads, {os.cpu_count()} cpus, "
          f"{platform.processor() or platform.machine()}")
    print("| frames x grid | dtype | detector | " + " | ".join(f"{k} ms (min / median)" for k in STAGES)
          + " | edges > tau_sim | communities |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for frames, grid, dtype_name in itertools.product(
            [int(f) for f in args.frames.split(",")], args.grids.split(","), args.dtypes.split(",")):
        h, w = (int(v) for v in grid.split("x"))
        features = synthetic_video(frames, h, w, args.dim, getattr(torch, dtype_name)).to(args.device)
        tokens = tr.VisualTokens(features)
        for detector in args.detectors.split(","):
            times, edges, communities = breakdown(tokens, detector, args.repeat)
            cells = " | ".join(f"{times[k][0]:.1f} / {times[k][1]:.1f}" for k in STAGES)
            print(f"| {frames}x{h}x{w} | {dtype_name} | {detector} | {cells} | {edges} | {communities} |",
                  flush=True)


if __name__ == "__main__":
    main()
