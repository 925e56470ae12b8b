"""`adactrl` command line: train, evaluate, profile, infer, and the embedded model's tools."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from adactrl.commands import baselines, evaluate, importance, infer, pretrain, profile, train, tune

COMMANDS = (train, evaluate, infer, profile, baselines, pretrain, importance, tune)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adactrl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (ValueError, FileNotFoundError) as err:
        print(f"adactrl {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
