"""Custom gates through the real PrometheusSource (a fake Prometheus on 127.0.0.1): one query per shared
template whatever the number of rollouts, answers split per (namespace, service, version), thresholds (max,
min, stable margin, higher is better), bad/total percentages, and the error gate's gRPC and 4xx options."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from controller.analysis.gates import GateReport, Verdict, evaluate_gates
from controller.analysis.prometheus import PrometheusSource
from controller.deadline import Deadline
from controller.engine.ports import metrics_request
from controller.spec import RolloutSpec
from controller.spec_loader import parse_spec_text
from controller.spec_metrics import LocatedTemplate, MetricTemplate
from tests.fakes.prometheus import FakePrometheus, Reply, istio, sample, vector

SEL = 'destination_service_name=~"{{ service }}", destination_workload_namespace=~"{{ namespace }}"'
BY = "destination_workload_namespace, destination_service_name, destination_version"
QUERY = f"sum by ({BY}) (rate(app_four_xx{{{SEL}}}[{{{{ window }}}}]))"
OTHER = f"sum by ({BY}) (rate(app_queue_lag{{{SEL}}}[{{{{ window }}}}]))"
CATALOG = {
    "four-xx": LocatedTemplate("t.yml", 3, MetricTemplate(kind="MetricTemplate", name="four-xx", query=QUERY)),
    "lag": LocatedTemplate("t.yml", 3, MetricTemplate(kind="MetricTemplate", name="lag", query=OTHER)),
}


def rollout(service: str, gates: str, window: str = "10s") -> RolloutSpec:
    text = (
        f"service: {service}\nnamespace: prod\nversions: [{{name: v1, weight: 90}}, {{name: v2, weight: 10}}]\n"
        "target: v2\n"
        f"gates:\n{gates}analysis: {{min_requests: 20, window: {window}}}\n"
    )
    return parse_spec_text(text, f"{service}.yaml", templates=CATALOG)


TEMPLATE_GATE = "  - {metric: custom, template: four-xx, max: 5}\n"


@pytest.fixture
def prom() -> Iterator[FakePrometheus]:
    with FakePrometheus() as fake:
        yield fake


def traffic(prom: FakePrometheus, services: list[str]) -> None:
    """Istio request counts in the window: 100 per version, all 200."""
    rows = [sample(istio("prod", s, v, response_code="200"), 100) for s in services for v in ("v1", "v2")]
    prom.answer("istio_requests_total", vector(*rows))


def values(prom: FakePrometheus, metric: str, found: dict[tuple[str, str], Any]) -> None:
    prom.answer(metric, vector(*(sample(istio("prod", s, v), value) for (s, v), value in found.items())))


def judge(prom: FakePrometheus, *specs: RolloutSpec, stable: tuple[str, ...] = ("v1",)) -> dict[str, GateReport]:
    source = PrometheusSource(prom.url)
    requests = {s.service: metrics_request(s) for s in specs}
    fetched = source.fetch(list(requests.values()), Deadline(10))
    return {s.service: evaluate_gates(s, stable, fetched[requests[s.service]]) for s in specs}


def custom_queries(prom: FakePrometheus) -> list[str]:
    return [q for q in prom.queries if "istio_request" not in q]


@pytest.mark.parametrize("rollouts", [1, 40])
def test_rollouts_sharing_a_template_share_one_query_per_tick(prom: FakePrometheus, rollouts: int) -> None:
    services = [f"svc{i}" for i in range(rollouts)]
    traffic(prom, services)
    specs = [rollout(s, TEMPLATE_GATE) for s in services]
    reports = judge(prom, *specs)
    assert len(prom.queries) == 3  # requests + latency (built in) + ONE for the template, for 1 or 40 rollouts
    (query,) = custom_queries(prom)
    assert f'destination_service_name=~"{"|".join(sorted(services))}"' in query
    assert 'destination_workload_namespace=~"prod"' in query and "[10s]" in query
    assert all(r.verdict == Verdict.NO_DATA for r in reports.values())  # nothing answered: never a pass


def test_each_distinct_query_text_or_window_is_one_more_query(prom: FakePrometheus) -> None:
    lag = "  - {metric: custom, template: lag, max: 5}\n"
    specs = [rollout(f"a{i}", TEMPLATE_GATE) for i in range(5)]
    specs += [rollout(f"b{i}", TEMPLATE_GATE + lag) for i in range(5)]
    specs += [rollout(f"c{i}", TEMPLATE_GATE, window="20s") for i in range(5)]
    judge(prom, *specs)
    shown = sorted(q.split("(", 2)[1][:40] + (" 20s" if "[20s]" in q else "") for q in custom_queries(prom))
    assert len(custom_queries(prom)) == 3, shown  # four-xx at 10s, lag at 10s, four-xx at 20s
    assert len(prom.queries) == 3 + 4  # plus requests and latency for each of the two windows


def test_the_answer_is_split_per_service_and_version(prom: FakePrometheus) -> None:
    traffic(prom, ["shop", "cart"])
    values(prom, "app_four_xx", {("shop", "v1"): 0.5, ("shop", "v2"): 12.5, ("cart", "v1"): 0.5, ("cart", "v2"): 1})
    reports = judge(prom, rollout("shop", TEMPLATE_GATE), rollout("cart", TEMPLATE_GATE))
    shop, cart = reports["shop"].results[0], reports["cart"].results[0]
    assert shop.verdict == Verdict.FAIL and shop.reason == "four-xx of v2 is 12.5 > max 5" and shop.value == 12.5
    assert cart.verdict == Verdict.PASS and cart.value == 1 and cart.stable_value == 0.5


@pytest.mark.parametrize(
    ("gate", "v1", "v2", "verdict", "reason"),
    [
        ("{name: ok-rate, metric: custom, min: 99, query: 'Q'}", 99.9, 98.0, Verdict.FAIL,
         "ok-rate of v2 is 98 < min 99"),
        ("{name: ok-rate, metric: custom, min: 99, query: 'Q'}", 99.9, 99.5, Verdict.PASS, "ok-rate 99.5 ok"),
        ("{name: lag, metric: custom, stable_margin: 2, query: 'Q'}", 10.0, 12.5, Verdict.FAIL,
         "lag of v2 is 12.5 > stable (v1) 10 + margin 2"),
        ("{name: lag, metric: custom, stable_margin: 2, query: 'Q'}", 10.0, 11.5, Verdict.PASS, "lag 11.5 ok"),
        ("{name: ok-rate, metric: custom, stable_margin: 1, higher_is_better: true, query: 'Q'}", 99.0, 97.5,
         Verdict.FAIL, "ok-rate of v2 is 97.5 < stable (v1) 99 - margin 1"),
        ("{name: ok-rate, metric: custom, stable_margin: 1, higher_is_better: true, query: 'Q'}", 99.0, 100.0,
         Verdict.PASS, "ok-rate 100 ok"),  # better than stable is never worse
    ],
)
def test_min_max_and_stable_margin(
    prom: FakePrometheus, gate: str, v1: float, v2: float, verdict: Verdict, reason: str
) -> None:
    traffic(prom, ["shop"])
    values(prom, "app_four_xx", {("shop", "v1"): v1, ("shop", "v2"): v2})
    report = judge(prom, rollout("shop", f"  - {gate.replace('Q', QUERY)}\n"))["shop"]
    assert (report.verdict, report.results[0].reason) == (verdict, reason)


def test_a_query_gate_needs_the_targets_requests_before_it_judges(prom: FakePrometheus) -> None:
    prom.answer("istio_requests_total", vector(sample(istio("prod", "shop", "v2", response_code="200"), 5)))
    values(prom, "app_four_xx", {("shop", "v2"): 0.0})
    (result,) = judge(prom, rollout("shop", TEMPLATE_GATE))["shop"].results
    assert result.verdict == Verdict.NO_DATA
    assert result.reason == "four-xx: v2 had 5 requests in the last 10s, gates need 20"
    assert result.value == 0.0  # not judged, but shown


def test_too_few_events_are_not_judged_but_the_value_seen_is_shown(prom: FakePrometheus) -> None:
    values(prom, "increase(app_requests_total{destination", {("shop", "v1"): 1000, ("shop", "v2"): 8})
    values(prom, 'increase(app_requests_total{outcome="failed"', {("shop", "v1"): 10, ("shop", "v2"): 4})
    (result,) = judge(prom, rollout("shop", RATIO_GATE))["shop"].results
    assert result.verdict == Verdict.NO_DATA and "v2 had 8 events (total)" in result.reason
    assert (result.value, result.stable_value) == (pytest.approx(50.0), pytest.approx(1.0))


@pytest.mark.parametrize(
    ("v2_sample", "reason"),
    [
        (None, "four-xx: the query gave no value for v2 (by destination_version, destination_service_name, "
               "destination_workload_namespace)"),
        (sample(istio("prod", "shop", "v2"), "NaN"), "Prometheus returned NaN for a custom query's series"),
        (sample(istio("prod", "shop", "v2"), "+Inf"), "Prometheus returned +Inf"),
        (sample(istio("prod", "shop", "v2"), "-1"), "Prometheus returned a negative value -1"),
        (sample(istio("prod", "shop", "v2"), "lots"), 'Prometheus returned an unparseable value "lots"'),
        (sample({"destination_workload_namespace": "prod", "destination_service_name": "shop"}, 1),
         "no destination_version label (the query must keep it"),
    ],
)
def test_bad_samples_and_a_missing_version_are_no_data_for_that_rollout_only(
    prom: FakePrometheus, v2_sample: dict[str, Any] | None, reason: str
) -> None:
    traffic(prom, ["shop", "cart"])
    rows = [sample(istio("prod", s, v), 1) for s in ("shop", "cart") for v in ("v1", "v2") if (s, v) != ("shop", "v2")]
    prom.answer("app_four_xx", vector(*rows, *([v2_sample] if v2_sample else [])))
    reports = judge(prom, rollout("shop", TEMPLATE_GATE), rollout("cart", TEMPLATE_GATE))
    assert reports["shop"].verdict == Verdict.NO_DATA and reason in reports["shop"].results[0].reason
    assert reports["cart"].verdict == Verdict.PASS  # the bad sample blanks only what it belongs to


def test_two_values_for_one_version_are_no_data(prom: FakePrometheus) -> None:
    traffic(prom, ["shop"])
    rows = [sample(istio("prod", "shop", "v1"), 1), sample(istio("prod", "shop", "v2", pod="a"), 1),
            sample(istio("prod", "shop", "v2", pod="b"), 1)]  # fmt: skip
    prom.answer("app_four_xx", vector(*rows))
    (result,) = judge(prom, rollout("shop", TEMPLATE_GATE))["shop"].results
    assert result.verdict == Verdict.NO_DATA and "two values for one version (group the query by" in result.reason


def test_a_failed_custom_query_blanks_only_the_custom_gates(prom: FakePrometheus) -> None:
    traffic(prom, ["shop"])
    prom.answer("app_four_xx", Reply(status=500, body={"status": "error", "error": "boom"}))
    prom.answer("istio_request_duration", vector(*(sample(istio("prod", "shop", v, le=le), 100)
                                                  for v in ("v1", "v2") for le in ("100", "+Inf"))))  # fmt: skip
    report = judge(prom, rollout("shop", TEMPLATE_GATE + "  - {metric: error_rate, max: 1}\n"))["shop"]
    custom, errors = report.results
    assert custom.verdict == Verdict.NO_DATA and custom.reason.startswith("four-xx: Prometheus at ")
    assert errors.verdict == Verdict.PASS


BAD = f'app_requests_total{{outcome="failed", {SEL}}}'
TOTAL = f"app_requests_total{{{SEL}}}"
RATIO_GATE = f"  - {{name: failures, metric: custom, max: 2, bad: '{BAD}', total: '{TOTAL}'}}\n"


def test_bad_over_total_is_a_percentage_with_min_requests_on_total(prom: FakePrometheus) -> None:
    totals = {("shop", "v1"): 1000, ("shop", "v2"): 200, ("cart", "v2"): 10}
    values(prom, "increase(app_requests_total{destination", totals)
    values(prom, 'increase(app_requests_total{outcome="failed"', {("shop", "v1"): 10, ("shop", "v2"): 6})
    reports = judge(prom, rollout("shop", RATIO_GATE), rollout("cart", RATIO_GATE))
    shop, cart = reports["shop"].results[0], reports["cart"].results[0]
    assert shop.verdict == Verdict.FAIL and shop.reason == "failures of v2 is 3.00% > max 2.00%"
    assert shop.stable_value == pytest.approx(1.0)
    assert cart.verdict == Verdict.NO_DATA
    assert cart.reason == "failures: v2 had 10 events (total) in the last 10s, gates need 20"
    bad_query = next(q for q in prom.queries if 'outcome="failed"' in q)
    assert bad_query.startswith(f"sum by ({BY}) (increase(app_requests_total{{") and bad_query.endswith("[10s]))")


def test_no_bad_series_means_no_bad_events(prom: FakePrometheus) -> None:
    values(prom, 'increase(app_requests_total{destination', {("shop", "v1"): 1000, ("shop", "v2"): 200})
    (result,) = judge(prom, rollout("shop", RATIO_GATE))["shop"].results
    assert result.verdict == Verdict.PASS and result.value == 0


def test_the_error_gate_counts_grpc_failures_and_chosen_4xx_codes_without_another_query(prom: FakePrometheus) -> None:
    rows = [sample(istio("prod", "shop", v, response_code="200"), 100) for v in ("v1", "v2")]
    rows += [sample(istio("prod", "shop", "v2", response_code="200", grpc_response_status="14"), 3),
             sample(istio("prod", "shop", "v2", response_code="200", grpc_response_status="0"), 50),
             sample(istio("prod", "shop", "v2", response_code="429"), 4),
             sample(istio("prod", "shop", "v2", response_code="404"), 40),
             sample(istio("prod", "shop", "v2", response_code="503"), 3)]  # fmt: skip
    prom.answer("istio_requests_total", vector(*rows))
    plain = rollout("cart", "  - {metric: error_rate, max: 50}\n")
    both = rollout("shop", "  - {metric: error_rate, max: 50, grpc: true, codes: ['429']}\n")
    reports = judge(prom, both, plain)
    assert reports["shop"].results[0].value == pytest.approx(100 * (3 + 4 + 3) / 200)  # 404s and gRPC OK are fine
    requests_query = next(q for q in prom.queries if "istio_requests_total" in q)
    assert "grpc_response_status" in requests_query and len(prom.queries) == 2  # one requests query for both
    prom.queries.clear()
    judge(prom, plain)
    assert "grpc_response_status" not in next(q for q in prom.queries if "istio_requests_total" in q)


def test_a_hostile_grpc_status_is_no_data(prom: FakePrometheus) -> None:
    rows = [sample(istio("prod", "shop", v, response_code="200", grpc_response_status="x"), 100) for v in ("v1", "v2")]
    prom.answer("istio_requests_total", vector(*rows))
    (result,) = judge(prom, rollout("shop", "  - {metric: error_rate, max: 5, grpc: true}\n"))["shop"].results
    assert result.verdict == Verdict.NO_DATA and 'a grpc_response_status of "x"' in result.reason
