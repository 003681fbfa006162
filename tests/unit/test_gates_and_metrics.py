from __future__ import annotations

import math
from typing import Any

import pytest

from controller.analysis.gates import Verdict, evaluate_gates
from controller.analysis.metrics import MetricsSnapshot, VersionMetrics, histogram_quantile
from controller.analysis.prometheus import MetricsRequest, PrometheusSource
from controller.deadline import Deadline
from tests.unit.engine_fixtures import spec

GATED = spec(
    """
service: shop
namespace: prod
versions: [{name: v1, weight: 100}, {name: v2, weight: 0}]
target: v2
gates:
  - {metric: error_rate, max: 5, stable_margin: 1}
  - {metric: latency, quantile: p99, max: 300}
analysis: {min_requests: 20, window: 10s}
"""
)


def test_histogram_quantile_matches_prometheus_interpolation() -> None:
    # 100 observations: 50 in (0,10], 40 in (10,100], 10 in (100,+Inf]
    buckets = [(10.0, 50.0), (100.0, 90.0), (math.inf, 100.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(10.0)
    assert histogram_quantile(0.7, buckets) == pytest.approx(10 + 90 * (70 - 50) / 40)
    assert histogram_quantile(0.99, buckets) == 100.0  # falls in +Inf: highest finite bound
    assert histogram_quantile(0.25, buckets) == pytest.approx(5.0)
    assert histogram_quantile(0.5, [(10.0, 0.0), (math.inf, 0.0)]) is None
    assert histogram_quantile(0.5, [(10.0, 3.0)]) is None  # no +Inf bucket


def snapshot(**versions: VersionMetrics) -> MetricsSnapshot:
    snap = MetricsSnapshot(window_seconds=10)
    for name, metrics in versions.items():
        snap.by_workload[("prod", "shop", name)] = metrics
    return snap


def healthy(n: float = 100) -> VersionMetrics:
    return VersionMetrics(requests=n, errors=0, buckets={50.0: n, math.inf: n})


def test_too_few_requests_is_no_data_with_counts_in_reason() -> None:
    report = evaluate_gates(GATED, ("v1",), snapshot(v1=healthy(), v2=healthy(7)))
    assert report.verdict == Verdict.NO_DATA
    assert "v2 had 7 requests in the last 10s, gates need 20" in report.reasons(Verdict.NO_DATA)


def test_too_few_requests_is_never_judged_but_what_was_seen_is_shown() -> None:
    # 5 errors in 7 requests: not judged (a statistical gate may roll back on them; a threshold never does),
    # but the dashboards and reports show the 71% and stable's value beside it
    v2 = VersionMetrics(requests=7, errors=5, buckets={50.0: 7, math.inf: 7})
    v1 = VersionMetrics(requests=200, errors=2, buckets={50.0: 200, math.inf: 200})
    report = evaluate_gates(GATED, ("v1",), snapshot(v1=v1, v2=v2))
    error = report.results[0]
    assert report.verdict == Verdict.NO_DATA and error.verdict == Verdict.NO_DATA
    assert error.value == pytest.approx(100 * 5 / 7) and error.stable_value == pytest.approx(1.0)
    assert "v2 had 7 requests in the last 10s, gates need 20" in error.reason
    nothing = evaluate_gates(GATED, ("v1",), snapshot(v1=v1))  # no request at all: no value, stable's still shown
    assert [(r.verdict, r.value) for r in nothing.results] == [(Verdict.NO_DATA, None)] * 2
    assert nothing.results[0].stable_value == pytest.approx(1.0)


def test_absolute_breach_fails_with_breaching_value() -> None:
    v2 = VersionMetrics(requests=100, errors=20, buckets={50.0: 100, math.inf: 100})
    report = evaluate_gates(GATED, ("v1",), snapshot(v1=healthy(), v2=v2))
    assert report.verdict == Verdict.FAIL
    assert "error_rate of v2 is 20.00% > max 5.00%" in report.reasons(Verdict.FAIL)


def test_stable_comparison_fails_when_worse_than_stable_plus_margin() -> None:
    v1 = VersionMetrics(requests=1000, errors=10, buckets={50.0: 1000, math.inf: 1000})  # 1%
    v2 = VersionMetrics(requests=100, errors=3, buckets={50.0: 100, math.inf: 100})  # 3% < max 5
    report = evaluate_gates(GATED, ("v1",), snapshot(v1=v1, v2=v2))
    assert report.verdict == Verdict.FAIL
    assert "> stable (v1) 1.00% + margin 1.00%" in report.reasons(Verdict.FAIL)


def test_latency_gate_uses_p99_from_buckets() -> None:
    v2 = VersionMetrics(requests=100, errors=0, buckets={250.0: 50, 500.0: 100, math.inf: 100})
    report = evaluate_gates(GATED, ("v1",), snapshot(v1=healthy(), v2=v2))
    latency = report.results[1]
    assert latency.verdict == Verdict.FAIL and latency.value == pytest.approx(495.0)


def test_prometheus_error_is_no_data_never_pass() -> None:
    snap = MetricsSnapshot(window_seconds=10, error="Prometheus at http://x did not answer")
    report = evaluate_gates(GATED, ("v1",), snap)
    assert report.verdict == Verdict.NO_DATA
    assert all("did not answer" in r.reason for r in report.results)


class FakeQueryClient:
    def __init__(self, fail: bool = False) -> None:
        self.queries: list[str] = []
        self.fail = fail

    def query(self, query: str, deadline: Deadline) -> list[dict[str, Any]]:
        self.queries.append(query)
        if self.fail:
            raise ConnectionError("refused")
        labels = {"destination_workload_namespace": "prod", "destination_service_name": "shop"}
        if "istio_requests_total" in query:
            return [
                {"metric": {**labels, "destination_version": "v2", "response_code": "200"}, "value": [0, "90"]},
                {"metric": {**labels, "destination_version": "v2", "response_code": "503"}, "value": [0, "10"]},
                {"metric": {**labels, "destination_version": "v1", "response_code": "200"}, "value": [0, "NaN"]},
            ]
        return [
            {"metric": {**labels, "destination_version": "v2", "le": "100"}, "value": [0, "95"]},
            {"metric": {**labels, "destination_version": "v2", "le": "+Inf"}, "value": [0, "100"]},
        ]


def test_prometheus_source_batches_all_rollouts_into_one_query_per_kind() -> None:
    client = FakeQueryClient()
    source = PrometheusSource("http://prom", client=client)
    requests = [MetricsRequest("prod", f"svc{i}", 10) for i in range(50)] + [MetricsRequest("prod", "shop", 10)]
    result = source.fetch(requests)
    assert len(client.queries) == 2
    assert 'destination_service_name=~"shop|svc0|svc1|' in client.queries[0]
    v2 = result[requests[-1]].version("prod", "shop", "v2")
    assert v2 is not None and (v2.requests, v2.errors) == (100, 10)
    assert v2.buckets == {100.0: 95, math.inf: 100}
    # v1's NaN is not dropped (that made its error rate read 0%): v1's data is untrusted this tick, with the reason
    assert result[requests[-1]].version("prod", "shop", "v1") is None
    problem = result[requests[-1]].problem(["requests"], "prod", "shop", ["v1"])
    assert problem is not None and problem.startswith("Prometheus returned NaN for istio_requests_total{")
    assert result[requests[-1]].problem(["requests"], "prod", "shop", ["v2"]) is None


def test_prometheus_source_failure_becomes_snapshot_error() -> None:
    client = FakeQueryClient(fail=True)
    source = PrometheusSource("http://prom", client=client)
    request = MetricsRequest("prod", "shop", 10)
    snap = source.fetch([request])[request]
    assert len(client.queries) == 1  # a failed tick does not wait for a second timeout
    assert snap.error is not None and "ConnectionError: refused" in snap.error
    assert source.query_errors == 1
