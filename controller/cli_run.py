"""`ramp demo` and `ramp run` (local mode: Envoy route file, state in a directory).

`ramp status|pause|resume|abort|promote --state-dir DIR` act on a local controller's state
directory; the controller applies a command on its next tick. `ramp run` locks its state directory
(one controller per directory) and writes `local-controller.json` there, so those commands find its
Envoy admin. Both commands, and `ramp controller`, run the same ControllerLoop (controller_loop).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from controller.observability import configure_logging

if TYPE_CHECKING:
    from collections.abc import Sequence

    from controller.spec_loader import SpecProblem
    from controller.spec_notify import Notification

    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

DEFAULT_STATE_DIR = Path(".ramp/state")
DEFAULT_TICK_DEADLINE = 20.0  # = controller_loop.DEFAULT_TICK_DEADLINE (not imported: keeps `ramp --help` light)
LOCAL_LOOP_INTERVAL = 0.25  # seconds between loop iterations of `ramp run`; the runner decides what is due


def _deadline_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or not 1 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"must be between 1 and 3600 seconds, got {text!r}")
    return value


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"not a port (0-65535): {text!r}")
    return int(text)


def add_loop_arguments(parser: argparse.ArgumentParser, default_listen: str | None) -> None:
    """--tick-deadline, and --listen-address HOST:PORT (with --listen-port PORT as 0.0.0.0:PORT)."""
    from controller.http_endpoints import listen_address_type

    parser.add_argument(
        "--tick-deadline", type=_deadline_seconds, default=DEFAULT_TICK_DEADLINE, metavar="SECONDS",
        help=f"total time one tick may take; an overrunning tick is abandoned (default {DEFAULT_TICK_DEADLINE:g};"
        " at least --prometheus-timeout)",
    )  # fmt: skip
    where = "(default " + (default_listen + ")" if default_listen else "none: no HTTP server)")
    listen = parser.add_mutually_exclusive_group()
    listen.add_argument("--listen-address", type=listen_address_type, metavar="HOST:PORT",
                        help=f"serve /metrics, /healthz, /readyz here, e.g. 127.0.0.1:8080 or [::1]:8080 {where}")
    listen.add_argument("--listen-port", type=_port, metavar="PORT", help="same as --listen-address 0.0.0.0:PORT")
    parser.set_defaults(default_listen=default_listen)


def listen_address(args: argparse.Namespace) -> tuple[str, int] | None:
    """Where the HTTP endpoints listen, from --listen-address / --listen-port / the command's default."""
    from controller.http_endpoints import parse_listen_address

    if args.listen_address is not None:
        host, port = args.listen_address
        return str(host), int(port)
    if args.listen_port is not None:
        return "0.0.0.0", int(args.listen_port)
    return None if args.default_listen is None else parse_listen_address(args.default_listen)


def add_notifications_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--notifications", type=Path, metavar="FILE",
        help="YAML list of notifications (Slack, Teams, webhook) for every rollout, besides each spec's own",
    )  # fmt: skip


def global_notifications(args: argparse.Namespace, command: str) -> list[Notification] | None:
    """The --notifications file's list ([] without the option); None (problems printed) when it is invalid."""
    from controller.notify.observer import load_notifications
    from controller.spec_loader import SpecError

    if getattr(args, "notifications", None) is None:
        return []
    try:
        return load_notifications(args.notifications)
    except SpecError as exc:
        print(f"ramp {command}: --notifications:\n{exc}", file=sys.stderr)
        return None


def check_tick_deadline(tick_deadline: float, prometheus_timeout: float) -> None:
    if tick_deadline < prometheus_timeout:
        raise ValueError(f"--tick-deadline ({tick_deadline:g}s) must be at least --prometheus-timeout"
                         f" ({prometheus_timeout:g}s): a tick must have time for its Prometheus queries")


def register(subparsers: Subparsers) -> None:
    from controller.analysis.prometheus_auth import add_prometheus_arguments

    demo = subparsers.add_parser("demo", help="run a real rollout on the local stack (Envoy + Prometheus)")
    demo.add_argument("--scenario", choices=("healthy", "faulty"), default="healthy")
    demo.add_argument("--spec", type=Path, help="rollout spec to use (default rollout-specs/demo.yaml)")
    demo.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")
    demo.add_argument("--timeout", type=float, default=300.0, help="give up after this many seconds")
    demo.add_argument("--report", type=Path, metavar="PATH",
                      help="write the rollout's HTML report here (default: ramp-demo-SCENARIO.html)")  # fmt: skip
    add_notifications_argument(demo)
    demo.set_defaults(handler=_demo)

    run = subparsers.add_parser("run", help="run the controller in local mode (Envoy route file)")
    run.add_argument("--specs", type=Path, default=Path("rollout-specs"), help="directory of rollout specs")
    add_prometheus_arguments(run)
    run.add_argument("--envoy-routes-dir", type=Path, required=True, help="directory Envoy watches for routes")
    run.add_argument("--envoy-admin", required=True, help="Envoy admin URL, to confirm route updates")
    run.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    run.add_argument("--once", action="store_true", help="run one tick and exit (1 if it failed or overran)")
    add_notifications_argument(run)
    add_loop_arguments(run, default_listen=None)
    run.set_defaults(handler=_run)


