"""A custom PromQL gate on the real stack (Envoy + Prometheus): the shipped `http-4xx-rate` template
(rollout-specs/templates.yml) rolls back a version that answers 404 to part of its traffic, which the built-in
gates (5xx rate, p99 latency) pass; the reason names the custom gate and its value."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from controller.analysis.gates import Verdict
from controller.analysis.prometheus import PrometheusSource
from controller.engine.phases import Phase
from controller.engine.runner import ManagedRollout, RolloutRunner, TickEvent
from controller.local.loadgen import LoadGenerator
from controller.local.stack import LocalStack, VersionKnobs
from controller.spec_loader import parse_spec_text
from controller.spec_metrics import load_templates
from controller.state.file_store import FileStateStore
from tests.e2e.conftest import require_local_stack

require_local_stack()
pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SPEC = """
service: shop
namespace: e2e
versions: [{name: v1, weight: 100}, {name: v2, weight: 0}]
target: v2
steps:
  - {header: {name: x-version, value: v2}, duration: 30s}
  - {weight: 50, duration: 5s}
  - {weight: 100, duration: 2s}
gates:
  - {metric: error_rate, max: 5}
  - {metric: latency, quantile: p99, max: 250}
  - {metric: custom, template: http-4xx-rate, max: 5}
schedule: {interval: 1s}
analysis: {window: 5s, min_requests: 10}
rollback: {missing_data_timeout: 40s}
"""


def test_a_custom_4xx_gate_rolls_back_what_the_built_in_gates_pass(tmp_path: Path) -> None:
    templates = load_templates(REPO / "rollout-specs")
    assert templates.problems == ()
    spec = parse_spec_text(SPEC, "custom.yaml", templates=templates.catalog)
    rollout = ManagedRollout.from_spec(spec)
    knobs = {"v1": VersionKnobs(), "v2": VersionKnobs()}
    events: list[TickEvent] = []
    with LocalStack(spec.service, spec.namespace, knobs, tmp_path / "stack", rollout.plan.baseline) as stack:
        store = FileStateStore(tmp_path / "state")
        runner = RolloutRunner(stack.router, PrometheusSource(stack.prometheus_url), store, observers=[events.append])
        runner.set_rollouts([rollout])
        # v2 answers 200 to its header traffic on /api/version and 404 to a path it does not serve: ~1 in 3 is 4xx
        ok = LoadGenerator(stack.api_url, stack.host_header, rate_rps=40, max_requests=40 * 60, max_seconds=60,
                           header_fraction=0.5, header=("x-version", "v2"), seed=5)  # fmt: skip
        missing = LoadGenerator(f"{stack.envoy_url}/api/missing", stack.host_header, rate_rps=10, max_requests=600,
                                max_seconds=60, header_fraction=1.0, header=("x-version", "v2"), seed=6)  # fmt: skip
        with ok, missing:
            deadline = time.monotonic() + 55
            while not runner.all_terminal() and time.monotonic() < deadline:
                runner.tick()
                time.sleep(1)
        state = store.load("shop")
        assert state is not None and state.phase == Phase.ROLLED_BACK, state and state.reason
        assert state.reason.startswith("gate failed: http-4xx-rate of v2 is ") and "> max 5" in state.reason
        rollback = next(e for e in events if e.decision.phase == Phase.ROLLED_BACK)
        assert rollback.report is not None
        verdicts = {r.gate: r.verdict for r in rollback.report.results}
        # the built-in gates saw a healthy v2 (no 5xx, fast): only the custom gate failed
        assert verdicts == {"error_rate": Verdict.PASS, "latency-p99": Verdict.PASS, "http-4xx-rate": Verdict.FAIL}
        custom = next(r for r in rollback.report.results if r.gate == "http-4xx-rate")
        assert custom.value is not None and 5 < custom.value <= 100 and f"{custom.value:.4g}" in state.reason
        assert custom.stable_value == 0  # v1 served no 4xx at all: 0 (the template's `or 0 * ...`), not "no value"
        assert rollback.decision.routing.weight_of("v1") == 100 and not rollback.decision.routing.header_routes
