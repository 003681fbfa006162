"""Statistical gates count per series: a restarted pod among several is a reset of its own counters only, so no
evidence is hidden or counted twice; and without stable traffic to compare with, a statistical gate never passes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from controller.analysis.gates import GateReport, Verdict, evaluate_gates
from controller.analysis.metrics import MetricsSnapshot, VersionMetrics
from controller.analysis.prometheus import MetricsRequest, PrometheusSource
from controller.analysis.statistical_gate import MAX_SERIES, STALE_TICKS, GateEvidence
from controller.spec import RolloutSpec
from tests.fakes.prometheus import FakePrometheus, Reply, istio, sample, vector
from tests.unit.engine_fixtures import spec

HEAD = (
    "service: shop\nnamespace: prod\nversions: [{name: v1, weight: 90}, {name: v2, weight: 10}]\ntarget: v2\n"
    "analysis: {min_requests: 20, window: 10s}\n"
)
ERRORS: RolloutSpec = spec(HEAD + "gates: [{metric: error_rate, mode: statistical}]\n")
REQUEST = MetricsRequest("prod", "shop", 10, cumulative_requests=True)


class Mesh:
    """Cumulative istio_requests_total per (version, pod, response code), served per series."""

    def __init__(self) -> None:
        self.counters: dict[tuple[str, str, str], float] = {}
        self.hidden: set[str] = set()  # pods whose series Prometheus does not return this tick

    def serve(self, version: str, pod: str, ok: float, errors: float) -> None:
        for code, added in (("200", ok), ("503", errors)):
            key = (version, pod, code)
            self.counters[key] = self.counters.get(key, 0.0) + added

    def restart(self, pod: str) -> None:
        for key in self.counters:
            if key[1] == pod:
                self.counters[key] = 0.0

    def raw(self, query: str) -> Reply:
        rows = [
            sample(istio("prod", "shop", v, response_code=code, pod=pod, instance=f"{pod}:15090"), value)
            for (v, pod, code), value in sorted(self.counters.items())
            if pod not in self.hidden
        ]
        return Reply(body=vector(*rows))


WINDOW = vector(
    sample(istio("prod", "shop", "v1", response_code="200"), 1000),
    sample(istio("prod", "shop", "v2", response_code="200"), 100),
)


@pytest.fixture
def mesh() -> Iterator[tuple[Mesh, FakePrometheus]]:
    world = Mesh()
    with FakePrometheus() as prom:
        prom.answer("increase(", WINDOW)
        prom.answer("istio_requests_total{", world.raw, prefix=True)
        yield world, prom


def tick(source: PrometheusSource, evidence: dict[str, GateEvidence] | None) -> GateReport:
    return evaluate_gates(ERRORS, ("v1",), source.fetch([REQUEST])[REQUEST], evidence)


def test_one_restarted_pod_among_several_is_neither_hidden_nor_counted_twice(mesh: tuple[Mesh, FakePrometheus]) -> None:
    """The bug: counters summed per version before differencing, so one pod's reset made the whole version look
    reset and its lifetime totals were counted again as one interval."""
    world, prom = mesh
    for pod in ("a1", "a2", "a3"):
        world.serve("v1", pod, 50_000, 500)  # long-lived stable pods
    for pod in ("b1", "b2"):
        world.serve("v2", pod, 3_000, 30)
    source = PrometheusSource(prom.url)
    report = tick(source, None)  # the first look only sets each series' baseline
    evidence = dict(report.evidence)
    assert evidence["error_rate"].new == (0.0, 0.0) and evidence["error_rate"].stable == (0.0, 0.0)
    for pod in ("a1", "a2", "a3"):
        world.serve("v1", pod, 300, 3)
    world.serve("v2", "b1", 40, 4)
    world.serve("v2", "b2", 60, 6)
    evidence = dict(tick(source, evidence).evidence)
    world.restart("a2")  # a2 restarts and serves 90 + 1 since; its counters start again from 0
    world.serve("v1", "a2", 90, 1)
    world.restart("b1")
    world.serve("v2", "b1", 20, 2)
    for pod in ("a1", "a3"):
        world.serve("v1", pod, 300, 3)
    world.serve("v2", "b2", 60, 6)
    gate = tick(source, evidence).evidence["error_rate"]
    # exactly what was served after the baseline: stable 3x303 + 2x303 + 91, new 44 + 66 + 22 + 66
    assert gate.stable == (3 * 303 + 2 * 303 + 91, 3 * 3 + 2 * 3 + 1)
    assert gate.new == (44 + 66 + 22 + 66, 4 + 6 + 2 + 6)
    assert len(prom.queries) == 9 and all("sum" not in q for q in prom.queries[2::3])  # raw: per series


def test_new_series_set_a_baseline_and_missing_ones_resume_without_repeats(mesh: tuple[Mesh, FakePrometheus]) -> None:
    world, prom = mesh
    world.serve("v1", "a1", 1000, 10)
    world.serve("v2", "b1", 100, 1)
    source = PrometheusSource(prom.url)
    evidence = dict(tick(source, None).evidence)
    world.serve("v2", "b2", 500, 50)  # a series first seen now: its value may predate this interval
    world.serve("v1", "a1", 100, 1)
    evidence = dict(tick(source, evidence).evidence)
    assert evidence["error_rate"].new == (0.0, 0.0)  # b2 only set its baseline
    world.hidden = {"a1"}  # a1 missing from one answer (a failed scrape): contributes nothing...
    world.serve("v1", "a1", 100, 1)
    world.serve("v2", "b2", 10, 1)
    evidence = dict(tick(source, evidence).evidence)
    assert evidence["error_rate"].stable == (101.0, 1.0) and evidence["error_rate"].new == (11.0, 1.0)
    world.hidden = set()  # ... and when it is back, its growth over the gap counts once
    world.serve("v1", "a1", 100, 1)
    evidence = dict(tick(source, evidence).evidence)
    assert evidence["error_rate"].stable == (101.0 + 202.0, 3.0)


def per_series(versions: dict[str, dict[str, float]]) -> MetricsSnapshot:
    snapshot = MetricsSnapshot(window_seconds=10)
    for version, series in versions.items():
        snapshot.by_workload[("prod", "shop", version)] = VersionMetrics(1000, 0)
        snapshot.cumulative_series[("prod", "shop", version)] = {
            sid: VersionMetrics(value, 0) for sid, value in series.items()
        }
    return snapshot


def test_remembered_series_are_bounded() -> None:
    evidence: dict[str, GateEvidence] | None = None
    for t in range(STALE_TICKS + 2):  # each tick a fresh set of short-lived series, 3 of them per version
        snap = per_series({v: {f"c{t}-{i}": 10.0 for i in range(3)} for v in ("v1", "v2")})
        evidence = dict(evaluate_gates(ERRORS, ("v1",), snap, evidence).evidence)
    gate = evidence["error_rate"] if evidence else None
    assert gate is not None and len(gate.counters) == 6 * STALE_TICKS and set(gate.seen) == set(gate.counters)
    crowd = per_series({"v1": {f"s{i}": 1.0 for i in range(MAX_SERIES + 500)}, "v2": {"x": 1.0}})
    gate = evaluate_gates(ERRORS, ("v1",), crowd, evidence).evidence["error_rate"]
    assert len(gate.counters) == MAX_SERIES
    assert gate.model_dump_json().count('"v2/x"') == 2  # most recently seen kept: counters and seen


# the last step of a blue/green rollout: v2 takes 100 %, v1 (the stable version to compare with) none
BLUE_GREEN = (
    "versions: [{name: v1, weight: 100}, {name: v2, weight: 0}]\ntarget: v2\nsteps: [{weight: 100, duration: 1m}]\n"
    "analysis: {min_requests: 20}\n"
)


def failing_green(gates: str, stable_requests: float = 0) -> GateReport:
    """v2 at 100 % failing 30 % of requests, stable (v1) with (almost) no traffic to compare with."""
    green: RolloutSpec = spec(f"service: shop\nnamespace: prod\n{BLUE_GREEN}gates: {gates}\n")
    snapshot = MetricsSnapshot(window_seconds=30)
    v2 = VersionMetrics(1000, 300, {100.0: 400, 1000.0: 1000, float("inf"): 1000})
    v1 = VersionMetrics(stable_requests, 0, {100.0: stable_requests, float("inf"): stable_requests})
    for version, metrics in (("v1", v1), ("v2", v2)):
        snapshot.by_workload[("prod", "shop", version)] = metrics
        snapshot.cumulative[("prod", "shop", version)] = metrics
    first = evaluate_gates(green, ("v1",), snapshot)
    return evaluate_gates(green, ("v1",), snapshot, first.evidence)


@pytest.mark.parametrize("stable_requests", [0, 19])
def test_a_statistical_gate_without_stable_traffic_is_no_data(stable_requests: float) -> None:
    """The bug: a green failing 30 % was promoted, as the statistical-only gate passed with nothing to compare."""
    report = failing_green("[{metric: error_rate, mode: statistical}]", stable_requests)
    assert report.verdict == Verdict.NO_DATA
    assert report.reasons(Verdict.NO_DATA) == (
        f"error_rate: stable (v1) had {stable_requests:.0f} requests in the last 30s, a statistical gate needs 20 "
        "to compare against (no max set)"
    )
    latency = failing_green("[{metric: latency, mode: statistical, slow_ms: 100}]", stable_requests)
    assert latency.verdict == Verdict.NO_DATA


@pytest.mark.parametrize(
    "gates",
    [
        "[{metric: error_rate, mode: both, max: 5}]",
        "[{metric: latency, quantile: p99, mode: statistical, max: 300}]",
    ],
)
def test_without_stable_traffic_the_max_judges(gates: str) -> None:
    report = failing_green(gates)
    assert report.verdict == Verdict.FAIL
    assert "of v2 is " in report.reasons(Verdict.FAIL) and " > max " in report.reasons(Verdict.FAIL)


def test_with_stable_traffic_a_statistical_max_is_not_a_threshold() -> None:
    """Unchanged: in mode statistical a latency max only sets the slow threshold while stable can be compared
    (here no interval grew, so the test has no evidence either way)."""
    report = failing_green("[{metric: latency, quantile: p99, mode: statistical, max: 300}]", stable_requests=1000)
    assert report.results[0].verdict == Verdict.PASS and "e-value 1 < 100" in report.results[0].reason
