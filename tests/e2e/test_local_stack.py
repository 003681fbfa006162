"""End-to-end: sample apps behind real Envoy (file RDS) and Prometheus with Istio-named metrics."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from scipy.stats import binom

from controller.engine.routing_model import DesiredRouting, HeaderRoute
from controller.local.loadgen import LoadGenerator, send_requests
from controller.local.prometheus_process import instant_query
from controller.local.stack import LocalStack, VersionKnobs, default_routing
from controller.routing.envoy import EnvoyFileRouter, EnvoyRoutingError
from tests.e2e.conftest import require_local_stack

pytestmark = pytest.mark.e2e

SERVICE, NAMESPACE = "demo", "default"
ALPHA = 0.001


require_local_stack()


def routing(weights: dict[str, int], headers: tuple[HeaderRoute, ...] = ()) -> DesiredRouting:
    base = default_routing(SERVICE, NAMESPACE, ["v1", "v2"])
    return base.model_copy(
        update={"weights": tuple((v, weights.get(v, 0)) for v in base.versions), "header_routes": headers}
    )


V2_HEADER = HeaderRoute(header="x-version", value="v2", match="exact", version="v2")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    work_dir = tmp_path_factory.mktemp("stack")
    versions = {"v1": VersionKnobs(), "v2": VersionKnobs(seed=7)}
    with LocalStack(SERVICE, NAMESPACE, versions, work_dir, routing({"v1": 100})) as running:
        assert running.startup_seconds is not None and running.startup_seconds > 0  # recorded, not bounded
        yield running
    for proc in running.processes:
        assert not proc.running


def wait_for_series(stack: LocalStack, promql: str, timeout: float = 20.0) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    while True:
        result = instant_query(stack.prometheus_url, promql)
        if result or time.monotonic() >= deadline:
            return result
        time.sleep(0.25)


def test_all_traffic_to_v1(stack: LocalStack) -> None:
    stack.router.apply(routing({"v1": 100}))
    results = send_requests(stack.api_url, stack.host_header, 60)
    assert Counter(results) == {(200, "v1"): 60}
    # The FQDN and service.namespace hosts route the same way (port is stripped).
    fqdn = send_requests(stack.api_url, f"{SERVICE}.{NAMESPACE}.svc.cluster.local:80", 5)
    assert Counter(fqdn) == {(200, "v1"): 5}


def test_header_route_then_default(stack: LocalStack) -> None:
    desired = routing({"v1": 100}, (V2_HEADER,))
    assert stack.router.apply(desired) is True
    assert stack.router.apply(desired) is False  # unchanged: nothing written
    assert stack.router.current(NAMESPACE, SERVICE) == desired
    with_header = send_requests(stack.api_url, stack.host_header, 50, headers={"x-version": "v2"})
    without = send_requests(stack.api_url, stack.host_header, 50)
    other_value = send_requests(stack.api_url, stack.host_header, 10, headers={"x-version": "v3"})
    assert Counter(with_header) == {(200, "v2"): 50}
    assert Counter(without) == {(200, "v1"): 50}
    assert Counter(other_value) == {(200, "v1"): 10}


def test_seeded_weighted_split_is_binomial_and_reproducible(stack: LocalStack) -> None:
    stack.router.apply(routing({"v1": 50, "v2": 50}))
    n = 400
    first = send_requests(stack.api_url, stack.host_header, n, random_seed=1234)
    second = send_requests(stack.api_url, stack.host_header, n, random_seed=1234)
    assert all(status == 200 for status, _ in first)
    assert first == second  # x-ramp-random pins Envoy's weighted-cluster draw
    v2 = sum(1 for _, version in first if version == "v2")
    low, high = binom.ppf(ALPHA / 2, n, 0.5), binom.ppf(1 - ALPHA / 2, n, 0.5)
    assert low <= v2 <= high, (v2, low, high)


def test_random_header_value_selects_cluster(stack: LocalStack) -> None:
    stack.router.apply(routing({"v1": 50, "v2": 50}))
    # Envoy takes value % total_weight (100) against cumulative weights [v1: 0-49, v2: 50-99].
    for value, expected in (("0", "v1"), ("49", "v1"), ("50", "v2"), ("199", "v2"), ("1000", "v1")):
        results = send_requests(stack.api_url, stack.host_header, 5, headers={"x-ramp-random": value})
        assert Counter(results) == {(200, expected): 5}, value


def test_prometheus_shows_istio_metrics(stack: LocalStack) -> None:
    stack.router.apply(routing({"v1": 50, "v2": 50}))
    send_requests(stack.api_url, stack.host_header, 40, random_seed=99)
    requests = wait_for_series(
        stack,
        'istio_requests_total{destination_version="v2",response_code="200",reporter="destination",'
        f'destination_service_name="{SERVICE}"}}',
    )
    assert requests, "istio_requests_total for v2 never appeared in Prometheus"
    labels = requests[0]["metric"]
    assert isinstance(labels, dict)
    assert labels["destination_workload"] == f"{SERVICE}-v2"
    assert labels["destination_workload_namespace"] == NAMESPACE
    assert labels["destination_canonical_service"] == SERVICE
    assert labels["destination_service"] == f"{SERVICE}.{NAMESPACE}.svc.cluster.local"
    assert not any(key.startswith("envoy_") for key in labels)
    buckets = wait_for_series(
        stack, f'istio_request_duration_milliseconds_bucket{{destination_service_name="{SERVICE}"}}'
    )
    assert buckets, "istio_request_duration_milliseconds_bucket never appeared"
    assert {b["metric"]["le"] for b in buckets} >= {"1", "100", "1000", "+Inf"}  # type: ignore[index]
    quantile = wait_for_series(
        stack,
        "histogram_quantile(0.99, sum by (le, destination_version) "
        f'(rate(istio_request_duration_milliseconds_bucket{{destination_service_name="{SERVICE}"}}[30s])))',
    )
    assert quantile
    assert not instant_query(stack.prometheus_url, '{__name__=~"envoy_.+"}')


def test_injected_errors_show_up_as_500(stack: LocalStack) -> None:
    stack.router.apply(routing({"v1": 50, "v2": 50}))
    assert stack.set_fault("v2", error_rate=1.0)["error_rate"] == 1.0
    try:
        pinned = send_requests(stack.api_url, stack.host_header, 20, headers={"x-ramp-random": "75"})
        assert Counter(pinned) == {(500, "v2"): 20}
        with LoadGenerator(
            stack.api_url, stack.host_header, rate_rps=100, max_requests=100, max_seconds=5, seed=3
        ) as load:
            load.join(timeout=10)
        summary = load.summary()
        assert sum(summary.values()) == 100
        assert set(summary) <= {("v1", 200), ("v2", 500)}
        errors = wait_for_series(
            stack,
            f'istio_requests_total{{destination_service_name="{SERVICE}",destination_version="v2",'
            'response_code="500"}',
        )
        assert errors, "response_code=500 for v2 never appeared in Prometheus"
    finally:
        stack.set_fault("v2", error_rate=0.0)
    assert Counter(send_requests(stack.api_url, stack.host_header, 5, headers={"x-ramp-random": "75"})) == {
        (200, "v2"): 5
    }


def test_loadgen_header_fraction(stack: LocalStack) -> None:
    stack.router.apply(routing({"v1": 100}, (V2_HEADER,)))
    load = LoadGenerator(
        stack.api_url,
        stack.host_header,
        rate_rps=200,
        max_requests=150,
        max_seconds=5,
        header_fraction=0.3,
        seed=11,
    ).start()
    load.join(timeout=10)
    results = load.results
    assert len(results) == 150 and not load.running
    assert all(r.version == ("v2" if r.header_sent else "v1") and r.status == 200 for r in results)
    assert 0 < sum(r.header_sent for r in results) < 150


def test_rejected_config_raises_and_keeps_previous(stack: LocalStack) -> None:
    good = routing({"v1": 100})
    stack.router.apply(good)
    bad_regex = HeaderRoute(header="x-version", value="(unclosed", match="regex", version="v2")
    with pytest.raises(EnvoyRoutingError, match="rejected"):
        stack.router.apply(routing({"v1": 100}, (bad_regex,)))
    assert stack.router.current(NAMESPACE, SERVICE) == good
    assert Counter(send_requests(stack.api_url, stack.host_header, 5)) == {(200, "v1"): 5}


def test_unconfirmed_routes_time_out(stack: LocalStack, tmp_path: Path) -> None:
    # Envoy does not watch this directory, so it can never confirm the new version.
    stray = EnvoyFileRouter(tmp_path, stack.envoy_admin_url, confirm_timeout=0.5)
    wanted = routing({"v2": 100})
    with pytest.raises(EnvoyRoutingError, match="did not confirm"):
        stray.apply(wanted)
    # The unconfirmed routing stays the latest intent in the file (a timed-out rollback must not be
    # reverted to the routing it replaces), but it is not confirmed: applying it again writes and
    # waits again instead of reporting "already in place".
    assert stray.current(NAMESPACE, SERVICE) == wanted
    assert stray.confirmed(NAMESPACE, SERVICE) is None
    with pytest.raises(EnvoyRoutingError, match="did not confirm"):
        stray.apply(wanted)
    assert stray.confirmed(NAMESPACE, SERVICE) is None


def test_two_stacks_run_concurrently(stack: LocalStack, tmp_path: Path) -> None:
    with LocalStack("other", "team-b", {"v1": VersionKnobs()}, tmp_path, with_prometheus=False) as second:
        assert Counter(send_requests(second.api_url, "other", 5)) == {(200, "v1"): 5}
        assert Counter(send_requests(stack.api_url, stack.host_header, 5, random_seed=1))
