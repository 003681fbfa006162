"""Fault-to-rollback on the local stack (real Envoy + Prometheus, 1 s scrape).

Each run: a fresh stack, 100 rps of load, v2 held at 10% by a long step with gates passing; after a
healthy warm-up the fault is switched on inside v2 (POST /admin/fault) and the clock runs until the
rollback routing is confirmed by Envoy. Failed user requests are the 5xx answers in that window.

The fault's moment is drawn uniformly over the tick cycle (seeded per run): the warm-up is a whole number of
intervals plus a uniform fraction of one, so a fault lands anywhere between two ticks (and two scrapes), as real
faults do. The runner is driven like `ramp run` drives it (an iteration every LOOP_SECONDS; the runner decides
what is due and feeds its fast lane).
"""

from __future__ import annotations

import math
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from controller.analysis.prometheus import PrometheusSource
from controller.cli_run import LOCAL_LOOP_INTERVAL
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


LOOP_SECONDS = LOCAL_LOOP_INTERVAL


@dataclass(frozen=True)
class RunResult:
    seconds: float | None  # None: not rolled back before the deadline (or a false alarm before the fault)
    failed_requests: int
    reason: str
    fault_phase: float = 0.0  # where in the tick cycle the fault landed (0..1)
    false_alarm: bool = False  # rolled back before the fault was switched on
    fast_lane: bool = False  # the fast lane made the rolling-back tick early


def warmup_for(interval: float, whole_intervals: int, seed: int) -> tuple[float, float]:
    """(warm-up seconds, phase): whole intervals plus a uniform fraction of one, drawn from `seed`."""
    phase = random.Random(seed).random()
    return whole_intervals * interval + phase * interval, phase


def one_run(scenario: Scenario, gates: str, warmup: float, deadline: float, seed: int, phase: float = 0.0) -> RunResult:
    spec = parse_spec_text(SPEC + gates, "bench.yaml")
    rollout = ManagedRollout.from_spec(spec)
    knobs = {
        "v1": VersionKnobs(error_rate=scenario.baseline_error, seed=seed),
        "v2": VersionKnobs(error_rate=scenario.baseline_error, seed=seed + 1),
    }
    rolled_back: list[tuple[TickEvent, float]] = []

    def watch(event: TickEvent) -> None:  # observers run after the tick applied (and Envoy confirmed) the routing
        if event.decision.phase == Phase.ROLLED_BACK and event.routing_written:
            rolled_back.append((event, time.time()))

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
                time.sleep(LOOP_SECONDS)
            load.stop()
        lane = runner.fast_lane is not None and runner.fast_lane.crossings > 0
        if not rolled_back or fault_at is None:
            state = runner.store.load(rollout.name)
            reason = state.reason if state else "no state"
            return RunResult(None, 0, f"not rolled back: {reason}"[:200], phase)
        event, at = rolled_back[0]
        early = at < fault_at
        failed = sum(1 for r in load.results if fault_at <= r.timestamp <= at and (r.status >= 500 or r.status == 0))
        reason = event.decision.state.reason
        prefix = "FALSE ALARM before fault: " if early else ""
        return RunResult(None if early else round(at - fault_at, 2), failed, prefix + reason, phase, early, lane)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (a value that occurred; no interpolation between runs)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def summarize(results: list[RunResult]) -> dict[str, object]:
    """p50/p90/max over the runs that rolled back after the fault; runs that did not are counted apart."""
    times = [r.seconds for r in results if r.seconds is not None]
    failed = [float(r.failed_requests) for r in results if r.seconds is not None]

    def stats(values: list[float]) -> dict[str, float | None]:
        if not values:
            return {"p50": None, "p90": None, "max": None}
        return {"p50": round(percentile(values, 0.5), 2), "p90": round(percentile(values, 0.9), 2),
                "max": round(max(values), 2)}  # fmt: skip

    return {
        "runs": len(results),
        "rolled_back": len(times),
        "false_alarms": sum(1 for r in results if r.false_alarm),
        "by_fast_lane": sum(1 for r in results if r.seconds is not None and r.fast_lane),
        "seconds": stats(times),
        "failed_requests": stats(failed),
        "notes": sorted({r.reason.split(":")[0] for r in results if r.seconds is None}),
    }
