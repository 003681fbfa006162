"""`ramp demo`: a real rollout on the local stack (sample app x2, Envoy, Prometheus).

healthy: v2 goes through the header step, 10%, 50% and 100%, and is promoted.
faulty:  v2 answers 20% of requests with 500; the error-rate gate rolls it back and
         traffic returns to v1. Every process started here is stopped on exit.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

from controller.analysis.prometheus import PrometheusSource
from controller.demo_report import DemoRecorder, build_summary, print_summary
from controller.engine.runner import ManagedRollout, RolloutRunner
from controller.engine.scheduler import TickScheduler
from controller.local.loadgen import LoadGenerator, send_requests
from controller.local.stack import LocalStack, VersionKnobs
from controller.plan import build_plan
from controller.spec import RolloutSpec
from controller.spec_loader import load_spec
from controller.state.file_store import FileStateStore

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


def run_demo(
    scenario: str, spec_path: Path | None = None, out: TextIO = sys.stdout, timeout: float = 300.0
) -> dict[str, Any]:
    spec = load_spec(spec_path or DEMO_SPEC)
    rollout = ManagedRollout.from_spec(spec)
    knobs = {v.name: VersionKnobs() for v in spec.versions}
    knobs[spec.target] = VersionKnobs(error_rate=SCENARIOS[scenario])
    print(f"Ramp demo ({scenario}): rolling out {spec.service} {spec.target} "
          f"({', '.join(s.label for s in rollout.plan.steps)}), tick {spec.schedule.interval:g}s", file=out)
    with tempfile.TemporaryDirectory(prefix="ramp-demo-") as tmp:
        work = Path(tmp)
        print("starting sample app versions, Envoy and Prometheus on 127.0.0.1 ...", file=out, flush=True)
        with LocalStack(
            service=spec.service,
            namespace=spec.namespace,
            versions=knobs,
            work_dir=work,
            initial_routing=rollout.plan.baseline,
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
            runner = RolloutRunner(
                router=stack.router,
                metrics=PrometheusSource(stack.prometheus_url),
                store=FileStateStore(work / "state"),
                observers=[recorder],
            )
            runner.set_rollouts([rollout])
            scheduler = TickScheduler(runner)
            with load:
                scheduler.start()
                try:
                    deadline = time.monotonic() + timeout
                    while not runner.all_terminal() and time.monotonic() < deadline:
                        time.sleep(0.2)
                finally:
                    scheduler.stop()
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
    summary["expected_outcome"] = EXPECTED_OUTCOME[scenario]
    print_summary(summary, out)
    return summary
