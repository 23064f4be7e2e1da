"""Time FrameFusion's whole schedule (``reducer(tokens)``) on a video-sized grid.

Usage: ``python benchmarks/framefusion_steps.py [--frames 64] [--side 24] [--dim 1024] [--noise 2.0]
[--repeats 3] [--threads 1]``. Prints how many merges the schedule recorded and the best process
CPU time and wall time of ``--repeats`` runs (CPU time is the steadier figure on a shared machine).
"""

from __future__ import annotations

import argparse
import time

import torch

import tokenreduce as tr


def video(frames: int, side: int, dim: int, noise: float, seed: int = 0) -> torch.Tensor:
    """A static scene plus per-token noise of random strength (up to ``noise``), so that a part
    of the tokens is similar to its temporal neighbour and several merge points run."""
    g = torch.Generator().manual_seed(seed)
    scene = torch.randn(1, 1, side, side, dim, generator=g)
    strength = noise * torch.rand(1, frames, side, side, 1, generator=g)
    return scene + strength * torch.randn(1, frames, side, side, dim, generator=g)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--side", type=int, default=24)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--noise", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    features = video(args.frames, args.side, args.dim, args.noise)
    importance = torch.rand(features.shape[:4], generator=torch.Generator().manual_seed(1))
    tokens = tr.VisualTokens(features, importance=importance, num_layers=28)
    reducer = tr.build("framefusion", cost=0.3, similarity_lower_bound=0.6)
    cpu = wall = float("inf")
    for _ in range(args.repeats):
        start_cpu, start_wall = time.process_time(), time.perf_counter()
        result = reducer(tokens)
        cpu, wall = min(cpu, time.process_time() - start_cpu), min(wall, time.perf_counter() - start_wall)
    print(f"grid {tuple(features.shape)}, {args.threads} thread(s): {len(result.info['sparsity'][0])} merges "
          f"recorded, kept {result.kept_counts().tolist()[0]} of {tokens.num_tokens}; best of {args.repeats}: "
          f"{cpu:.3f} s CPU, {wall:.3f} s wall")


if __name__ == "__main__":
    main()
