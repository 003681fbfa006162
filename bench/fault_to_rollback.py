"""Fault-to-rollback on the local stack (real Envoy + Prometheus, 1 s scrape).

Each run: a fresh stack, 100 rps of load, v2 held at 10% by a long step with gates passing; after a
healthy warm-up the fault is switched on inside v2 (POST /admin/fault) and the clock runs until the
rollback routing is confirmed by Envoy. Failed user requests are the 5xx answers in that window.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from controller.analysis.prometheus import PrometheusSource
from controller.engine.phases import Phase
from controller.engine.runner import ManagedRollout, RolloutRunner, TickEvent
from controller.local.loadgen import LoadGenerator
from controller.local.stack import LocalStack, VersionKnobs
from controller.spec_loader import parse_spec_text
from controller.state.file_store import FileStateStore

RAMP_GATES = """
gates:
  - {name: errors, metric: error_rate, mode: both, max: 10, tolerance: 1.2, alpha: 0.01}
schedule: {interval: 5s}
analysis: {window: 10s, min_requests: 20}
"""
FLAGGER_GATES = """
gates:
  - {metric: error_rate, max: 1}     # Flagger's request-success-rate >= 99 %
schedule: {interval: 60s}
analysis: {window: 60s, min_requests: 1}
rollback: {failed_checks: 5}       # Flagger's threshold: 5 failed checks
"""
SPEC = """
service: bench
namespace: ftr
versions: [{name: v1, weight: 100}, {name: v2, weight: 0}]
target: v2
steps:
  - {weight: 10, duration: 1h}
"""


@dataclass(frozen=True)
class Scenario:
    name: str
    baseline_error: float
    fault_error: float


HARD = Scenario("hard fault: v2 100% 5xx", 0.0, 1.0)
SOFT = Scenario("soft fault: v2 5% 5xx at 1% baseline", 0.01, 0.05)


@dataclass(frozen=True)
class RunResult:
    seconds: float | None  # None: not rolled back before the deadline
    failed_requests: int
    reason: str


def one_run(scenario: Scenario, gates: str, warmup: float, deadline: float, seed: int) -> RunResult:
    spec = parse_spec_text(SPEC + gates, "bench.yaml")
    rollout = ManagedRollout.from_spec(spec)
    knobs = {
        "v1": VersionKnobs(error_rate=scenario.baseline_error, seed=seed),
        "v2": VersionKnobs(error_rate=scenario.baseline_error, seed=seed + 1),
    }
    rolled_back: list[TickEvent] = []

    def watch(event: TickEvent) -> None:
        if event.decision.phase == Phase.ROLLED_BACK and event.routing_written:
            rolled_back.append(event)

    with (
        tempfile.TemporaryDirectory(prefix="ramp-bench-") as tmp,
        LocalStack(spec.service, spec.namespace, knobs, Path(tmp) / "stack", rollout.plan.baseline) as stack,
    ):
        runner = RolloutRunner(
            stack.router, PrometheusSource(stack.prometheus_url), FileStateStore(Path(tmp) / "state"), observers=[watch]
        )
        runner.set_rollouts([rollout])
        with LoadGenerator(
            stack.api_url,
            stack.host_header,
            rate_rps=100,
            max_requests=int(100 * (warmup + deadline + 30)),
            max_seconds=warmup + deadline + 30,
            seed=seed,
        ) as load:
            started = time.monotonic()
            fault_at: float | None = None
            while time.monotonic() - started < warmup + deadline and not rolled_back:
                if fault_at is None and time.monotonic() - started >= warmup:
                    stack.set_fault("v2", error_rate=scenario.fault_error)
                    fault_at = time.time()
                runner.tick()
                time.sleep(0.05)
            load.stop()
        if not rolled_back or fault_at is None:
            state = runner.store.load(rollout.name)
            reason = state.reason if state else "no state"
            return RunResult(None, 0, f"not rolled back: {reason}"[:200])
        at = rolled_back[0].at
        early = at < fault_at
        failed = sum(1 for r in load.results if fault_at <= r.timestamp <= at and (r.status >= 500 or r.status == 0))
        reason = rolled_back[0].decision.state.reason
        return RunResult(
            None if early else round(at - fault_at, 2), failed, ("FALSE ALARM before fault: " if early else "") + reason
        )


def summarize(results: list[RunResult]) -> dict[str, object]:
    times = [r.seconds for r in results if r.seconds is not None]
    failed = [r.failed_requests for r in results if r.seconds is not None]
    return {
        "runs": len(results),
        "rolled_back": len(times),
        "median_s": round(statistics.median(times), 1) if times else None,
        "max_s": round(max(times), 1) if times else None,
        "median_failed_requests": statistics.median(failed) if failed else None,
        "max_failed_requests": max(failed) if failed else None,
        "notes": sorted({r.reason.split(":")[0] for r in results if r.seconds is None}),
    }
