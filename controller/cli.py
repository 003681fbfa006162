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

from controller import (
    cli_cluster,
    cli_commands,
    cli_loadtest,
    cli_ping,
    cli_report,
    cli_resource,
    cli_run,
    cli_spec,
    cli_status,
)
from controller.observability import configure_logging

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

Handler = Callable[[argparse.Namespace], int]


class CommandModule(Protocol):
    def register(self, subparsers: Subparsers) -> None: ...


# Command modules, in the order their commands appear in --help.
COMMAND_MODULES: tuple[CommandModule, ...] = (
    cli_spec, cli_resource, cli_run, cli_cluster, cli_status, cli_commands, cli_ping, cli_loadtest, cli_report,
)


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
    configure_logging(level="warning")  # logs go to stderr; stdout is the command's output (tables, JSON)
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    except Exception as exc:  # errors we can explain (Kubernetes, kubeconfig, Envoy, ...) without a traceback
        if type(exc).__module__.startswith("controller."):
            describe = getattr(exc, "describe", None)
            print(f"ramp {args.command}: {describe() if callable(describe) else exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
