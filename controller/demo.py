"""`ramp demo`: a real rollout on the local stack (sample app x2, Envoy, Prometheus).

healthy: v2 goes through the header step, 10%, 50% and 100%, and is promoted.
faulty:  v2 answers 20% of requests with 500; the error-rate gate rolls it back and
         traffic returns to v1. Every process started here is stopped on exit.

The rollout is driven by the same ControllerLoop as `ramp run` and `ramp controller` (tick deadline,
abandoned ticks, liveness). The controller's own metrics (ControllerMetrics) and the loop's /healthz and
/readyz are served on 127.0.0.1 by an EndpointServer that the stack's Prometheus scrapes (job
`ramp-controller`), so the Grafana dashboards in `dashboards/` have both the Istio metrics and the
controller's metrics to show.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from prometheus_client import CollectorRegistry

from controller.analysis.prometheus import PrometheusSource
from controller.controller_loop import DEFAULT_TICK_DEADLINE, ControllerLoop
from controller.controller_metrics import ControllerMetrics
from controller.demo_report import DemoRecorder, build_summary, print_summary, write_demo_report
from controller.engine.runner import ManagedRollout, RolloutRunner
from controller.engine.scheduler import TickScheduler
from controller.hooks.evaluation import HookRounds
from controller.hooks.post_rollout import PostRolloutHooks
from controller.http_endpoints import EndpointServer
from controller.local.loadgen import LoadGenerator, send_requests
from controller.local.ports import free_port
from controller.local.stack import LocalStack, VersionKnobs
from controller.notify.observer import DRAIN_SECONDS, start_notifications
from controller.plan import build_plan
from controller.spec import RolloutSpec
from controller.spec_loader import load_spec
from controller.spec_notify import Notification
from controller.state.file_store import FileStateStore
from controller.state.local_info import write_local_info
from controller.state.timeline_file import TimelineFile

DEMO_SPEC = Path(__file__).resolve().parent.parent / "rollout-specs" / "demo.yaml"
SCENARIOS = {"healthy": 0.0, "faulty": 0.2}
EXPECTED_OUTCOME = {"healthy": "Promoted", "faulty": "RolledBack"}
LOAD_RPS = 40.0
HEADER_FRACTION = 0.15  # testers who send the version header


def _header(spec: RolloutSpec) -> tuple[str, str]:
    for step in build_plan(spec).steps:
        if step.routing.header_routes:
            route = step.routing.header_routes[0]
            return route.header, route.value
    return "x-version", spec.target


@dataclass(frozen=True)
class DemoRun:
    """What `run_demo`'s `on_finished` hook sees: the finished rollout on the still running stack."""

    spec: RolloutSpec
    stack: LocalStack
    recorder: DemoRecorder
    metrics_target: str  # host:port of the controller's /metrics, scraped by the stack's Prometheus
    summary: dict[str, Any]


class _LoopProbes:
    """/healthz and /readyz of the demo's endpoint: the controller loop's, once it exists."""

    def __init__(self) -> None:
        self.loop: ControllerLoop | None = None

    def health(self) -> tuple[bool, str]:
        return (True, "starting the local stack") if self.loop is None else self.loop.health()

    def readiness(self) -> tuple[bool, str]:
        return (False, "starting the local stack") if self.loop is None else self.loop.readiness()


@contextmanager
def _metrics_endpoint(registry: CollectorRegistry, probes: _LoopProbes) -> Iterator[EndpointServer]:
    """The controller's /metrics on a free loopback port, bound before the stack starts so that the
    stack's Prometheus can be told the target up front; stopped on exit."""
    server = EndpointServer(registry, probes.health, probes.readiness, host="127.0.0.1", port=free_port()).start()
    try:
        yield server
    finally:
        server.stop()