def _demo(args: argparse.Namespace) -> int:
    from controller.demo import run_demo
    from controller.spec_loader import SpecError

    configure_logging(level="warning")
    progress = sys.stderr if args.json else sys.stdout
    notifications = global_notifications(args, "demo")
    if notifications is None:
        return 2
    report = args.report or Path(f"ramp-demo-{args.scenario}.html")
    problem = report_path_problem(report)
    if problem:
        print(f"ramp demo: --report {report}: {problem}", file=sys.stderr)
        return 2
    try:
        summary = run_demo(args.scenario, spec_path=args.spec, out=progress, timeout=args.timeout,
                           notifications=notifications, report=report)  # fmt: skip
    except SpecError as exc:
        print(exc, file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(summary, indent=2))
    if "report_error" in summary:
        return 1
    return 0 if summary["outcome"] == summary["expected_outcome"] else 1


def report_path_problem(path: Path) -> str | None:
    """Why a report could not be written at `path` (checked before a demo starts), or None."""
    from controller.report.write import overwrite_problem

    target = path.expanduser()
    problem = overwrite_problem(target)
    if problem is not None:
        return problem
    parent = target.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{parent} is not writable"
    return None


def _print_problems(problems: Sequence[SpecProblem]) -> None:
    for problem in problems:
        print(f"ignored: {problem}", file=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    import structlog

    from controller.analysis.prometheus_auth import prometheus_source_from_args
    from controller.controller_loop import ControllerLoop, Outcome
    from controller.controller_metrics import ControllerMetrics
    from controller.engine.runner import RolloutRunner
    from controller.engine.scheduler import TickScheduler
    from controller.hooks.evaluation import HookRounds
    from controller.hooks.post_rollout import PostRolloutHooks
    from controller.http_endpoints import EndpointServer
    from controller.local.availability import EnvoyAvailability
    from controller.notify.observer import DRAIN_SECONDS, start_notifications
    from controller.routing.envoy import EnvoyFileRouter
    from controller.spec_directory import SpecDirectory
    from controller.state.file_store import FileStateStore, StateDirLocked
    from controller.state.local_info import write_local_info
    from controller.state.timeline_file import TimelineFile

    configure_logging(level="info")
    try:
        source = prometheus_source_from_args(args)
        check_tick_deadline(args.tick_deadline, source.timeout_seconds)
    except ValueError as exc:
        print(f"ramp run: {exc}", file=sys.stderr)
        return 2
    notifications = global_notifications(args, "run")
    if notifications is None:
        return 2
    store = FileStateStore(args.state_dir)
    try:
        store.lock()
        write_local_info(args.state_dir, envoy_admin=args.envoy_admin, envoy_routes_dir=args.envoy_routes_dir,
                         specs=args.specs)
    except StateDirLocked as exc:
        print(f"ramp run: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"ramp run: state directory {args.state_dir}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    metrics = ControllerMetrics(backends={"prometheus": lambda: (source.queries_sent, source.query_errors)})
    notifier, dispatcher = start_notifications(notifications, metrics)  # sends from its own threads
    runner = RolloutRunner(
        router=EnvoyFileRouter(args.envoy_routes_dir, args.envoy_admin),
        metrics=source,
        store=store,
        observers=[metrics, notifier, TimelineFile(args.state_dir)],  # for `ramp report --state-dir`
        availability=EnvoyAvailability(args.envoy_admin),  # never route to a version Envoy sees as down
        hook_rounds=HookRounds(),
        post_rollout_hooks=PostRolloutHooks(),
    )
    loop = ControllerLoop(runner, specs=SpecDirectory(args.specs), metrics=metrics, tick_deadline=args.tick_deadline,
                          interval=LOCAL_LOOP_INTERVAL, on_problems=_print_problems)
    if args.once:
        completed = loop.iterate() is Outcome.COMPLETED
        dispatcher.stop(DRAIN_SECONDS)
        return 0 if completed else 1
    address = listen_address(args)
    server = None
    if address is not None:
        try:
            server = EndpointServer(metrics.registry, loop.health, loop.readiness, host=address[0], port=address[1])
        except OSError as exc:
            print(f"ramp run: cannot listen on {address[0]}:{address[1]}: {exc.strerror or exc}", file=sys.stderr)
            dispatcher.stop(0)
            store.unlock()
            return 1
        server.start()
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    scheduler = TickScheduler(loop)
    log = structlog.get_logger("ramp.run")
    log.info("controller starting", specs=str(args.specs), prometheus=source.url, state_dir=str(args.state_dir),
             tick_deadline=args.tick_deadline, listen=None if server is None else server.port)
    try:
        scheduler.start()
        stop.wait()
    finally:
        scheduler.stop()
        loop.wait_idle(args.tick_deadline)
        dispatcher.stop(DRAIN_SECONDS)  # what the last ticks queued goes out, within a bound
        runner.close(DRAIN_SECONDS)
        if server is not None:
            server.stop()
        store.unlock()
    return 0
