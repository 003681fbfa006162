"""The seed TRAFFIC.yaml workflow on real Envoy, driven by the real runner.

v1/v2 at 50/50 -> v3 deployed at weight 0, reachable only with `x-version: v3`
-> v1=v2=v3=50 (a third each) -> (manual approval) -> retire v2 -> retire v1 (v3 100%).
Every split is measured from real responses: 600 requests with a seeded
x-ramp-random header (so the run is reproducible) must fall inside the two-sided
binomial acceptance interval at alpha = 0.001; header routing is checked exactly.
Gates are served by a fixed passing metrics source (our own wrapper): this test is
about traffic, the gate path is covered by test_rollouts.py.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from controller.analysis.metrics import VersionMetrics
from controller.engine.phases import Command, Phase
from controller.engine.routing_model import DesiredRouting
from controller.engine.runner import ManagedRollout, RolloutRunner
from controller.local.loadgen import send_requests
from controller.local.stack import LocalStack, VersionKnobs
from controller.spec_loader import parse_spec_text
from controller.state.file_store import FileStateStore
from tests.e2e.conftest import binomial_bounds, require_local_stack
from tests.unit.engine_fixtures import FakeClock, FixedMetrics

require_local_stack()
pytestmark = pytest.mark.e2e

N = 600
SPEC = """
service: reviews
namespace: shop
versions:
  - {name: v1, weight: 50}
  - {name: v2, weight: 50}
  - {name: v3, weight: 0}
target: v3
steps:
  - {header: {name: x-version, value: v3}, duration: 10s}
  - {traffic: {v1: 50, v2: 50, v3: 50}, duration: 10s}
  - {approval: {}}
  - {traffic: {v1: 50, v2: 0, v3: 50}, duration: 10s}
  - {traffic: {v3: 100}, duration: 10s}
gates: [{metric: error_rate, max: 1}]
schedule: {interval: 5s}
"""


def measured_split(stack: LocalStack, seed: int, headers: dict[str, str] | None = None, n: int = N) -> Counter[str]:
    results = send_requests(stack.api_url, stack.host_header, n, headers=headers, random_seed=seed)
    assert all(status == 200 for status, _ in results)
    return Counter(version or "?" for _, version in results)


def assert_split_matches(split: Counter[str], routing: DesiredRouting) -> None:
    for version, percent in routing.weights:
        low, high = binomial_bounds(N, percent / 100)
        got = split[version]
        assert low <= got <= high, f"{version}: {got} of {N} not in [{low}, {high}] for {percent}%"
    assert sum(split.values()) == N


def test_seed_workflow_v1_v2_then_v3_by_header_then_thirds_then_retirements(tmp_path: Path) -> None:
    spec = parse_spec_text(SPEC, "three-versions.yaml")
    rollout = ManagedRollout.from_spec(spec)
    healthy = {v: VersionMetrics(requests=100) for v in ("v1", "v2", "v3")}
    clock, store = FakeClock(), FileStateStore(tmp_path / "state")
    knobs = {v: VersionKnobs() for v in ("v1", "v2", "v3")}
    baseline_routing = rollout.plan.baseline
    with LocalStack("reviews", "shop", knobs, tmp_path / "stack", baseline_routing, with_prometheus=False) as stack:
        runner = RolloutRunner(stack.router, FixedMetrics(healthy), store, clock=clock)
        runner.set_rollouts([rollout])

        baseline = measured_split(stack, seed=1)
        assert_split_matches(baseline, rollout.plan.baseline)
        assert baseline["v3"] == 0

        seen: list[tuple[Phase, int]] = []
        for seed in range(2, 40):
            events = runner.tick()
            state = events[0].decision.state
            routing = events[0].decision.routing
            if events[0].routing_written:
                seen.append((state.phase, state.step))
                split = measured_split(stack, seed)
                assert_split_matches(split, routing)
                if state.phase != Phase.PROMOTED:
                    assert measured_split(stack, seed, {"x-version": "v3"}, n=100) == Counter({"v3": 100})
            if state.phase == Phase.PAUSED:
                store.request("reviews", Command.RESUME)
            if state.terminal:
                break
            clock.advance(5)

        assert seen == [
            (Phase.HEADER_TEST, 0),  # v1 50 / v2 50 / v3 0, header -> v3
            (Phase.PROGRESSING, 1),  # 34 / 33 / 33
            (Phase.PROGRESSING, 3),  # retire v2: 50 / 0 / 50 (approval step kept the previous traffic)
            (Phase.PROGRESSING, 4),  # retire v1: v3 100
            (Phase.PROMOTED, 5),  # v3 100, header route dropped
        ]
        assert [w for _, w in rollout.plan.steps[1].routing.weights] == [34, 33, 33]
        final = store.load("reviews")
        assert final is not None and final.phase == Phase.PROMOTED
        assert measured_split(stack, 99) == Counter({"v3": N})
