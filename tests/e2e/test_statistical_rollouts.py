"""Statistical error gate on the real stack: raw Istio counters from real Prometheus -> e-process -> decision.

v2 fails 10% of its requests against v1's 0.5%, with a statistical error gate only (no threshold):
the rollout is rolled back, with a reason naming the e-value and the threshold K/alpha. With both
versions failing 0.5% the same gate lets the rollout through to promotion.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from controller.analysis.gates import Verdict
from controller.analysis.prometheus import PrometheusSource
from controller.engine.phases import Phase, RolloutState
from controller.engine.runner import ManagedRollout, RolloutRunner, TickEvent
from controller.local.loadgen import LoadGenerator, send_requests
from controller.local.stack import LocalStack, VersionKnobs
from controller.spec_loader import parse_spec_text
from controller.state.file_store import FileStateStore
from tests.e2e.conftest import require_local_stack

require_local_stack()
pytestmark = pytest.mark.e2e

SPEC = """
service: shop
namespace: e2e
versions: [{name: v1, weight: 100}, {name: v2, weight: 0}]
target: v2
steps:
  - {header: {name: x-version, value: v2}, duration: 8s}
  - {weight: 10, duration: 8s}
  - {weight: 50, duration: 4s}
  - {weight: 100, duration: 2s}
gates:
  - {metric: error_rate, mode: statistical}
schedule: {interval: 1s}
analysis: {window: 5s, min_requests: 10}
rollback: {missing_data_timeout: 40s}
"""


def run_statistical_rollout(
    tmp_path: Path, v1_errors: float, v2_errors: float, limit_seconds: float = 90
) -> tuple[RolloutState, list[TickEvent], PrometheusSource, list[tuple[int, str | None]]]:
    spec = parse_spec_text(SPEC, "statistical.yaml")
    rollout = ManagedRollout.from_spec(spec)
    knobs = {"v1": VersionKnobs(error_rate=v1_errors, seed=1), "v2": VersionKnobs(error_rate=v2_errors, seed=2)}
    events: list[TickEvent] = []
    with LocalStack(spec.service, spec.namespace, knobs, tmp_path / "stack", rollout.plan.baseline) as stack:
        source = PrometheusSource(stack.prometheus_url)
        store = FileStateStore(tmp_path / "state")
        runner = RolloutRunner(stack.router, source, store, observers=[events.append])
        runner.set_rollouts([rollout])
        load = LoadGenerator(
            stack.api_url, stack.host_header, rate_rps=40, max_requests=40 * 100, max_seconds=100,
            header_fraction=0.3, header=("x-version", "v2"), seed=5,
        )  # fmt: skip
        with load:
            deadline = time.monotonic() + limit_seconds
            while not runner.all_terminal() and time.monotonic() < deadline:
                runner.tick()
                time.sleep(1)
        after = send_requests(stack.api_url, stack.host_header, 50, random_seed=11)
        state = store.load("shop")
    assert state is not None
    return state, events, source, after


def test_a_faulty_v2_is_rolled_back_by_the_e_value(tmp_path: Path) -> None:
    state, events, source, after = run_statistical_rollout(tmp_path, v1_errors=0.005, v2_errors=0.10)
    assert state.phase == Phase.ROLLED_BACK, state.reason
    assert state.reason.startswith("gate failed: error_rate of v2: e-value ")
    assert ">= 100 = K/alpha (1/0.01); errors: " in state.reason
    rollback = next(e for e in events if e.decision.phase == Phase.ROLLED_BACK)
    result = rollback.report.results[0] if rollback.report is not None else None
    assert result is not None and result.e_limit == 100.0
    assert result.e_value is not None and result.e_value >= 100
    assert rollback.routing_written and rollback.decision.routing.weight_of("v1") == 100
    before = [e.report.results[0].e_value for e in events if e.report is not None and e is not rollback]
    assert before and all(v is not None and v < 100 for v in before)  # rolled back the first time it crossed
    assert source.query_errors == 0
    assert {version for _, version in after} == {"v1"}


def test_a_healthy_v2_under_a_statistical_gate_is_promoted(tmp_path: Path) -> None:
    state, events, source, after = run_statistical_rollout(tmp_path, v1_errors=0.005, v2_errors=0.005)
    assert state.phase == Phase.PROMOTED, state.reason
    gated = [e.report for e in events if e.report is not None]
    assert gated and all(r.verdict != Verdict.FAIL and (r.results[0].e_value or 0) < 100 for r in gated)
    evalue = state.e_values["error_rate"]
    assert evalue.limit == 100.0 and evalue.value < 100
    counted = state.sequential["error_rate"]
    assert counted.new[0] > 0 and counted.stable[0] > 0  # the e-process saw real traffic on both versions
    assert source.query_errors == 0
    assert {version for _, version in after} == {"v2"}
