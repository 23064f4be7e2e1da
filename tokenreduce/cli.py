"""The ``tokenreduce`` command line: ``--version``, ``list``, ``demo``, ``visualize`` and ``bench``.

Commands register with ``@command(name, help)``; heavy libraries (PyAV, matplotlib, transformers)
are imported only when a command that needs them runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

import tokenreduce
from tokenreduce.adapters.chunked_prefill import DEFAULT_PREFILL_CHUNK
from tokenreduce.registry import REGISTRIES, summary_of

LISTED_KINDS = ("strategy", "community", "adapter")
HEADINGS = {"strategy": "Strategies", "community": "Community detectors", "adapter": "Model adapters"}


def _list(args: argparse.Namespace) -> int:
    kinds = [args.kind] if args.kind else LISTED_KINDS
    for kind in kinds:
        registry = REGISTRIES[kind]
        print(f"{HEADINGS[kind]}:")
        entries = list(registry.items())
        if not entries:
            print("  (none installed)")
        width = max((len(name) for name, _ in entries), default=0)
        for name, cls in entries:
            print(f"  {name:<{width}}  {summary_of(cls)}")
            for heading, value in getattr(cls, "capabilities", dict)().items():  # adapters: what each supports
                print(f"  {'':<{width}}    {heading}: {value}")
        print()
    return 0


Runner = Callable[[argparse.Namespace], int]
Configure = Callable[[argparse.ArgumentParser], Runner]
COMMANDS: dict[str, tuple[str, Configure]] = {}


def command(name: str, help_text: str) -> Callable[[Configure], Configure]:
    """Register a sub-command: ``@command("demo", "...")`` on ``def configure(parser) -> runner``."""

    def decorator(configure: Configure) -> Configure:
        COMMANDS[name] = (help_text, configure)
        return configure

    return decorator


def positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def keep_ratio(text: str) -> float:
    """argparse type: a keep ratio in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"the ratio must be in (0, 1], got {value}")
    return value


def prefill_chunk(text: str) -> int | None:
    """argparse type: slots per prefill chunk (an int >= 1), or ``none`` for an unchunked prefill."""
    if text.strip().lower() == "none":
        return None
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1 or 'none', got {text!r}") from None


def _add_showcase_options(parser: argparse.ArgumentParser, *, default_out: str) -> None:
    parser.add_argument("--strategy", action="append", metavar="NAME|CONFIG",
                        help="a registered strategy name or a .json/.yaml config; repeat for several rows "
                             "(default: every registered strategy)")
    parser.add_argument("--ratio", type=keep_ratio,
                        help="fraction of each video's tokens to keep, the same number for every strategy "
                             "(default: 0.3 for strategy names; a config file keeps its own budget)")
    parser.add_argument("--frames", type=positive_int, default=16, help="frames to sample (default 16)")
    parser.add_argument("--out", default=default_out, help=f"PNG to write (default {default_out})")
    parser.add_argument("--html", action="store_true", help="also write an HTML page next to the PNG")
    parser.add_argument("--model", metavar="PATH",
                        help="a local Qwen2-VL-family checkpoint: each strategy runs inside the whole model and "
                             "its run's record is drawn (default: the weight-free stand-in encoder, proxy signals)")
    parser.add_argument("--patches", type=positive_int, default=16,
                        help="patches per row of the stand-in encoder (default 16)")
    parser.add_argument("--columns", type=positive_int, default=8, help="frames shown in the picture (default 8)")


def _showcase(video: str | None, args: argparse.Namespace) -> int:
    from tokenreduce.showcase import Showcase, show

    return show(Showcase(video=video, strategies=args.strategy, ratio=args.ratio, frames=args.frames,
                         out=args.out, html=args.html, model=args.model, patches=args.patches,
                         columns=args.columns))


@command("demo", "decode a real video, reduce its tokens with every strategy, print a table, draw a picture")
def _configure_demo(parser: argparse.ArgumentParser) -> Runner:
    parser.add_argument("--video", metavar="PATH", help="your own video (default: the bundled Big Buck Bunny clip)")
    _add_showcase_options(parser, default_out="tokenreduce-demo.png")
    return lambda args: _showcase(args.video, args)


@command("visualize", "draw the tokens one or more strategies keep on a video (PNG, optional HTML)")
def _configure_visualize(parser: argparse.ArgumentParser) -> Runner:
    parser.add_argument("video", metavar="VIDEO", help="the video file")
    _add_showcase_options(parser, default_out="tokenreduce-visualize.png")
    return lambda args: _showcase(args.video, args)


def _list_of(item: Callable[[str], object], what: str) -> Callable[[str], list]:
    """argparse type: a comma-separated list of ``item`` values."""

    def parse(text: str) -> list:
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {what}, got {text!r}")
        return [item(p) for p in parts]

    return parse


def _strategy_spec(text: str) -> object:
    """argparse type: a strategy spec (``compare.parse_spec``); a malformed one is a usage error."""
    from tokenreduce.compare import parse_spec

    try:
        return parse_spec(text)
    except tokenreduce.TokenReduceError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def even_frames(text: str) -> int:
    """argparse type: a positive even frame count (the benchmark model takes frames in pairs)."""
    value = positive_int(text)
    if value % 2:
        raise argparse.ArgumentTypeError(f"frame counts must be even (frames enter the model in pairs), got {value}")
    return value


