"""A custom bad/total gate in mode statistical runs the error-rate gate's anytime-valid test on the per-tick
growth of its two counters, per series: a restarted pod resets its own series only, so no evidence is hidden
or counted twice; a regressed version is rolled back, a healthy one is not (fixed seeds)."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from controller.analysis.gates import GateReport, Verdict, evaluate_gates
from controller.analysis.prometheus import PrometheusSource
from controller.deadline import Deadline
from controller.engine.ports import metrics_request
from controller.spec_loader import parse_spec_text
from tests.fakes.prometheus import FakePrometheus, Reply, istio, sample, vector

SEL = 'destination_service_name=~"{{ service }}", destination_workload_namespace=~"{{ namespace }}"'
SPEC = parse_spec_text(
    "service: shop\nnamespace: prod\nversions: [{name: v1, weight: 80}, {name: v2, weight: 20}]\ntarget: v2\n"
    "analysis: {min_requests: 20, window: 10s}\n"
    "gates:\n"
    f"  - {{name: failures, metric: custom, mode: statistical, tolerance: 1.5, alpha: 0.01,\n"
    f"     bad: 'app_requests_total{{outcome=\"failed\", {SEL}}}', total: 'app_requests_total{{{SEL}}}'}}\n",
    "s.yaml",
)
PODS = {"v1": ("a", "b"), "v2": ("c", "d")}


class World:
    """Cumulative app_requests_total per (version, pod, outcome); served per series, windowed sums per version."""

    def __init__(self, v2_bad: float, seed: int) -> None:
        self.rng = random.Random(seed)
        self.rates = {"v1": 0.01, "v2": v2_bad}
        self.counters: dict[tuple[str, str, str], float] = {}
        self.served: dict[str, list[float]] = {"v1": [0.0, 0.0], "v2": [0.0, 0.0]}  # per interval (total, bad)

    def tick(self, per_pod: dict[str, int]) -> None:
        self.served = {"v1": [0.0, 0.0], "v2": [0.0, 0.0]}
        for version, pods in PODS.items():
            for pod in pods:
                bad = sum(1 for _ in range(per_pod[version]) if self.rng.random() < self.rates[version])
                for outcome, n in (("ok", per_pod[version] - bad), ("failed", bad)):
                    key = (version, pod, outcome)
                    self.counters[key] = self.counters.get(key, 0.0) + n
                self.served[version][0] += per_pod[version]
                self.served[version][1] += bad

    def restart(self, pod: str) -> None:
        for key in self.counters:
            if key[1] == pod:
                self.counters[key] = 0.0

    def reply(self, query: str) -> Reply:
        if query.startswith("sum by"):  # windowed: only the minimum-requests evidence matters here
            return Reply(body=vector(*(sample(istio("prod", "shop", v), 1000) for v in PODS)))
        failed_only = query.startswith('app_requests_total{outcome="failed"')
        rows = [
            sample(istio("prod", "shop", v, pod=pod, outcome=outcome), value)
            for (v, pod, outcome), value in sorted(self.counters.items())
            if outcome == "failed" or not failed_only
        ]
        return Reply(body=vector(*rows))


@pytest.fixture
def prom() -> Iterator[FakePrometheus]:
    with FakePrometheus() as fake:
        yield fake


def run(prom: FakePrometheus, world: World, ticks: int, restart_at: int | None = None) -> list[GateReport]:
    prom.answer("", world.reply)
    source = PrometheusSource(prom.url)
    request = metrics_request(SPEC)
    reports: list[GateReport] = []
    evidence = None
    for tick in range(ticks):
        world.tick({"v1": 200, "v2": 50})
        if tick == restart_at:
            world.restart("c")
        snapshot = source.fetch([request], Deadline(10))[request]
        report = evaluate_gates(SPEC, ("v1",), snapshot, evidence)
        evidence = report.evidence
        reports.append(report)
        if report.verdict == Verdict.FAIL:
            break
    return reports


def test_one_query_per_counter_kind_per_tick(prom: FakePrometheus) -> None:
    run(prom, World(0.01, seed=1), ticks=1)
    raw = [q for q in prom.queries if q.startswith("app_requests_total")]
    assert len(raw) == 2 and len(prom.queries) == 2 + 2 + 2  # built-ins, windowed bad/total, raw bad/total


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_a_regressed_version_is_rolled_back_with_the_evidence(prom: FakePrometheus, seed: int) -> None:
    reports = run(prom, World(0.08, seed=seed), ticks=40)  # 8x stable's 1%
    last = reports[-1].results[0]
    assert last.verdict == Verdict.FAIL, last.reason
    assert last.reason.startswith("failures of v2: e-value ") and ">= 100 = K/alpha (1/0.01); bad: " in last.reason
    assert last.e_value is not None and last.e_limit == 100


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_a_healthy_version_is_not_rolled_back(prom: FakePrometheus, seed: int) -> None:
    reports = run(prom, World(0.01, seed=seed), ticks=40)
    assert len(reports) == 40 and all(r.verdict != Verdict.FAIL for r in reports)
    assert reports[-1].results[0].verdict == Verdict.PASS  # stable traffic to compare: the test judges alone


def test_a_restarted_pod_resets_its_own_series_only(prom: FakePrometheus) -> None:
    world = World(0.0, seed=7)
    reports = run(prom, world, ticks=6, restart_at=3)
    evidence = reports[-1].evidence["failures"]
    # the first tick sets the baselines; each later tick counts exactly what was served, the restart tick too
    # (pod c's counters went to 0 after serving: its growth is lost for that tick, never counted twice)
    assert evidence.new[0] == 5 * 100 - 50 and evidence.stable[0] == 5 * 400
    assert evidence.new[1] == 0
