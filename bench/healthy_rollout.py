"""Time for a healthy rollout with Ramp's defaults (header step, 10 / 50 / 100 %, 1 minute each,
5 s ticks, 30 s window, default gates) on the local stack, at 100 rps with 10% tester traffic."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from controller.analysis.prometheus import PrometheusSource
from controller.engine.runner import ManagedRollout, RolloutRunner
from controller.engine.scheduler import TickScheduler
from controller.local.loadgen import LoadGenerator
from controller.local.stack import LocalStack, VersionKnobs
from controller.spec_loader import parse_spec_text
from controller.state.file_store import FileStateStore

SPEC = """
service: bench
namespace: healthy
versions: [{name: v1, weight: 100}, {name: v2, weight: 0}]
target: v2
"""


def run(limit_seconds: float = 600) -> dict[str, object]:
    spec = parse_spec_text(SPEC, "defaults.yaml")
    rollout = ManagedRollout.from_spec(spec)
    knobs = {"v1": VersionKnobs(), "v2": VersionKnobs()}
    with (
        tempfile.TemporaryDirectory(prefix="ramp-bench-") as tmp,
        LocalStack(spec.service, spec.namespace, knobs, Path(tmp) / "stack", rollout.plan.baseline) as stack,
    ):
        store = FileStateStore(Path(tmp) / "state")
        runner = RolloutRunner(stack.router, PrometheusSource(stack.prometheus_url), store)
        runner.set_rollouts([rollout])
        scheduler = TickScheduler(runner)
        with LoadGenerator(
            stack.api_url,
            stack.host_header,
            rate_rps=100,
            max_requests=int(100 * limit_seconds),
            max_seconds=limit_seconds,
            header_fraction=0.1,
            header=("x-version", "v2"),
            seed=3,
        ):
            started = time.monotonic()
            scheduler.start()
            try:
                while not runner.all_terminal() and time.monotonic() - started < limit_seconds:
                    time.sleep(0.5)
            finally:
                scheduler.stop()
        state = store.load(rollout.name)
    assert state is not None
    first = state.history[0].at
    return {
        "outcome": state.phase.value,
        "total_s": round(state.history[-1].at - first, 1),
        "steps": [{"phase": c.phase.value, "step": c.step + 1, "at_s": round(c.at - first, 1)} for c in state.history],
        "planned_minimum_s": sum(s.duration for s in rollout.plan.steps),
    }
