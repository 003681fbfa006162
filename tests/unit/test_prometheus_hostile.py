"""Hostile Prometheus answers over real HTTP (the fake Prometheus on 127.0.0.1, the real PrometheusSource):
every bad sample makes exactly the affected gates *no data* with a reason, never *pass*, never a traceback."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.analysis.gates import GateReport, Verdict, evaluate_gates
from controller.analysis.metrics import MetricsSnapshot
from controller.analysis.prometheus import MetricsRequest, PrometheusSource
from controller.deadline import Deadline
from controller.spec import RolloutSpec
from tests.fakes.prometheus import FakePrometheus, Reply, istio, sample, vector
from tests.unit.engine_fixtures import spec


def rollout(service: str, gates: str = "[{metric: error_rate, max: 5}, {metric: latency, quantile: p99, max: 300}]"
            ) -> RolloutSpec:
    built: RolloutSpec = spec(
        f"service: {service}\nnamespace: prod\nversions: [{{name: v1, weight: 90}}, {{name: v2, weight: 10}}]\n"
        f"target: v2\ngates: {gates}\nanalysis: {{min_requests: 20, window: 10s}}\n"
    )
    return built


SHOP, CART = rollout("shop"), rollout("cart")


def healthy_requests(service: str, version: str) -> list[dict[str, Any]]:
    return [
        sample(istio("prod", service, version, response_code="200"), 100),
        sample(istio("prod", service, version, response_code="503"), 0),
    ]


def healthy_buckets(service: str, version: str) -> list[dict[str, Any]]:
    return [
        sample(istio("prod", service, version, le="100"), 100),
        sample(istio("prod", service, version, le="+Inf"), 100),
    ]


def healthy(*services: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    requests = [s for svc in services for v in ("v1", "v2") for s in healthy_requests(svc, v)]
    buckets = [s for svc in services for v in ("v1", "v2") for s in healthy_buckets(svc, v)]
    return requests, buckets


@pytest.fixture
def prom() -> Iterator[FakePrometheus]:
    with FakePrometheus() as fake:
        yield fake


def judge(prom: FakePrometheus, *specs: RolloutSpec) -> dict[str, GateReport]:
    """One tick through the real source over HTTP, then the gates of each rollout."""
    source = PrometheusSource(prom.url)
    requests = {s.service: MetricsRequest(s.namespace, s.service, s.analysis.window) for s in specs}
    fetched = source.fetch(list(requests.values()), Deadline(10))
    return {s.service: evaluate_gates(s, ("v1",), fetched[requests[s.service]]) for s in specs}


def serve(prom: FakePrometheus, requests: list[dict[str, Any]], buckets: list[dict[str, Any]]) -> None:
    prom.answer("istio_requests_total", vector(*requests))
    prom.answer("istio_request_duration_milliseconds_bucket", vector(*buckets))


def test_a_healthy_answer_passes(prom: FakePrometheus) -> None:
    serve(prom, *healthy("shop"))
    assert judge(prom, SHOP)["shop"].verdict == Verdict.PASS


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ("NaN", "Prometheus returned NaN for istio_requests_total{"),
        ("+Inf", "Prometheus returned +Inf for istio_requests_total{"),
        ("-Inf", "Prometheus returned -Inf for istio_requests_total{"),
        ("-3", "Prometheus returned a negative value -3 for"),
        ("abc", "Prometheus returned an unparseable value \"abc\" for"),
        ("", "Prometheus returned an unparseable value \"\" for"),
        ("1e999", "Prometheus returned an out-of-range value"),
        (5.0, "Prometheus returned a float value 5.0 instead of a string for"),
        (None, "Prometheus returned a NoneType value null instead of a string"),
    ],
)
def test_a_bad_5xx_value_of_the_target_is_no_data_never_pass(prom: FakePrometheus, value: Any, named: str) -> None:
    """The bug: NaN/Inf/negative 5xx samples were dropped, so v2's error rate read 0 % and it was promoted."""
    requests, buckets = healthy("shop")
    requests[3] = sample(istio("prod", "shop", "v2", response_code="503"), value, raw=True)
    serve(prom, requests, buckets)
    report = judge(prom, SHOP)["shop"]
    assert report.verdict == Verdict.NO_DATA
    assert all(r.verdict == Verdict.NO_DATA for r in report.results)  # request counts feed every gate
    reason = report.reasons(Verdict.NO_DATA)
    assert named in reason
    assert 'destination_version="v2", response_code="503"' in reason


