"""Time ST-SimDiff's selection (both variants), the official code, and the other merging strategies
per video, on inputs of different kinds: CPU time on one thread by default, min / median / max.

    PYTHONPATH=. python benchmarks/bench_st_simdiff.py                   # both variants, three inputs
    PYTHONPATH=. python benchmarks/bench_st_simdiff.py --official        # + the official code re-run
    PYTHONPATH=. python benchmarks/bench_st_simdiff.py --others          # FrameFusion, VisionZip, PruMerge+
    PYTHONPATH=. python benchmarks/bench_st_simdiff.py --breakdown --detectors connected_components,louvain

Inputs (64 frames of 13x13 tokens at d = 3584 by default, fp32):

- ``static_cut``: four large static regions (a few big components of thousands of tokens), fresh
  noise of 0.3 on every token of every frame, and a scene cut halfway (a new layout): the hard
  case for the community sums.
- ``palette``: 3x3-token regions drawn from 12 vectors, 8 % of the tokens change every frame,
  noise 0.35: hundreds of small communities.
- ``random_walk``: every token is its previous frame's token plus noise of 0.3 (what
  ``tokenreduce bench`` uses): long temporal chains.

``paper`` is ``st_simdiff(ratio=0.3)``, ``reference`` ``st_simdiff(variant="reference", cost=0.3)``,
both called with an importance signal as an adapter calls them, on ``VisualTokens`` made (and
validated) once. ``official`` re-runs the official code's tensor steps
(``tests/simdiff_official.py``, with upstream's ``torch.mm`` for the component matrices) on the
same video and checks that it keeps the same tokens as ``reference``. With ``--others``,
FrameFusion runs at the same scale; VisionZip and PruMerge+ at their encoder's: 64 frames of
24x24 patches, d = 1024, keys = the features, a heavy-tailed CLS attention.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

import tokenreduce as tr
from tokenreduce.bench.selection import paper_tokens
from tokenreduce.graph.centrality import centrality, community_sums
from tokenreduce.graph.events import TemporalDifference
from tokenreduce.graph.segments import community_keep_counts, rank_in_community
from tokenreduce.strategies.st_simdiff_select import build_graph

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from simdiff_official import official_run  # noqa: E402  (the official steps live beside the tests)

STAGES = ("graph", "communities", "events", "selection", "end_to_end")


# ----- inputs ----------------------------------------------------------------------------------
def static_cut(frames: int, h: int, w: int, d: int, seed: int = 0) -> torch.Tensor:
    """Large static regions, noise 0.3 on every token of every frame, a scene cut halfway."""
    g = torch.Generator().manual_seed(seed)
    palette = torch.randn(8, d, generator=g)
    before = torch.zeros(h, w, dtype=torch.long)
    before[: h // 2, : w // 2], before[: h // 2, w // 2:], before[h // 2:, : w // 3] = 1, 2, 3
    after = before + 4
    after[h // 3:] = 6
    layout = torch.stack([before if f < frames // 2 else after for f in range(frames)])
    return (palette[layout] + 0.3 * torch.randn(frames, h, w, d, generator=g)).unsqueeze(0)


def palette_video(frames: int, h: int, w: int, d: int, seed: int = 0) -> torch.Tensor:
    """3x3-token regions from 12 vectors, 8 % of the tokens change per frame, noise 0.35."""
    g = torch.Generator().manual_seed(seed)
    palette = torch.randn(12, d, generator=g)
    regions = torch.randint(0, 12, (1, 1, h // 3 + 1, w // 3 + 1), generator=g)
    layout = regions.repeat_interleave(3, 2).repeat_interleave(3, 3)[:, :, :h, :w].expand(1, frames, h, w).clone()
    change = torch.rand(1, frames, h, w, generator=g) < 0.08
    layout[change] = torch.randint(0, 12, (int(change.sum()),), generator=g)
    return palette[layout] + 0.35 * torch.randn(1, frames, h, w, d, generator=g)


def random_walk(frames: int, h: int, w: int, d: int, seed: int = 0) -> torch.Tensor:
    """Every token its previous frame's token plus noise (``tokenreduce bench``'s input)."""
    return paper_tokens(frames, h, w, d, "cpu", seed=seed).features


INPUTS: dict[str, Callable[..., torch.Tensor]] = {
    "static_cut": static_cut, "palette": palette_video, "random_walk": random_walk}


def cls_attention(frames: int, patches: int, seed: int = 0) -> torch.Tensor:
    """A heavy-tailed attention over each frame's patches (a softmax of Gaussian logits)."""
    g = torch.Generator().manual_seed(seed + 1)
    return torch.softmax(1.5 * torch.randn(frames, patches, generator=g), dim=-1)


