"""Prometheus frozen mid-rollout (SIGSTOP: queries hang until the client's timeout).

Never promote on missing data: the step holds with the reason; if the outage outlasts
missing_data_timeout the rollout rolls back; if Prometheus comes back in time, judging
resumes and the rollout completes.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from controller.analysis.prometheus import PrometheusSource
from controller.engine.phases import Phase, RolloutState
from controller.engine.runner import ManagedRollout, RolloutRunner, TickEvent
from controller.local.loadgen import LoadGenerator
from controller.local.stack import LocalStack, VersionKnobs
from controller.spec_loader import parse_spec_text
from controller.state.file_store import FileStateStore
from tests.e2e.conftest import require_local_stack

require_local_stack()
pytestmark = pytest.mark.e2e

SPEC = """
service: shop
namespace: outage
versions: [{name: v1, weight: 100}, {name: v2, weight: 0}]
target: v2
steps:
  - {header: {value: v2}, duration: 2s}
  - {weight: 10, duration: 6s}
  - {weight: 100, duration: 2s}
gates: [{metric: error_rate, max: 5}]
schedule: {interval: 1s}
analysis: {window: 5s, min_requests: 5}
rollback: {missing_data_timeout: TIMEOUT}
"""


def run_with_outage(tmp_path: Path, timeout: str, outage_seconds: float) -> tuple[RolloutState, list[TickEvent]]:
    spec = parse_spec_text(SPEC.replace("TIMEOUT", timeout), "outage.yaml")
    rollout = ManagedRollout.from_spec(spec)
    knobs = {"v1": VersionKnobs(), "v2": VersionKnobs()}
    events: list[TickEvent] = []
    store = FileStateStore(tmp_path / "state")
    with LocalStack(spec.service, spec.namespace, knobs, tmp_path / "stack", rollout.plan.baseline) as stack, \
            LoadGenerator(stack.api_url, stack.host_header, rate_rps=40, max_requests=4000, max_seconds=90,
                          header_fraction=0.3, header=("x-version", "v2"), seed=9):
        prometheus = next(p for p in stack.processes if p.name.startswith("prometheus"))
        assert prometheus.pid is not None
        source = PrometheusSource(stack.prometheus_url, timeout_seconds=1.0)
        runner = RolloutRunner(stack.router, source, store, observers=[events.append])
        runner.set_rollouts([rollout])
        frozen_at: float | None = None
        deadline = time.monotonic() + 80
        try:
            while not runner.all_terminal() and time.monotonic() < deadline:
                ticked = runner.tick()
                if not ticked:  # not due yet
                    time.sleep(0.1)
                    continue
                state = ticked[0].decision.state
                if frozen_at is None and state.step == 1:
                    os.kill(prometheus.pid, signal.SIGSTOP)
                    frozen_at = time.monotonic()
                if frozen_at is not None and time.monotonic() - frozen_at >= outage_seconds:
                    os.kill(prometheus.pid, signal.SIGCONT)
                time.sleep(0.5)
        finally:
            os.kill(prometheus.pid, signal.SIGCONT)
    final = store.load("shop")
    assert final is not None
    return final, events


def test_outage_longer_than_timeout_holds_then_rolls_back_never_promotes(tmp_path: Path) -> None:
    final, events = run_with_outage(tmp_path, timeout="6s", outage_seconds=60)
    assert final.phase == Phase.ROLLED_BACK
    assert final.reason.startswith("no data for ") and "(limit 6s)" in final.reason
    assert "did not answer" in final.reason
    reasons = [(e, e.decision.state.reason) for e in events]
    blind = [e for e, why in reasons if "holding, no data" in why and "did not answer" in why]
    assert blind and all(e.decision.state.step == 1 for e in blind)
    assert all(e.decision.routing.weight_of("v2") <= 10 for e in events)  # never advanced while blind


def test_outage_shorter_than_timeout_resumes_judging_and_completes(tmp_path: Path) -> None:
    final, events = run_with_outage(tmp_path, timeout="30s", outage_seconds=4)
    assert final.phase == Phase.PROMOTED, final.reason
    held = [e for e in events if "did not answer" in e.decision.state.reason]
    assert held, "the outage must have been noticed"
    last_blind = max(e.at for e in held)
    advanced = next(e for e in events if e.decision.state.step == 2)
    assert advanced.at > last_blind  # it waited for data before leaving the 10% step
    assert advanced.report is not None and advanced.report.verdict == "pass"