@pytest.mark.parametrize(
    ("element", "named"),
    [
        (sample(istio("prod", "shop", "v2", response_code="503"), "7", timestamp="x"), 'a timestamp "x"'),
        (sample(istio("prod", "shop", "v2", response_code="503"), "7", timestamp=True), "a timestamp true"),
        ({"metric": istio("prod", "shop", "v2", response_code="503"), "value": ["1", 2, 3]}, "instead of a [timestamp"),
        ({"metric": istio("prod", "shop", "v2", response_code="503"), "value": "7"}, "instead of a [timestamp"),
        ({"metric": istio("prod", "shop", "v2", response_code="503")}, "a value null instead of a [timestamp"),
        (sample({**istio("prod", "shop", "v2"), "response_code": 503}, "7"), "a int label response_code=503"),
        (sample({**istio("prod", "shop", "v2", response_code="503"), "pod": 7}, "7"), "a int label pod=7"),
        (sample(istio("prod", "shop", "v2", response_code="5xx"), "7"), 'a response_code of "5xx"'),
        (sample(istio("prod", "shop", "v2"), "7"), "a response_code of null"),
        (sample(istio("prod", "shop", "v2", response_code="200"), "100"), "the same series twice"),
    ],
)
def test_mistyped_samples_of_the_target_are_no_data(prom: FakePrometheus, element: dict[str, Any], named: str) -> None:
    requests, buckets = healthy("shop")
    serve(prom, [*requests, element], buckets)
    report = judge(prom, SHOP)["shop"]
    assert report.verdict == Verdict.NO_DATA and named in report.reasons(Verdict.NO_DATA)


@pytest.mark.parametrize("le", ["abc", "NaN", "-5", "", "Inf", 100])
def test_a_bad_bucket_bound_blanks_only_the_latency_gate(prom: FakePrometheus, le: Any) -> None:
    requests, buckets = healthy("shop")
    buckets.append(sample({**istio("prod", "shop", "v2"), "le": le}, "3"))
    serve(prom, requests, buckets)
    error_gate, latency_gate = judge(prom, SHOP)["shop"].results
    assert error_gate.verdict == Verdict.PASS
    assert latency_gate.verdict == Verdict.NO_DATA
    assert "istio_request_duration_milliseconds_bucket{" in latency_gate.reason
    assert ("a bucket bound le=" in latency_gate.reason) or ("a int label le=100" in latency_gate.reason)


def test_a_bucket_without_le_is_no_data_for_latency(prom: FakePrometheus) -> None:
    requests, buckets = healthy("shop")
    serve(prom, requests, [*buckets, sample(istio("prod", "shop", "v1"), "3")])
    latency_gate = judge(prom, SHOP)["shop"].results[1]
    assert latency_gate.verdict == Verdict.NO_DATA and "a bucket without an le label" in latency_gate.reason


def test_a_bad_sample_of_one_rollout_does_not_blank_the_others_in_the_batch(prom: FakePrometheus) -> None:
    requests, buckets = healthy("shop", "cart")
    requests.append(sample(istio("prod", "cart", "v2", response_code="500"), "NaN"))
    requests.append(sample(istio("prod", "shop", "v0", response_code="500"), "-1"))  # v0: not in shop's rollout
    serve(prom, requests, buckets)
    reports = judge(prom, SHOP, CART)
    assert len(prom.queries) == 2  # still one query per metric kind for both rollouts
    assert reports["shop"].verdict == Verdict.PASS
    assert reports["cart"].verdict == Verdict.NO_DATA
    assert 'destination_service_name="cart", destination_version="v2"' in reports["cart"].reasons(Verdict.NO_DATA)


def test_a_bad_sample_of_the_stable_version_is_no_data(prom: FakePrometheus) -> None:
    requests, buckets = healthy("shop")
    requests[0] = sample(istio("prod", "shop", "v1", response_code="200"), "+Inf")
    serve(prom, requests, buckets)
    report = judge(prom, SHOP)["shop"]
    assert report.verdict == Verdict.NO_DATA and 'destination_version="v1"' in report.reasons(Verdict.NO_DATA)


def test_an_unreadable_version_label_blanks_that_service_only(prom: FakePrometheus) -> None:
    requests, buckets = healthy("shop", "cart")
    requests.append(sample({**istio("prod", "cart", "v2", response_code="500"), "destination_version": 2}, "9"))
    serve(prom, requests, buckets)
    reports = judge(prom, SHOP, CART)
    assert (reports["shop"].verdict, reports["cart"].verdict) == (Verdict.PASS, Verdict.NO_DATA)
    assert "a int label destination_version=2" in reports["cart"].reasons(Verdict.NO_DATA)


@pytest.mark.parametrize(
    "element",
    [
        {"metric": ["prod", "shop"], "value": [1, "5"]},
        {"metric": "shop", "value": [1, "5"]},
        ["not", "an", "object"],
        "istio_requests_total 5",
        sample({**istio("prod", "x", "v2", response_code="500"), "destination_workload_namespace": 1}, "5"),
        sample({"destination_version": "v2", "response_code": "500"}, "5"),
    ],
)
def test_an_unattributable_sample_blanks_every_rollout_of_the_query(prom: FakePrometheus, element: Any) -> None:
    requests, buckets = healthy("shop", "cart")
    serve(prom, [*requests, element], buckets)
    reports = judge(prom, SHOP, CART)
    for report in reports.values():
        assert report.verdict == Verdict.NO_DATA
        assert "Prometheus returned " in report.reasons(Verdict.NO_DATA)


