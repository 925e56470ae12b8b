"""`adactrl` command line: train, evaluate, profile, infer, and the embedded model's tools."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from adactrl.atomic import RunFileError
from adactrl.commands import baselines, evaluate, importance, infer, pretrain, profile, serve, train, tune

COMMANDS = (train, evaluate, infer, profile, baselines, pretrain, importance, tune, serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adactrl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def normalise_flags(parser: argparse.ArgumentParser, argv: Sequence[str]) -> list[str]:
    """Every flag is spelled with underscores (`--num_epochs`, as in the seed documents). A dashed
    spelling of a known flag (`--list-vocabulary`, `--no-stem_self_only`) still works for one
    release, with a warning that names the new spelling."""
    argv = list(argv)
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    command = commands.get(argv[0]) if argv else None
    if command is None:
        return argv
    known = command._option_string_actions
    for i, arg in enumerate(argv[1:], start=1):
        if arg == "--":
            break
        flag, sep, value = arg.partition("=")
        if not flag.startswith("--") or flag in known:
            continue
        spelled = "--" + flag[2:].replace("-", "_")
        if spelled in known:
            print(f"adactrl {argv[0]}: warning: {flag} is deprecated and will be removed in the next release; "
                  f"use {spelled}", file=sys.stderr)  # fmt: skip
            argv[i] = spelled + sep + value
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(normalise_flags(parser, sys.argv[1:] if argv is None else argv))
    try:
        return int(args.run(args) or 0)
    except (ValueError, FileNotFoundError, ConnectionError, RunFileError) as err:
        print(f"adactrl {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
