"""The `ramp` command line: argparse subcommands, one small module per group.

Each command module exposes `register(subparsers)`, which adds its subcommands and
sets `handler` (a `Callable[[argparse.Namespace], int]` returning the exit code)
as a parser default. To add commands, write a module with `register` and list it
in COMMAND_MODULES below.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from controller import cli_run, cli_spec

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

Handler = Callable[[argparse.Namespace], int]


class CommandModule(Protocol):
    def register(self, subparsers: Subparsers) -> None: ...


# Command modules, in the order their commands appear in --help.
COMMAND_MODULES: tuple[CommandModule, ...] = (cli_spec, cli_run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ramp",
        description="Progressive delivery for Kubernetes + Istio: header tests, weighted steps, SLO gates.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