@pytest.mark.parametrize(
    ("reply", "named"),
    [
        (Reply(body=b"<html>gateway</html>"), "answer is not a JSON object"),
        (Reply(body=b'{"status": "success", "data": {"resultType": "vector", "result": [{'), "not a JSON object"),
        (Reply(body=b"[1, 2]"), "not a JSON object"),
        (Reply(body=b"[" * 100000), "not a JSON object"),
        (Reply(body=b"\xff\xfe\x00garbage"), "not a JSON object"),
        (Reply(body={"status": "error", "error": "bad query"}), "status is 'error', not 'success': bad query"),
        (Reply(body={"status": "success"}), "answer has no 'data' object"),
        (Reply(body={"status": "success", "data": {"resultType": "matrix", "result": []}}), "resultType is 'matrix'"),
        (Reply(body={"status": "success", "data": {"resultType": "vector"}}), "no 'data.result' list"),
        (Reply(body={"status": "success", "data": {"resultType": "vector", "result": {}}}), "no 'data.result' list"),
        (Reply(status=500, body={"status": "error", "errorType": "internal", "error": "boom"}),
         "HTTP 500: internal: boom"),
        (Reply(status=503, body=b"overloaded"), "HTTP 503"),
        (Reply(status=302, body=b"", headers={"Location": "http://127.0.0.1:1/"}), "HTTP 302"),
    ],
)
def test_an_unusable_answer_is_no_data_for_every_gate(prom: FakePrometheus, reply: Reply, named: str) -> None:
    serve(prom, *healthy("shop"))
    prom.answer("istio_request_duration_milliseconds_bucket", reply)
    report = judge(prom, SHOP)["shop"]
    assert report.verdict == Verdict.NO_DATA
    assert all(r.verdict == Verdict.NO_DATA for r in report.results)
    reason = report.reasons(Verdict.NO_DATA)
    assert f"Prometheus at {prom.url} gave an unusable answer: " in reason and named in reason


def test_a_bad_raw_counter_makes_the_statistical_gate_no_data_and_keeps_its_e_process(prom: FakePrometheus) -> None:
    gates = "[{metric: error_rate, mode: statistical}, {metric: error_rate, name: plain, max: 5}]"
    statistical = rollout("shop", gates)
    requests, buckets = healthy("shop")
    serve(prom, requests, buckets)
    prom.answer("istio_requests_total{", vector(*requests), prefix=True)  # the raw per-series query
    source = PrometheusSource(prom.url)
    request = MetricsRequest("prod", "shop", 10, cumulative_requests=True)
    first = evaluate_gates(statistical, ("v1",), source.fetch([request])[request])
    assert first.results[0].verdict == Verdict.PASS
    nan = sample(istio("prod", "shop", "v2", response_code="503"), "NaN")
    prom.answer("istio_requests_total{", vector(*requests[:3], nan), prefix=True)
    second = evaluate_gates(statistical, ("v1",), source.fetch([request])[request], first.evidence)
    gate, plain = second.results
    assert gate.verdict == Verdict.NO_DATA and "Prometheus returned NaN for istio_requests_total{" in gate.reason
    assert plain.verdict == Verdict.PASS  # the windowed data was fine: the threshold gate still judges
    assert second.evidence == first.evidence  # nothing from the untrusted tick entered the e-process


samples_strategy = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
label_values = st.sampled_from(["prod", "shop", "v1", "v2", "200", "503", "100", "+Inf", "NaN", "", "x"])
element_strategy = st.one_of(
    samples_strategy,
    st.fixed_dictionaries(
        {
            "metric": st.dictionaries(
                st.sampled_from(
                    ["destination_workload_namespace", "destination_service_name", "destination_version",
                     "response_code", "le", "pod"]
                ),
                label_values | samples_strategy,
                max_size=6,
            ),
            "value": st.lists(samples_strategy | label_values, min_size=0, max_size=3),
        }
    ),
)


class CannedClient:
    """Our own QueryClient wrapper, answering `data.result` without HTTP (speed for the fuzz test)."""

    def __init__(self, result: list[Any]) -> None:
        self.result = result

    def query(self, promql: str, deadline: Deadline) -> list[Any]:
        return self.result


@settings(max_examples=300, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(element_strategy, max_size=6))
def test_arbitrary_results_never_crash_and_bad_ones_never_pass(result: list[Any]) -> None:
    source = PrometheusSource("http://prom", client=CannedClient(result))
    request = MetricsRequest("prod", "shop", 10, cumulative_requests=True)
    snapshot: MetricsSnapshot = source.fetch([request])[request]
    report = evaluate_gates(SHOP, ("v1",), snapshot)
    assert report.verdict in set(Verdict)
    if report.verdict == Verdict.PASS:  # a pass needs the target's real requests: at least min_requests
        v2 = snapshot.version("prod", "shop", "v2")
        assert v2 is not None and v2.requests >= 20
