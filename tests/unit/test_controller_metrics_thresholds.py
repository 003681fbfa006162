"""The gates' thresholds, stable's gate values and the rollout's service as controller metrics, from real ticks of
the runner: `ramp_gate_threshold{kind,unit}` per gate mode, label sets that a changed spec dropped are removed,
thresholds are recomputed only when the spec changes, and NaN/Inf never reaches /metrics."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import generate_latest

import controller.controller_gate_metrics as gate_metrics
from controller.analysis.gate_thresholds import GateThreshold, gate_thresholds
from controller.analysis.gates import GateReport, GateResult, Verdict
from controller.analysis.metrics import VersionMetrics
from controller.controller_gate_metrics import threshold_values
from controller.controller_metrics import ControllerMetrics
from controller.engine.runner import ManagedRollout, RolloutRunner, TickEvent
from controller.state.file_store import FileStateStore
from tests.unit.engine_fixtures import FakeClock, FixedMetrics, RecordingRouter, spec

HEAD = """
service: shop
namespace: prod
versions: [{name: v1, weight: 100}, {name: v2, weight: 0}]
target: v2
steps:
  - {header: {value: v2}, duration: 10s}
  - {weight: 10, duration: 300s}
schedule: {interval: 5s}
"""
SEL = 'destination_service_name=~"{{ service }}", destination_workload_namespace=~"{{ namespace }}"'
BY = "destination_workload_namespace, destination_service_name, destination_version"
QUERY = f"sum by ({BY}) (rate(x{{{SEL}}}[{{{{ window }}}}]))"
Labels = tuple[tuple[str, str], ...]


class Harness:
    """A runner ticking one rollout with ControllerMetrics as its observer; records the TickEvents."""

    def __init__(self, tmp_path: Path, gates: str, head: str = HEAD) -> None:
        self.metrics = ControllerMetrics()
        self.events: list[TickEvent] = []
        self.clock = FakeClock()
        self.source = FixedMetrics({"v1": VersionMetrics(200, 2), "v2": VersionMetrics(100, 0)})
        self.runner = RolloutRunner(RecordingRouter(), self.source, FileStateStore(tmp_path), clock=self.clock,
                                    observers=[self.metrics, self.events.append])
        self.use(gates, head)

    def use(self, gates: str, head: str = HEAD) -> None:
        self.runner.set_rollouts([ManagedRollout.from_spec(spec(head + "gates:\n" + gates))])

    def tick(self, times: int = 1) -> None:
        for _ in range(times):
            self.runner.tick()
            self.clock.advance(5)

    def series(self, name: str) -> dict[Labels, float]:
        """Every exported sample of a metric, by its sorted labels."""
        return {
            tuple(sorted(sample.labels.items())): sample.value
            for family in self.metrics.registry.collect()
            for sample in family.samples
            if sample.name == name
        }

    def thresholds(self) -> dict[tuple[str, str, str], float]:
        found = {}
        for labels, value in self.series("ramp_gate_threshold").items():
            named = dict(labels)
            assert (named["rollout"], named["namespace"]) == ("shop", "prod")
            found[(named["gate"], named["kind"], named["unit"])] = value
        return found

    def gates_of(self, name: str) -> set[str]:
        return {dict(labels)["gate"] for labels in self.series(name)}


def test_threshold_gates_export_max_and_stable_margin_in_their_units(tmp_path: Path) -> None:
    h = Harness(tmp_path, "  - {metric: error_rate, max: 2, stable_margin: 1}\n"
                          "  - {metric: latency, quantile: p99, max: 250}\n")
    h.tick()
    assert h.thresholds() == {
        ("error_rate", "max", "%"): 2.0,
        ("error_rate", "stable_margin", "%"): 1.0,
        ("latency-p99", "max", "ms"): 250.0,
    }
    text = generate_latest(h.metrics.registry).decode()
    assert 'ramp_gate_threshold{gate="error_rate",kind="max",namespace="prod",rollout="shop",unit="%"} 2.0' in text
    assert 'ramp_rollout_info{namespace="prod",rollout="shop",service="shop"} 1.0' in text
    assert h.series("ramp_gate_evalue") == {}  # no statistical gate


def test_statistical_gates_export_tolerance_and_k_over_alpha_but_no_threshold(tmp_path: Path) -> None:
    h = Harness(tmp_path, "  - {metric: error_rate, mode: statistical, tolerance: 1.5, alpha: 0.05}\n"
                          "  - {name: slow, metric: latency, quantile: p99, mode: statistical, max: 300}\n")
    h.tick(2)  # the first tick starts the rollout, the second judges its gates
    # K = 2 statistical gates: each rolls back at K / alpha; a latency max in mode statistical only sets "slow"
    assert h.thresholds() == {
        ("error_rate", "tolerance", "ratio"): 1.5,
        ("error_rate", "k_over_alpha", "e-value"): 40.0,
        ("slow", "tolerance", "ratio"): 1.2,
        ("slow", "k_over_alpha", "e-value"): 200.0,
    }
    assert h.gates_of("ramp_gate_evalue") == {"error_rate", "slow"}


def test_mode_both_exports_the_thresholds_and_the_test_boundary_as_the_demo_spec_does(tmp_path: Path) -> None:
    h = Harness(tmp_path, "  - {metric: error_rate, mode: both, max: 2, stable_margin: 1}\n"
                          "  - {metric: latency, quantile: p99, max: 250}\n")
    h.tick()
    assert h.thresholds() == {
        ("error_rate", "max", "%"): 2.0,
        ("error_rate", "stable_margin", "%"): 1.0,
        ("error_rate", "tolerance", "ratio"): 1.2,
        ("error_rate", "k_over_alpha", "e-value"): 100.0,
        ("latency-p99", "max", "ms"): 250.0,
    }
    expected = {(t.gate, t.kind, t.unit): t.value for t in gate_thresholds(h.runner.rollouts["shop"].spec)}
    assert h.thresholds() == expected


def test_custom_gates_export_min_max_and_margin_in_the_querys_unit(tmp_path: Path) -> None:
    h = Harness(tmp_path, f"  - {{name: ok-rate, metric: custom, min: 95, stable_margin: 0.5, "
                          f"higher_is_better: true, query: '{QUERY}'}}\n"
                          f"  - {{name: lag, metric: custom, max: 9, min: 1, query: '{QUERY}'}}\n")
    h.tick()
    assert h.thresholds() == {
        ("ok-rate", "min", ""): 95.0,
        ("ok-rate", "stable_margin", ""): 0.5,
        ("lag", "max", ""): 9.0,
        ("lag", "min", ""): 1.0,
    }


def test_stable_value_is_exported_next_to_the_new_versions_value(tmp_path: Path) -> None:
    h = Harness(tmp_path, "  - {metric: error_rate, max: 2, stable_margin: 1}\n")
    h.tick(2)  # the header step: v1 200 requests with 2 errors, v2 100 without
    labels = (("gate", "error_rate"), ("namespace", "prod"), ("rollout", "shop"))
    assert h.series("ramp_gate_stable_value") == {labels: 1.0}
    assert h.series("ramp_gate_value") == {labels: 0.0}
    h.source.by_version["v1"] = VersionMetrics(200, 6)
    h.tick()
    assert h.series("ramp_gate_stable_value") == {labels: 3.0}


def test_below_min_requests_the_values_seen_are_exported_with_a_no_data_verdict(tmp_path: Path) -> None:
    # what a dashboard needs when a statistical gate rolls back before the new version reaches min_requests
    h = Harness(tmp_path, "  - {metric: error_rate, mode: both, max: 2, stable_margin: 1}\n")
    h.source.by_version["v2"] = VersionMetrics(9, 5)
    h.tick(2)  # the start, then a judged tick of the header step
    labels = (("gate", "error_rate"), ("namespace", "prod"), ("rollout", "shop"))
    assert h.events[-1].report is not None and h.events[-1].report.results[0].verdict == Verdict.NO_DATA
    assert h.series("ramp_gate_verdict") == {labels: 0.0}
    assert h.series("ramp_gate_value") == {labels: pytest.approx(100 * 5 / 9)}
    assert h.series("ramp_gate_stable_value") == {labels: 1.0}


def test_a_changed_spec_removes_the_thresholds_and_gate_series_it_no_longer_has(tmp_path: Path) -> None:
    h = Harness(tmp_path, "  - {metric: error_rate, mode: both, max: 2, stable_margin: 1}\n"
                          "  - {metric: latency, quantile: p99, max: 250}\n")
    h.tick(2)
    assert h.gates_of("ramp_gate_verdict") == {"error_rate", "latency-p99"}
    assert h.gates_of("ramp_gate_stable_value") == {"error_rate"}
    assert h.gates_of("ramp_gate_evalue") == {"error_rate"}
    # error_rate loses its margin and its test (threshold mode), the latency gate is gone, the max changes
    h.use("  - {metric: error_rate, max: 3}\n")
    h.tick()
    assert h.thresholds() == {("error_rate", "max", "%"): 3.0}
    assert h.gates_of("ramp_gate_verdict") == {"error_rate"}
    assert h.gates_of("ramp_gate_evalue") == {"error_rate"}  # a gate still in the spec keeps its last series
    # a renamed service: its info series moves, no second one stays behind
    h.use("  - {name: errors, metric: error_rate, max: 3}\n", HEAD.replace("service: shop", "name: shop\nservice: web"))
    h.tick()
    assert h.thresholds() == {("errors", "max", "%"): 3.0}
    for name in ("ramp_gate_value", "ramp_gate_verdict", "ramp_gate_evalue", "ramp_gate_stable_value"):
        assert h.gates_of(name) <= {"errors"}, name
    assert h.series("ramp_rollout_info") == {(("namespace", "prod"), ("rollout", "shop"), ("service", "web")): 1.0}


def test_thresholds_are_computed_once_per_spec_not_per_tick(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def counting(spec_: object) -> list[GateThreshold]:
        calls.append("x")
        return gate_thresholds(spec_)  # type: ignore[arg-type]

    monkeypatch.setattr(gate_metrics, "gate_thresholds", counting)
    h = Harness(tmp_path, "  - {metric: error_rate, max: 2}\n")
    h.tick(5)
    assert len(calls) == 1
    h.use("  - {metric: error_rate, max: 4}\n")
    h.tick(3)
    assert len(calls) == 2 and h.thresholds() == {("error_rate", "max", "%"): 4.0}


def test_non_finite_values_are_never_exported(tmp_path: Path) -> None:
    h = Harness(tmp_path, "  - {metric: error_rate, mode: both, max: 2, stable_margin: 1}\n")
    h.tick(2)
    before = {name: h.series(name) for name in ("ramp_gate_value", "ramp_gate_stable_value", "ramp_gate_evalue")}
    assert all(before.values()), before
    for bad in (math.nan, math.inf, -math.inf):
        hostile = GateReport((GateResult("error_rate", Verdict.HOLD, bad, bad, "hostile", e_value=bad, e_limit=bad),))
        h.metrics.observe(replace(h.events[-1], report=hostile))
        text = generate_latest(h.metrics.registry).decode()
        assert "NaN" not in text and "Inf\n" not in text.replace('le="+Inf"', ""), text
        # the last finite values stay; the verdict is still reported
        assert {name: h.series(name) for name in before} == before
        verdicts = h.series("ramp_gate_verdict")
        assert verdicts == {(("gate", "error_rate"), ("namespace", "prod"), ("rollout", "shop")): 0.5}


def test_threshold_values_keep_the_strictest_of_a_repeated_gate_name_and_drop_non_finite() -> None:
    values = threshold_values([
        GateThreshold("latency-p99", "max", 500.0, "ms"),
        GateThreshold("latency-p99", "max", 250.0, "ms"),
        GateThreshold("ok", "min", 90.0, ""),
        GateThreshold("ok", "min", 95.0, ""),
        GateThreshold("ok", "stable_margin", math.nan, ""),
        GateThreshold("ok", "max", math.inf, ""),
    ])
    assert values == {("latency-p99", "max", "ms"): 250.0, ("ok", "min", ""): 95.0}


def test_two_gates_with_one_name_export_the_binding_max(tmp_path: Path) -> None:
    h = Harness(tmp_path, "  - {metric: latency, quantile: p99, max: 500}\n"
                          "  - {metric: latency, quantile: p99, max: 250}\n")
    h.tick()
    assert h.thresholds() == {("latency-p99", "max", "ms"): 250.0}