def resolution_px(text: str) -> int:
    """argparse type: a frame side in pixels, a multiple of 28 (the model's merged patch)."""
    value = positive_int(text)
    if value % 28:
        raise argparse.ArgumentTypeError(f"the resolution must be a multiple of 28 pixels, got {value}")
    return value


@command("bench", "measure selection overhead and end-to-end prefill time / memory, full vs reduced")
def _configure_bench(parser: argparse.ArgumentParser) -> Runner:
    parser.add_argument("--part", choices=("selection", "end-to-end", "all"), default="all",
                        help="which benchmark to run (default all)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run (default cpu)")
    parser.add_argument("--strategy", action="append", metavar="NAME|CONFIG", type=_strategy_spec,
                        help="strategy to measure: a name, a .json/.yaml config, a JSON object, or a name with "
                             "options (st_simdiff:variant=reference); repeat for several (default: every "
                             "registered one for selection; st_simdiff, fastv, visionzip, framefusion, evs, "
                             "vidcom2, dart, uniform when registered for end-to-end)")
    parser.add_argument("--ratios", type=_list_of(keep_ratio, "ratios in (0, 1]"), default=[0.3],
                        help="keep ratios of the reduced runs (default 0.3, the paper's budget; e.g. 0.3,0.5)")
    parser.add_argument("--selection-frames", type=positive_int, default=64,
                        help="frames of the selection benchmark (default 64)")
    parser.add_argument("--selection-grid", type=positive_int, default=13,
                        help="tokens per frame side in the selection benchmark (default 13: 169 per frame)")
    parser.add_argument("--dim", type=positive_int, default=3584, help="feature size for selection (default 3584)")
    parser.add_argument("--size", choices=("tiny", "small", "base"), default="small",
                        help="end-to-end model: tiny (tests), small (~59M parameters; default), base (~137M)")
    parser.add_argument("--frames", type=_list_of(even_frames, "even frame counts"), default=[8, 16, 32],
                        help="frame counts of the end-to-end benchmark (default 8,16,32)")
    parser.add_argument("--resolution", type=resolution_px, default=336,
                        help="frame side in pixels, a multiple of 28 (default 336: 144 tokens per 2 frames)")
    parser.add_argument("--repeats", type=positive_int, default=3,
                        help="timed runs per measurement (default 3; fewer give no spread and no verdicts)")
    parser.add_argument("--json", metavar="PATH", default="tokenreduce-bench.json",
                        help="results as JSON, rewritten as each measurement finishes (default "
                             "tokenreduce-bench.json; '' for none)")
    parser.add_argument("--plot", metavar="PATH", default="tokenreduce-bench.png",
                        help="plot of time and memory vs frames, redrawn as results come (default "
                             "tokenreduce-bench.png; '' for none)")
    parser.add_argument("--check-logits", action="store_true",
                        help="report how far the first-token logits of several configurations of one strategy "
                             "(at one ratio) are apart")
    parser.add_argument("--threads", type=positive_int,
                        help="CPU threads for torch (default: torch's choice); 1 makes CPU times most "
                             "stable on a machine shared with other work")
    parser.add_argument("--prefill-chunk", type=prefill_chunk, default=DEFAULT_PREFILL_CHUNK, metavar="N|none",
                        help="slots per chunk of the reduced runs' prefill before the first in-LLM step "
                             f"(tr.apply's prefill_chunk; default {DEFAULT_PREFILL_CHUNK}; 'none': unchunked)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")

    def run(args: argparse.Namespace) -> int:
        from tokenreduce.bench import BenchOptions
        from tokenreduce.bench import run as run_bench

        parts = ("selection", "end-to-end") if args.part == "all" else (args.part,)
        return run_bench(BenchOptions(
            parts=parts, device=args.device, strategies=args.strategy, ratios=tuple(args.ratios),
            selection_frames=args.selection_frames, selection_grid=args.selection_grid, dim=args.dim,
            size=args.size, frame_counts=tuple(args.frames), resolution=args.resolution, repeats=args.repeats,
            json_path=args.json or None, plot_path=args.plot or None, progress=not args.no_progress,
            threads=args.threads, check_logits=args.check_logits, prefill_chunk=args.prefill_chunk))

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokenreduce",
        description="Training-free visual-token reduction for video LLMs.",
    )
    parser.add_argument("--version", action="version", version=f"tokenreduce {tokenreduce.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    listing = sub.add_parser("list", help="list registered strategies, community detectors and adapters")
    listing.add_argument("kind", nargs="?", choices=LISTED_KINDS, help="only this kind")
    listing.set_defaults(run=_list)
    for name, (help_text, configure) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text)
        sub_parser.set_defaults(run=configure(sub_parser))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "run", None) is None:
        parser.print_help()
        return 0
    try:
        return int(args.run(args) or 0)
    except tokenreduce.TokenReduceError as exc:
        print(f"tokenreduce: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
