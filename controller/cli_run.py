"""`ramp demo`, `ramp run` (local mode) and the local rollout commands.

Local mode drives Envoy through its route file and keeps state in a directory;
status/pause/resume/abort/promote act on that directory (the controller applies
a command on its next tick).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from controller.engine.phases import Command
from controller.observability import configure_logging

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

DEFAULT_STATE_DIR = Path(".ramp/state")


def register(subparsers: Subparsers) -> None:
    demo = subparsers.add_parser("demo", help="run a real rollout on the local stack (Envoy + Prometheus)")
    demo.add_argument("--scenario", choices=("healthy", "faulty"), default="healthy")
    demo.add_argument("--spec", type=Path, help="rollout spec to use (default rollout-specs/demo.yaml)")
    demo.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")
    demo.add_argument("--timeout", type=float, default=300.0, help="give up after this many seconds")
    demo.set_defaults(handler=_demo)

    run = subparsers.add_parser("run", help="run the controller in local mode (Envoy route file)")
    run.add_argument("--specs", type=Path, default=Path("rollout-specs"), help="directory of rollout specs")
    run.add_argument("--prometheus", required=True, help="Prometheus base URL")
    run.add_argument("--envoy-routes-dir", type=Path, required=True, help="directory Envoy watches for routes")
    run.add_argument("--envoy-admin", required=True, help="Envoy admin URL, to confirm route updates")
    run.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    run.add_argument("--once", action="store_true", help="run one tick and exit")
    run.set_defaults(handler=_run)

    status = subparsers.add_parser("status", help="show local rollouts (phase, step, weights, gates)")
    status.add_argument("rollout", nargs="?")
    status.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    status.add_argument("-o", "--output", choices=("table", "json"), default="table")
    status.set_defaults(handler=_status)

    for command in Command:
        sub = subparsers.add_parser(command.value, help=f"{command.value} a local rollout on the next tick")
        sub.add_argument("rollout")
        sub.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
        sub.set_defaults(handler=_command, command_value=command)


def _demo(args: argparse.Namespace) -> int:
    from controller.demo import run_demo
    from controller.spec_loader import SpecError

    configure_logging(level="warning")
    progress = sys.stderr if args.json else sys.stdout
    try:
        summary = run_demo(args.scenario, spec_path=args.spec, out=progress, timeout=args.timeout)
    except SpecError as exc:
        print(exc, file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(summary, indent=2))
    return 0 if summary["outcome"] == summary["expected_outcome"] else 1


def _run(args: argparse.Namespace) -> int:
    from controller.analysis.prometheus import PrometheusSource
    from controller.engine.runner import RolloutRunner
    from controller.routing.envoy import EnvoyFileRouter
    from controller.spec_directory import SpecDirectory
    from controller.state.file_store import FileStateStore

    configure_logging(level="info")
    specs = SpecDirectory(args.specs)
    runner = RolloutRunner(
        router=EnvoyFileRouter(args.envoy_routes_dir, args.envoy_admin),
        metrics=PrometheusSource(args.prometheus),
        store=FileStateStore(args.state_dir),
    )
    while True:
        if specs.refresh():
            for problem in specs.problems:
                print(f"ignored: {problem}", file=sys.stderr)
            runner.set_rollouts(specs.rollouts)
        runner.tick()
        if args.once:
            return 0
        time.sleep(min(1.0, runner.base_interval() / 5))


def _status(args: argparse.Namespace) -> int:
    from controller.state.file_store import FileStateStore

    states = FileStateStore(args.state_dir).all_states()
    if args.rollout:
        states = [s for s in states if s.rollout == args.rollout]
        if not states:
            print(f"no rollout {args.rollout!r} in {args.state_dir}", file=sys.stderr)
            return 1
    if args.output == "json":
        print(json.dumps([s.model_dump(mode="json") for s in states], indent=2))
        return 0
    print(f"{'ROLLOUT':<20} {'PHASE':<12} {'STEP':>4}  REASON")
    for s in states:
        print(f"{s.rollout:<20} {s.phase.value:<12} {s.step + 1:>4}  {s.reason}")
        for gate in s.last_gates:
            value = "n/a" if gate.value is None else f"{gate.value:.2f}"
            print(f"{'':20}   gate {gate.gate:<16} {gate.verdict:<8} value={value}")
    return 0


def _command(args: argparse.Namespace) -> int:
    from controller.state.file_store import FileStateStore

    store = FileStateStore(args.state_dir)
    if store.load(args.rollout) is None:
        print(f"no rollout {args.rollout!r} in {args.state_dir}", file=sys.stderr)
        return 1
    store.request(args.rollout, args.command_value)
    print(f"{args.command_value.value} requested for {args.rollout}; applied on the next tick")
    return 0