def run_demo(
    scenario: str,
    spec_path: Path | None = None,
    out: TextIO = sys.stdout,
    timeout: float = 300.0,
    on_finished: Callable[[DemoRun], None] | None = None,
    tick_deadline: float = DEFAULT_TICK_DEADLINE,
    notifications: Sequence[Notification] = (),
    report: Path | None = None,
) -> dict[str, Any]:
    """Run the demo rollout; `on_finished` (if given) runs after the rollout ends, before the stack stops.
    With `report`, the rollout's HTML report is written there (`ramp report`'s, from the demo's state directory)."""
    spec = load_spec(spec_path or DEMO_SPEC)
    rollout = ManagedRollout.from_spec(spec)
    knobs = {v.name: VersionKnobs() for v in spec.versions}
    knobs[spec.target] = VersionKnobs(error_rate=SCENARIOS[scenario])
    print(f"Ramp demo ({scenario}): rolling out {spec.service} {spec.target} "
          f"({', '.join(s.label for s in rollout.plan.steps)}), tick {spec.schedule.interval:g}s", file=out)
    registry = CollectorRegistry()
    probes = _LoopProbes()
    with _metrics_endpoint(registry, probes) as server, tempfile.TemporaryDirectory(prefix="ramp-demo-") as tmp:
        work = Path(tmp)
        metrics_target = f"127.0.0.1:{server.port}"
        print("starting sample app versions, Envoy and Prometheus on 127.0.0.1 ...", file=out, flush=True)
        with LocalStack(
            service=spec.service,
            namespace=spec.namespace,
            versions=knobs,
            work_dir=work,
            initial_routing=rollout.plan.baseline,
            extra_scrape_targets=[metrics_target],
        ) as stack:
            print(f"  envoy {stack.envoy_url}  prometheus {stack.prometheus_url}", file=out, flush=True)
            load = LoadGenerator(
                stack.envoy_url + "/api/version",
                spec.fqdn,
                rate_rps=LOAD_RPS,
                max_requests=int(LOAD_RPS * timeout),
                max_seconds=timeout,
                header_fraction=HEADER_FRACTION,
                header=_header(spec),
                seed=2026,
            )
            recorder = DemoRecorder(out=out, started_at=time.time())
            source = PrometheusSource(stack.prometheus_url)
            metrics = ControllerMetrics(
                registry=registry, backends={"prometheus": lambda: (source.queries_sent, source.query_errors)}
            )
            write_local_info(work / "state", envoy_admin=stack.envoy_admin_url,
                             envoy_routes_dir=stack.router.routes_dir)  # for `ramp status --state-dir`
            notifier, dispatcher = start_notifications(notifications, metrics)  # the spec's own and the global ones
            runner = RolloutRunner(
                router=stack.router,
                metrics=source,
                store=FileStateStore(work / "state"),
                observers=[recorder, metrics, notifier, TimelineFile(work / "state")],
                availability=stack.availability,
                hook_rounds=HookRounds(),
                post_rollout_hooks=PostRolloutHooks(),
            )
            runner.set_rollouts([rollout])
            loop = ControllerLoop(runner, metrics=metrics, tick_deadline=tick_deadline)
            probes.loop = loop
            scheduler = TickScheduler(loop)
            with load:
                scheduler.start()
                try:
                    deadline = time.monotonic() + timeout
                    while not runner.all_terminal() and time.monotonic() < deadline:
                        time.sleep(0.2)
                finally:
                    scheduler.stop()
                    loop.wait_idle(tick_deadline)
                    dispatcher.stop(DRAIN_SECONDS)
                    runner.close(DRAIN_SECONDS)
            responses = load.results
            sampled = send_requests(stack.envoy_url + "/api/version", spec.fqdn, 200, random_seed=99)
            final_split = Counter(version or f"HTTP {status}" for status, version in sampled)
            summary = build_summary(
                scenario=scenario,
                rollout=rollout.name,
                target=spec.target,
                recorder=recorder,
                responses=responses,
                final_split=final_split,
                finished_at=time.time(),
            )
            if report is not None:
                try:
                    summary["report"] = str(write_demo_report(work / "state", rollout.name, summary, report))
                except (OSError, ValueError) as exc:  # the rollout's outcome stands; the report's failure is said
                    summary["report_error"] = f"{report}: not written: {getattr(exc, 'strerror', None) or exc}"
            if on_finished is not None:
                on_finished(DemoRun(spec, stack, recorder, metrics_target, summary))
    summary["expected_outcome"] = EXPECTED_OUTCOME[scenario]
    print_summary(summary, out)
    if "report" in summary:
        print(f"  report: {summary['report']}", file=out)
    if "report_error" in summary:
        print(f"  report: {summary['report_error']}", file=out)
    return summary
