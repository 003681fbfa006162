"""End-to-end rollouts on the real stack: controller -> Envoy route file -> Envoy, gates on real Prometheus."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from controller.analysis.prometheus import PrometheusSource
from controller.engine.phases import Phase
from controller.engine.runner import ManagedRollout, RolloutRunner, TickEvent
from controller.local.loadgen import LoadGenerator, send_requests
from controller.local.stack import LocalStack, VersionKnobs
from controller.spec_loader import parse_spec_text
from controller.state.file_store import FileStateStore
from tests.e2e.conftest import require_local_stack

require_local_stack()
pytestmark = pytest.mark.e2e

FAST_SPEC = """
service: shop
namespace: e2e
versions: [{name: v1, weight: 100}, {name: v2, weight: 0}]
target: v2
steps:
  - {header: {name: x-version, value: v2}, duration: 4s}
  - {weight: 10, duration: 3s}
  - {weight: 50, duration: 3s}
  - {weight: 100, duration: 2s}
gates:
  - {metric: error_rate, max: 5}
  - {metric: latency, quantile: p99, max: 250}
schedule: {interval: 1s}
analysis: {window: 5s, min_requests: 10}
rollback: {missing_data_timeout: 40s}
"""


@contextmanager
def closing_stack(stack: LocalStack) -> Iterator[LocalStack]:
    try:
        yield stack
    finally:
        stack.stop()


def versions_seen(stack: LocalStack, n: int, headers: dict[str, str] | None = None) -> Counter[str]:
    got = send_requests(stack.api_url, stack.host_header, n, headers=headers, random_seed=11)
    return Counter(f"{version}" if status == 200 else f"HTTP {status}" for status, version in got)


def run_rollout(
    tmp_path: Path, error_rate: float, on_tick: list[TickEvent], limit_seconds: float = 90
) -> tuple[LocalStack, FileStateStore, list[Counter[str]]]:
    spec = parse_spec_text(FAST_SPEC, "fast.yaml")
    rollout = ManagedRollout.from_spec(spec)
    knobs = {"v1": VersionKnobs(), "v2": VersionKnobs(error_rate=error_rate, seed=3)}
    stack = LocalStack(spec.service, spec.namespace, knobs, tmp_path / "stack", rollout.plan.baseline).start()
    store = FileStateStore(tmp_path / "state")
    runner = RolloutRunner(stack.router, PrometheusSource(stack.prometheus_url), store, observers=[on_tick.append])
    runner.set_rollouts([rollout])
    header_checks: list[Counter[str]] = []
    load = LoadGenerator(
        stack.api_url, stack.host_header, rate_rps=40, max_requests=40 * 100, max_seconds=100,
        header_fraction=0.3, header=("x-version", "v2"), seed=5,
    )
    try:
        with load:
            deadline = time.monotonic() + limit_seconds
            while not runner.all_terminal() and time.monotonic() < deadline:
                events = runner.tick()
                state = events[0].decision.state if events else None
                if state is not None and state.phase == Phase.HEADER_TEST and not header_checks:
                    header_checks.append(versions_seen(stack, 100))
                    header_checks.append(versions_seen(stack, 60, {"x-version": "v2"}))
                time.sleep(1)
    except BaseException:
        stack.stop()
        raise
    return stack, store, header_checks


def test_healthy_v2_is_promoted_through_header_step_and_10_50_100(tmp_path: Path) -> None:
    events: list[TickEvent] = []
    stack, store, header_checks = run_rollout(tmp_path, error_rate=0.0, on_tick=events)
    with closing_stack(stack):
        state = store.load("shop")
        assert state is not None and state.phase == Phase.PROMOTED, state and state.reason
        # During the header step only requests carrying the header reached v2.
        assert header_checks[0] == Counter({"v1": 100})
        assert header_checks[1] == Counter({"v2": 60})
        written = [e.decision.routing.weight_of("v2") for e in events if e.routing_written]
        assert written == [0, 10, 50, 100, 100]  # header step, 10, 50, 100 step, promoted (header route dropped)
        assert [c.phase for c in state.history] == [
            Phase.HEADER_TEST, Phase.PROGRESSING, Phase.PROGRESSING, Phase.PROGRESSING, Phase.PROMOTED,
        ]
        gated = [e for e in events if e.report is not None and e.decision.state.step >= 1]
        assert gated and all(e.report is not None and e.report.verdict != "fail" for e in gated)
        assert versions_seen(stack, 100) == Counter({"v2": 100})


def test_faulty_v2_is_rolled_back_and_traffic_returns_to_v1(tmp_path: Path) -> None:
    events: list[TickEvent] = []
    stack, store, _ = run_rollout(tmp_path, error_rate=0.2, on_tick=events)
    with closing_stack(stack):
        state = store.load("shop")
        assert state is not None and state.phase == Phase.ROLLED_BACK
        assert state.reason.startswith("gate failed: error_rate of v2 is ")
        assert "> max 5.00%" in state.reason
        rollback = next(e for e in events if e.decision.phase == Phase.ROLLED_BACK)
        assert rollback.routing_written and rollback.apply_error is None  # applied in the deciding tick
        assert rollback.decision.routing.weight_of("v1") == 100 and not rollback.decision.routing.header_routes
        assert versions_seen(stack, 100) == Counter({"v1": 100})
        assert versions_seen(stack, 50, {"x-version": "v2"}) == Counter({"v1": 50})  # header route removed too
