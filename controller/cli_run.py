"""`ramp demo` and `ramp run` (local mode: Envoy route file, state in a directory).

`ramp status|pause|resume|abort|promote --state-dir DIR` act on a local controller's state
directory (see cli_cluster); the controller applies a command on its next tick.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

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
