"""The ``tokenreduce`` command line: ``--version`` and ``list`` (more commands register here)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

import tokenreduce
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
