"""Statistical gates: raw counter queries, the e-process across ticks, HOLD, the runner and what it shows."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from controller.analysis.gates import GateReport, GateResult, Verdict, evaluate_gates
from controller.analysis.metrics import MetricsSnapshot, VersionMetrics
from controller.analysis.prometheus import MetricsRequest, PrometheusSource
from controller.analysis.statistical_gate import GateEvidence
from controller.cli import main
from controller.controller_metrics import VERDICT_VALUE, ControllerMetrics
from controller.deadline import Deadline
from controller.engine.phases import Phase
from controller.engine.runner import ManagedRollout, RolloutRunner, metrics_request
from controller.spec import RolloutSpec
from controller.state.file_store import FileStateStore
from tests.unit.engine_fixtures import FakeClock, RecordingRouter, spec

HEAD = """
service: shop
namespace: prod
versions: [{name: v1, weight: 100}, {name: v2, weight: 0}]
target: v2
analysis: {min_requests: 20, window: 10s}
"""
ERRORS = spec(HEAD + "gates: [{metric: error_rate, mode: statistical}]\n")
TWO = spec(HEAD + "gates: [{metric: error_rate, mode: statistical}, {metric: latency, mode: statistical}]\n")


class RecordingClient:
    def __init__(self, fail_on: str | None = None) -> None:
        self.queries: list[str] = []
        self.fail_on = fail_on

    def query(self, query: str, deadline: Deadline) -> list[dict[str, Any]]:
        self.queries.append(query)
        if self.fail_on is not None and query.startswith(self.fail_on):
            raise ConnectionError("refused")
        labels = {"destination_workload_namespace": "prod", "destination_service_name": "shop"}
        if "istio_requests_total" in query:
            return [
                {"metric": {**labels, "destination_version": "v2", "response_code": "200"}, "value": [0, "900"]},
                {"metric": {**labels, "destination_version": "v2", "response_code": "503"}, "value": [0, "100"]},
            ]
        return [
            {"metric": {**labels, "destination_version": "v2", "le": "100"}, "value": [0, "950"]},
            {"metric": {**labels, "destination_version": "v2", "le": "+Inf"}, "value": [0, "1000"]},
        ]


def test_raw_counter_queries_are_sent_only_when_a_rollout_has_a_statistical_gate() -> None:
    client = RecordingClient()
    source = PrometheusSource("http://prom", client=client)
    plain = MetricsRequest("prod", "shop", 10)
    source.fetch([plain])
    assert len(client.queries) == 2  # the windowed queries only
    assert (metrics_request(ERRORS).cumulative_requests, metrics_request(ERRORS).cumulative_latency) == (True, False)
    assert (metrics_request(TWO).cumulative_requests, metrics_request(TWO).cumulative_latency) == (True, True)


def test_raw_counters_are_one_query_per_kind_for_all_rollouts_without_a_range_function() -> None:
    client = RecordingClient()
    source = PrometheusSource("http://prom", client=client)
    requests = [
        MetricsRequest("prod", "shop", 10, cumulative_requests=True, cumulative_latency=True),
        MetricsRequest("prod", "cart", 30, cumulative_requests=True),  # another window: another windowed group
        MetricsRequest("prod", "plain", 10),
    ]
    result = source.fetch(requests)
    raw = client.queries[4:]
    assert len(client.queries) == 6 and len(raw) == 2  # 2 windows x 2 kinds, then 1 per raw kind
    # per series: no aggregation, so a reset is seen per series (statistical_gate)
    assert raw[0] == (
        'istio_requests_total{reporter="destination", '
        'destination_service_name=~"cart|shop", destination_workload_namespace=~"prod"}'
    )
    assert raw[1] == (
        'istio_request_duration_milliseconds_bucket{reporter="destination", '
        'destination_service_name=~"shop", destination_workload_namespace=~"prod"}'
    )
    assert all("[" not in q and "increase" not in q and "sum" not in q for q in raw)
    v2 = result[requests[0]].cumulative[("prod", "shop", "v2")]
    assert (v2.requests, v2.errors, v2.buckets) == (1000, 100, {100.0: 950, math.inf: 1000})


def test_a_failed_raw_query_is_no_data_for_the_rollouts_that_need_it() -> None:
    source = PrometheusSource("http://prom", client=RecordingClient(fail_on="istio_requests_total{"))
    statistical, plain = MetricsRequest("prod", "shop", 10, cumulative_requests=True), MetricsRequest("prod", "x", 10)
    result = source.fetch([statistical, plain])
    assert result[plain].error is None
    error = result[statistical].error
    assert error is not None and "ConnectionError: refused" in error
    assert source.query_errors == 1


@dataclass
class Counters:
    """Cumulative per-version counters of one rollout, advanced tick by tick."""

    requests: dict[str, float] = field(default_factory=lambda: {"v1": 0.0, "v2": 0.0})
    errors: dict[str, float] = field(default_factory=lambda: {"v1": 0.0, "v2": 0.0})
    buckets: dict[str, dict[float, float]] = field(default_factory=dict)

    def add(self, version: str, requests: float, errors: float = 0, slow: float = 0, medium: float = 0) -> None:
        """Of the requests, `slow` took 100-250 ms, `medium` 50-100 ms, the others <= 50 ms."""
        self.requests[version] += requests
        self.errors[version] += errors
        b = self.buckets.setdefault(version, {50.0: 0.0, 100.0: 0.0, 250.0: 0.0, math.inf: 0.0})
        b[50.0] += requests - slow - medium
        b[100.0] += requests - slow
        b[250.0] += requests
        b[math.inf] += requests

    def snapshot(self, window: dict[str, VersionMetrics] | None = None) -> MetricsSnapshot:
        snap = MetricsSnapshot(window_seconds=10)
        for version in self.requests:
            metrics = VersionMetrics(self.requests[version], self.errors[version], dict(self.buckets.get(version, {})))
            snap.cumulative[("prod", "shop", version)] = metrics
            snap.by_workload[("prod", "shop", version)] = (window or {}).get(version, metrics)
        return snap


def run_ticks(
    gate_spec: RolloutSpec,
    counters: Counters,
    ticks: Sequence[dict[str, tuple[float, ...]]],
    evidence: dict[str, GateEvidence] | None = None,
) -> list[GateReport]:
    reports: list[GateReport] = []
    for tick in ticks:
        for version, added in tick.items():
            counters.add(version, *added)
        report = evaluate_gates(gate_spec, ("v1",), counters.snapshot(), evidence)
        evidence = dict(report.evidence)
        reports.append(report)
    return reports


def test_the_e_process_starts_at_one_then_rolls_back_a_regression_naming_e_value_and_k_over_alpha() -> None:
    counters = Counters()
    counters.add("v1", 5000, 50)
    counters.add("v2", 100, 1)
    first = evaluate_gates(ERRORS, ("v1",), counters.snapshot())
    result = first.results[0]
    assert (result.verdict, result.e_value, result.e_limit) == (Verdict.PASS, 1.0, 100.0)
    assert result.reason.endswith("error_rate: e-value 1 < 100")
    # v2 fails 6% (3 of 50 a tick), v1 about 1.1% (5 of 450): the evidence grows until it reaches 100
    reports = run_ticks(ERRORS, counters, [{"v2": (50, 3), "v1": (450, 5)}] * 30, dict(first.evidence))
    values = [r.results[0].e_value or 0.0 for r in reports]
    failed = next(i for i, r in enumerate(reports) if r.verdict == Verdict.FAIL)
    assert all(v < 100 for v in values[:failed]) and values[failed] >= 100
    assert values[:failed] == sorted(values[:failed])
    reason = reports[failed].reasons(Verdict.FAIL)
    assert reason.startswith(f"error_rate of v2: e-value {values[failed]:.4g} >= 100 = K/alpha (1/0.01); errors: ")
    assert f"{3 * (failed + 1)} of {50 * (failed + 1)} requests vs stable (v1) {5 * (failed + 1)} of " in reason


def test_k_is_the_number_of_statistical_gates() -> None:
    counters = Counters()
    reports = run_ticks(TWO, counters, [{"v2": (50, 0), "v1": (450, 0)}] * 2)
    assert [(r.gate, r.e_limit) for r in reports[-1].results] == [("error_rate", 200.0), ("latency", 200.0)]
    mixed = spec(HEAD + "gates: [{metric: error_rate, mode: statistical, alpha: 0.05}, {metric: latency, "
                 "quantile: p99, max: 300}]\n")
    report = evaluate_gates(mixed, ("v1",), counters.snapshot())
    assert [r.e_limit for r in report.results] == [20.0, None]  # 1 / 0.05; the threshold gate has none


def test_identical_error_rates_keep_the_e_value_low() -> None:
    counters = Counters()
    reports = run_ticks(ERRORS, counters, [{"v2": (50, 1), "v1": (450, 9)}] * 40)
    assert all(r.verdict == Verdict.PASS for r in reports)
    assert (reports[-1].results[0].e_value or 1.0) < 0.1


def test_a_statistical_gate_never_passes_without_traffic_on_the_new_version_but_keeps_counting() -> None:
    counters = Counters()
    report = evaluate_gates(ERRORS, ("v1",), counters.snapshot({"v2": VersionMetrics(5, 0)}))
    assert report.verdict == Verdict.NO_DATA
    assert "v2 had 5 requests in the last 10s, gates need 20" in report.reasons(Verdict.NO_DATA)
    assert report.evidence["error_rate"].counters == {"v1": (0.0, 0.0), "v2": (0.0, 0.0)}


def test_prometheus_down_is_no_data_and_the_e_process_is_kept() -> None:
    counters = Counters()
    reports = run_ticks(ERRORS, counters, [{"v2": (50, 3), "v1": (450, 5)}] * 3)
    kept = dict(reports[-1].evidence)
    down = evaluate_gates(ERRORS, ("v1",), MetricsSnapshot(10, error="Prometheus at x did not answer"), kept)
    assert down.verdict == Verdict.NO_DATA and down.evidence == kept
    result = down.results[0]
    assert (result.e_value, result.e_limit) == (kept["error_rate"].e_value, 100.0)  # still shown


def test_latency_threshold_is_stable_p99_at_the_start_snapped_to_a_bucket_and_frozen() -> None:
    gate_spec = spec(HEAD + "gates: [{metric: latency, mode: statistical}]\n")
    counters = Counters()
    # stable: 2% between 50 and 100 ms; its p99 interpolates to 75 ms and snaps up to the 100 ms bound
    counters.add("v1", 1000, medium=20)
    counters.add("v2", 100)
    first = evaluate_gates(gate_spec, ("v1",), counters.snapshot())
    assert first.evidence["latency"].slow_ms == 100.0
    # stable gets a slow tail (its p99 would now snap to 250), which must not move the frozen threshold;
    # v2 is slower than 100 ms 20% of the time against stable's 1.1%
    reports = run_ticks(
        gate_spec, counters, [{"v1": (450, 0, 5), "v2": (50, 0, 10)}] * 30, dict(first.evidence)
    )
    stable_now = counters.snapshot().version("prod", "shop", "v1")
    assert stable_now is not None and (stable_now.quantile(0.99) or 0) > 100
    assert all(r.evidence["latency"].slow_ms == 100.0 for r in reports)
    failed = next(r for r in reports if r.verdict == Verdict.FAIL)
    assert failed.reasons(Verdict.FAIL).startswith("latency of v2: e-value ")
    assert "slower than 100ms: " in failed.reasons(Verdict.FAIL)


def test_explicit_slow_ms_wins_and_is_snapped_up() -> None:
    gate_spec = spec(HEAD + "gates: [{metric: latency, mode: statistical, slow_ms: 60, max: 240}]\n")
    counters = Counters()
    counters.add("v1", 100)
    counters.add("v2", 100)
    assert evaluate_gates(gate_spec, ("v1",), counters.snapshot()).evidence["latency"].slow_ms == 100.0


BOTH = spec(HEAD + "gates: [{metric: error_rate, mode: both, max: 5}]\n")
THRESHOLD = spec(HEAD + "gates: [{metric: error_rate, max: 5}]\n")


def test_both_versions_breaching_max_holds_instead_of_rolling_back() -> None:
    window = {"v1": VersionMetrics(1000, 250), "v2": VersionMetrics(100, 30)}
    report = evaluate_gates(BOTH, ("v1",), Counters().snapshot(window))
    assert report.verdict == Verdict.HOLD
    assert report.reasons(Verdict.HOLD) == (
        "error_rate of v2 is 30.00% > max 5.00%, but stable (v1) is 25.00% too (a shared dependency?)"
    )
    alone = {"v1": VersionMetrics(1000, 10), "v2": VersionMetrics(100, 30)}
    assert evaluate_gates(BOTH, ("v1",), Counters().snapshot(alone)).verdict == Verdict.FAIL
    # threshold mode keeps its semantics: a breach rolls back whatever stable does
    assert evaluate_gates(THRESHOLD, ("v1",), Counters().snapshot(window)).verdict == Verdict.FAIL


def test_the_e_process_still_rolls_back_while_the_guardrail_holds() -> None:
    counters = Counters()
    window = {"v1": VersionMetrics(1000, 250), "v2": VersionMetrics(100, 30)}
    evidence = None
    verdicts = []
    for _ in range(20):  # both above 5%, but v2 clearly worse than v1 (30% vs 10%, at 10% weight)
        counters.add("v2", 50, 15)
        counters.add("v1", 450, 45)
        report = evaluate_gates(BOTH, ("v1",), counters.snapshot(window), evidence)
        evidence = dict(report.evidence)
        verdicts.append(report.verdict)
    assert verdicts[0] == Verdict.HOLD and verdicts[-1] == Verdict.FAIL


class GrowingMetrics:
    """A metric source whose counters grow every fetch: v1 at 1% errors, v2 at `v2_errors`."""

    def __init__(self, v2_errors: float) -> None:
        self.counters = Counters()
        self.v2_errors = v2_errors

    def fetch(
        self, requests: Sequence[MetricsRequest], deadline: Deadline | None = None
    ) -> dict[MetricsRequest, MetricsSnapshot]:
        self.counters.add("v1", 450, 4.5)
        self.counters.add("v2", 50, 50 * self.v2_errors)
        return {r: self.counters.snapshot() for r in requests}


STATISTICAL_ROLLOUT = """
service: shop
namespace: prod
versions: [{name: v1, weight: 100}, {name: v2, weight: 0}]
target: v2
steps:
  - {header: {value: v2}, duration: 10s}
  - {weight: 10, duration: 300s}