# ----- timing ----------------------------------------------------------------------------------
def cpu_ms(fn: Callable[[], object], repeat: int) -> list[float]:
    """CPU times (all threads of the process) in ms of ``repeat`` calls after one warm-up."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.process_time()
        fn()
        times.append((time.process_time() - start) * 1000)
    return times


def spread(times: list[float]) -> str:
    return f"{min(times):.1f} / {statistics.median(times):.1f} / {max(times):.1f}"


def importance_of(features: torch.Tensor, seed: int = 1) -> torch.Tensor:
    return torch.rand(features.shape[:4], generator=torch.Generator().manual_seed(seed))


# ----- tables ----------------------------------------------------------------------------------
def variants_rows(name: str, features: torch.Tensor, repeat: int, official: bool) -> list[str]:
    importance = importance_of(features)
    tokens = tr.VisualTokens(features, importance=importance, num_layers=28)
    paper = tr.build("st_simdiff", ratio=0.3)
    reference = tr.build("st_simdiff", variant="reference", cost=0.3)
    graph = build_graph(tokens, paper.config, temporal=True)
    labels = paper.config.community.build().detect(graph, graph.weight > paper.config.tau_sim)
    sizes = torch.unique(labels, return_counts=True)[1]
    shape = "x".join(str(s) for s in features.shape[1:4])
    where = f"| {name} | {shape} | {int((sizes > 1).sum())} | {int(sizes.max())} |"
    rows = []
    for variant, reducer in (("paper", paper), ("reference", reference)):
        rows.append(f"{where} {variant} | {spread(cpu_ms(lambda: reducer(tokens), repeat))} | - |")
    if official:
        found: dict = {}
        kept: dict[str, tuple] = {}

        def run_official() -> None:
            kept["official"] = official_run(features[0], importance[0], cost=0.3, pairwise="mm", found=found)

        times = cpu_ms(run_official, max(1, repeat // 3))
        same = kept["official"][1] == set(reference(tokens).keep_indices(0).tolist())
        stage1 = set(tr.build("st_simdiff_reference_stage1", cost=0.3)(tokens).keep_indices(0).tolist())
        verdict = "yes" if same else "NO: " + near_ties(features[0], stage1 ^ kept["official"][0],
                                                         found["components"])
        rows.append(f"{where} official | {spread(times)} | {verdict} |")
    return rows


def near_ties(x: torch.Tensor, differing: set[int], components: list[list[int]]) -> str:
    """Where the stage-1 kept sets differ: the float64 weights (mean cosine to the component) of
    the tokens concerned; weights closer than float32 can resolve are ordered by rounding."""
    flat = x.reshape(-1, x.shape[-1]).double()
    parts = []
    for members in components:
        inside = sorted(set(members) & differing)
        if inside:
            unit = torch.nn.functional.normalize(flat[members], dim=1)
            weights = unit[[members.index(i) for i in inside]] @ unit.sum(0) / len(members)
            parts.append(f"tokens {inside} of a {len(members)}-token component, float64 weights "
                         + ", ".join(f"{w:.10f}" for w in weights.tolist()))
    return "; ".join(parts) or f"tokens {sorted(differing)} (stage 2)"


def others_rows(name: str, frames: int, repeat: int) -> list[str]:
    rows = []
    features = INPUTS[name](frames, 13, 13, 3584)
    tokens = tr.VisualTokens(features, importance=importance_of(features), num_layers=28)
    framefusion = tr.build("framefusion", cost=0.3)
    kept = int(framefusion(tokens).kept_counts()[0])
    rows.append(f"| {name} | framefusion | {frames}x13x13x3584 | {kept} | "
                f"{spread(cpu_ms(lambda: framefusion(tokens), repeat))} |")
    features = INPUTS[name](frames, 24, 24, 1024)
    attention = cls_attention(frames, 24 * 24).reshape(1, frames, 24, 24)
    tokens = tr.VisualTokens(features, importance=attention, signals={"keys": features})
    for reducer in (tr.build("visionzip", preset=64), tr.build("prumerge_plus")):
        reduction = reducer(tokens)
        kept = int(reduction.kept_counts()[0]) + int(reduction.extra_counts()[0])
        rows.append(f"| {name} | {reducer.registered_name} | {frames}x24x24x1024 | {kept} | "
                    f"{spread(cpu_ms(lambda: reducer(tokens), repeat))} |")
    return rows


def breakdown(tokens: tr.VisualTokens, detector_name: str, repeat: int) -> tuple[dict[str, str], int, int]:
    """Stage times of the paper variant's selection with one community detector."""
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
    timed = tokens.replace(importance=importance_of(tokens.features))
    times = {
        "graph": cpu_ms(lambda: build_graph(tokens, cfg, temporal=True), repeat),
        "communities": cpu_ms(lambda: detector.detect(graph, mask), repeat),
        "events": cpu_ms(lambda: events.detect(tokens, graph), repeat),
        "selection": cpu_ms(select, repeat),
        "end_to_end": cpu_ms(lambda: reducer(timed), repeat),
    }
    return {k: spread(v) for k, v in times.items()}, int(mask.sum()), len(torch.unique(labels))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", default=",".join(INPUTS), help="comma-separated: " + ", ".join(INPUTS))
    parser.add_argument("--frames", default="64", help="comma-separated frame counts")
    parser.add_argument("--grids", default="13x13")
    parser.add_argument("--dim", type=int, default=3584)
    parser.add_argument("--dtypes", default="float32", help="for --breakdown")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--official", action="store_true", help="also time the official code re-run")
    parser.add_argument("--others", action="store_true", help="FrameFusion, VisionZip and PruMerge+ instead")
    parser.add_argument("--breakdown", action="store_true", help="stage times per community detector instead")
    parser.add_argument("--detectors", default="connected_components,louvain,leiden")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} thread(s), {os.cpu_count()} cpus, "
          f"{platform.processor() or platform.machine()}, load average {os.getloadavg()[0]:.1f}; "
          f"CPU ms min / median / max of {args.repeat} after a warm-up")
    frame_counts = [int(f) for f in args.frames.split(",")]
    grids = [tuple(int(v) for v in grid.split("x")) for grid in args.grids.split(",")]
    if args.others:
        print("| input | strategy | frames x grid x d | kept | CPU ms |\n|---|---|---|---|---|")
        for name in args.inputs.split(","):
            for frames in frame_counts:
                for row in others_rows(name, frames, args.repeat):
                    print(row, flush=True)
    elif args.breakdown:
        print("| input | frames x grid | dtype | detector | " + " | ".join(f"{k} CPU ms" for k in STAGES)
              + " | edges > tau_sim | communities |")
        print("|---" * (6 + len(STAGES)) + "|")
        for name in args.inputs.split(","):
            for frames in frame_counts:
                for (h, w) in grids:
                    for dtype_name in args.dtypes.split(","):
                        features = INPUTS[name](frames, h, w, args.dim).to(getattr(torch, dtype_name))
                        tokens = tr.VisualTokens(features)
                        for detector in args.detectors.split(","):
                            times, edges, communities = breakdown(tokens, detector, args.repeat)
                            cells = " | ".join(times[k] for k in STAGES)
                            print(f"| {name} | {frames}x{h}x{w} | {dtype_name} | {detector} | {cells} | "
                                  f"{edges} | {communities} |", flush=True)
    else:
        print("| input | frames x grid | communities | largest | variant | CPU ms | same kept set as reference |")
        print("|---|---|---|---|---|---|---|")
        for name in args.inputs.split(","):
            for frames in frame_counts:
                for (h, w) in grids:
                    for row in variants_rows(name, INPUTS[name](frames, h, w, args.dim), args.repeat,
                                             args.official):
                        print(row, flush=True)


if __name__ == "__main__":
    main()
