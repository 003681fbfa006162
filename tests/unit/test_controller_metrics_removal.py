"""A rollout that leaves the runner (its spec deleted or renamed, its shard given up) leaves /metrics: every series
labelled with it goes, the other rollouts' stay, and it is exported afresh (thresholds included) if it comes back.
A runner that stands down (leadership lost) drops every rollout's series: only the leader exports them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from prometheus_client import generate_latest

from controller.analysis.metrics import VersionMetrics
from controller.controller_metrics import ControllerMetrics
from controller.engine.ports import ManagedRollout, RemovalObserver
from controller.engine.runner import RolloutRunner
from controller.state.file_store import FileStateStore
from tests.unit.engine_fixtures import FakeClock, FixedMetrics, RecordingRouter, spec

SPEC = """
service: {service}
namespace: prod
versions: [{{name: v1, weight: 100}}, {{name: v2, weight: 0}}]
target: v2
steps:
  - {{header: {{value: v2}}, duration: 10s}}
  - {{weight: 10, duration: 300s}}
schedule: {{interval: 5s}}
gates:
  - {{metric: error_rate, mode: both, max: 2, stable_margin: 1}}
  - {{metric: latency, quantile: p99, max: 250}}
"""


def rollout(service: str) -> ManagedRollout:
    return ManagedRollout.from_spec(spec(SPEC.format(service=service)))


class Broken:
    def __call__(self, event: object) -> None:
        pass

    def rollouts_removed(self, removed: Sequence[tuple[str, str]]) -> None:
        raise RuntimeError("boom")


def rollouts_in(metrics: ControllerMetrics) -> dict[str, set[str]]:
    """Per metric name, the rollouts it has series for."""
    found: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            if "rollout" in sample.labels:
                found.setdefault(family.name, set()).add(sample.labels["rollout"])
    return found


def test_a_removed_rollouts_series_all_go_and_the_others_stay(tmp_path: Path) -> None:
    metrics = ControllerMetrics()
    clock = FakeClock()
    source = FixedMetrics({"v1": VersionMetrics(200, 2), "v2": VersionMetrics(100, 0)})
    runner = RolloutRunner(RecordingRouter(), source, FileStateStore(tmp_path), clock=clock,
                           observers=[Broken(), metrics])  # fmt: skip
    assert isinstance(metrics, RemovalObserver)
    runner.set_rollouts([rollout("shop"), rollout("cart")])
    for _ in range(3):
        runner.tick()
        clock.advance(5)
    before = rollouts_in(metrics)
    per_rollout = {
        "ramp_rollout_weight_percent", "ramp_rollout_phase", "ramp_rollout_step", "ramp_rollout_header_route",
        "ramp_gate_value", "ramp_gate_verdict", "ramp_gate_evalue", "ramp_gate_threshold", "ramp_gate_stable_value",
        "ramp_rollout_info", "ramp_rollbacks", "ramp_rollout_transitions", "ramp_routing_drift",
        "ramp_state_damaged", "ramp_routing_unconfirmed", "ramp_state_save_errors",
    }  # fmt: skip
    assert {name for name, names in before.items() if names == {"shop", "cart"}} >= per_rollout

    runner.set_rollouts([rollout("cart")])  # shop's spec is deleted; a failing observer changes nothing
    after = rollouts_in(metrics)
    assert all(names == {"cart"} for names in after.values()), after
    assert set(after) == set(before)
    assert 'rollout="shop"' not in generate_latest(metrics.registry).decode()

    runner.set_rollouts([rollout("cart"), rollout("shop")])  # it comes back: exported afresh at its next tick
    runner.tick()
    back = rollouts_in(metrics)
    assert back["ramp_gate_threshold"] == {"shop", "cart"} and back["ramp_rollout_info"] == {"shop", "cart"}
    assert back["ramp_rollbacks"] == {"shop", "cart"}  # its counters start at 0 again, for increase()


def test_standing_down_drops_every_rollouts_series_until_it_ticks_again(tmp_path: Path) -> None:
    metrics = ControllerMetrics()
    clock = FakeClock()
    source = FixedMetrics({"v1": VersionMetrics(200, 2), "v2": VersionMetrics(100, 0)})
    runner = RolloutRunner(RecordingRouter(), source, FileStateStore(tmp_path), clock=clock, observers=[metrics])
    runner.set_rollouts([rollout("shop"), rollout("cart")])
    runner.tick()
    assert rollouts_in(metrics)["ramp_rollout_phase"] == {"shop", "cart"}
    runner.stand_down()
    assert rollouts_in(metrics) == {}
    assert set(runner.rollouts) == {"shop", "cart"}  # a standby keeps its rollouts
    clock.advance(5)
    runner.tick()  # leader again
    assert rollouts_in(metrics)["ramp_gate_threshold"] == {"shop", "cart"}