gates: [{metric: error_rate, mode: statistical}]
schedule: {interval: 5s}
"""


def test_the_runner_rolls_back_on_the_e_value_and_shows_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clock, metrics = FakeClock(), ControllerMetrics()
    store = FileStateStore(tmp_path)
    runner = RolloutRunner(RecordingRouter(), GrowingMetrics(0.01), store, clock=clock, observers=[metrics])
    runner.set_rollouts([ManagedRollout.from_spec(spec(STATISTICAL_ROLLOUT))])
    for _ in range(4):
        runner.tick()
        clock.advance(5)
    state = store.load("shop")
    assert state is not None and state.phase == Phase.PROGRESSING
    assert set(state.sequential) == {"error_rate"} and state.e_values["error_rate"].limit == 100.0
    assert "sequential" not in state.durable() and "e_values" not in state.durable()
    text = generate_latest(metrics.registry).decode()
    value = state.e_values["error_rate"].value
    assert f'ramp_gate_evalue{{gate="error_rate",namespace="prod",rollout="shop"}} {value!r}' in text
    assert main(["status", "--state-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"gate error_rate       pass     value=1.00 e-value={value:.3g} (rolls back at 100)" in out
    runner.metrics = GrowingMetrics(0.1)  # v2 now fails 10% against v1's 1%
    for _ in range(30):
        runner.tick()
        clock.advance(5)
        if runner.all_terminal():
            break
    state = store.load("shop")
    assert state is not None and state.phase == Phase.ROLLED_BACK
    assert state.reason.startswith("gate failed: error_rate of v2: e-value ")
    assert ">= 100 = K/alpha (1/0.01)" in state.reason
    assert 'ramp_rollbacks_total{cause="gate:error_rate",namespace="prod",rollout="shop"} 1.0' in generate_latest(
        metrics.registry
    ).decode()


def test_report_verdict_precedence_and_the_exported_hold_value() -> None:
    def report(*verdicts: Verdict) -> GateReport:
        return GateReport(tuple(GateResult(f"g{i}", v, None, None, v.value) for i, v in enumerate(verdicts)))

    assert report(Verdict.PASS, Verdict.HOLD).verdict == Verdict.HOLD
    assert report(Verdict.HOLD, Verdict.NO_DATA).verdict == Verdict.NO_DATA
    assert report(Verdict.HOLD, Verdict.NO_DATA, Verdict.FAIL).verdict == Verdict.FAIL
    assert report(Verdict.PASS, Verdict.PASS).verdict == Verdict.PASS
    assert VERDICT_VALUE == {Verdict.PASS: 1.0, Verdict.HOLD: 0.5, Verdict.NO_DATA: 0.0, Verdict.FAIL: -1.0}
