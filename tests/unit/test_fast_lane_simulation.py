"""Simulated rollouts fed every second, as the fast lane feeds them, through the controller's own code path
(`evaluate_gates` with per-series raw counters keyed as Prometheus' are): the false-rollback bound still
holds with the new-outcome rule and 1 s feeds; a 5x regression and a hard fault are caught fast.

Traffic: 100 requests/s, v2 at 10 %, spread over pods (v1: 4, v2: 2) with Poisson arrivals per second. A pod's
counters are created lazily, as Envoy's are: its 5xx series appears at its first error (a new outcome on a
known exporter: counted from 0 by the new rule). A restarted pod is a new exporter (new `pod` label) whose
counters start from 0 (its first feed only sets their baseline). Before the first feed the pods have served
WARMUP seconds, so every pod's 200 series exists when the rollout starts. Seeds are fixed: every figure is
reproducible. SURE bounds the probability that a statistical assertion fails by chance, as in
test_sequential_simulation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pytest
from scipy.stats import binom

from controller.analysis.gates import GateReport, Verdict, evaluate_gates
from controller.analysis.metrics import MetricsSnapshot, VersionMetrics
from controller.analysis.prometheus import OUTCOME_LABELS
from controller.analysis.prometheus_parse import series_id
from controller.analysis.sequential import (
    RESTART_SHARE,
    Counts,
    grid_for,
    mixture_e_value,
    update_log_e,
    update_restarts,
)
from controller.analysis.statistical_gate import GateEvidence
from controller.spec import RolloutSpec
from tests.fakes.prometheus import istio
from tests.unit import eprocess_paths
from tests.unit.engine_fixtures import spec

RPS, WEIGHT = 100.0, 0.1
PODS = {"v1": 4, "v2": 2}
BASELINE_ERRORS = 0.01
ALPHA, TOLERANCE = 0.01, 1.2
LIMIT = 1 / ALPHA  # K / alpha, K = 1
SURE = 0.001
WARMUP = 10  # seconds served before the first feed
NAMESPACE, SERVICE = "sim", "shop"

SPEC = spec(
    f"""
service: {SERVICE}
namespace: {NAMESPACE}
versions: [{{name: v1, weight: 100}}, {{name: v2, weight: 0}}]
target: v2
gates: [{{metric: error_rate, mode: statistical, alpha: {ALPHA}, tolerance: {TOLERANCE}}}]
analysis: {{min_requests: 1}}
"""
)
Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]


def series_key(version: str, pod: str, code: str) -> str:
    """As `prometheus._add_series`: `c<exporter>.<series>`, the exporter being the labels without the outcome."""
    labels = istio(NAMESPACE, SERVICE, version, pod=pod, response_code=code, reporter="destination",
                   source_workload="gateway", __name__="istio_requests_total")  # fmt: skip
    return f"c{series_id(labels, drop=OUTCOME_LABELS)}.{series_id(labels)}"


@dataclass(frozen=True)
class Traffic:
    """Per pod and second: requests, errors and restarts (the pod restarts at the start of that second)."""

    requests: Ints  # (pods, seconds)
    errors: Ints
    restarts: npt.NDArray[np.bool_]
    versions: tuple[str, ...]  # per pod

    def totals(self, version: str) -> tuple[Ints, Ints]:
        """(requests, errors) per second of one version, all pods."""
        rows = [i for i, v in enumerate(self.versions) if v == version]
        return self.requests[rows].sum(axis=0), self.errors[rows].sum(axis=0)


def simulate(rng: np.random.Generator, seconds: int, new_error_rate: float, restart_rate: float) -> Traffic:
    versions = tuple(v for v, n in PODS.items() for _ in range(n))
    rates = np.array([RPS * (WEIGHT if v == "v2" else 1 - WEIGHT) / PODS[v] for v in versions])
    error_rates = np.array([new_error_rate if v == "v2" else BASELINE_ERRORS for v in versions])
    requests = rng.poisson(rates[:, None], (len(versions), seconds))
    errors = rng.binomial(requests, error_rates[:, None])
    restarts = rng.random((len(versions), seconds)) < restart_rate
    restarts[:, : WARMUP + 1] = False  # pods are up before the rollout starts
    return Traffic(requests, errors, restarts, versions)


@dataclass
class Pod:
    version: str
    name: str
    ok: float = 0.0
    bad: float = 0.0
    keys: tuple[str, str] = ("", "")

    def __post_init__(self) -> None:
        self.keys = (series_key(self.version, self.name, "200"), series_key(self.version, self.name, "503"))


@dataclass
class Feeding:
    """One simulated rollout fed every second through `evaluate_gates`; counts the new-outcome series."""

    traffic: Traffic
    scrape_every: int = 1  # Prometheus scrapes every this many seconds; feeds in between see the last scrape
    pods: list[Pod] = field(default_factory=list)
    evidence: dict[str, GateEvidence] = field(default_factory=dict)
    new_outcomes: int = 0  # 5xx series created on a pod that already had a 200 series (after the first feed)
    scraped: MetricsSnapshot | None = None

    def __post_init__(self) -> None:
        self.pods = [Pod(v, f"{v}-{i}-0") for i, v in enumerate(self.traffic.versions)]

    def serve(self, second: int) -> None:
        for i, pod in enumerate(self.pods):
            if self.traffic.restarts[i, second]:
                pod = self.pods[i] = Pod(pod.version, f"{pod.version}-{i}-{second}")
            served, failed = int(self.traffic.requests[i, second]), int(self.traffic.errors[i, second])
            if failed and not pod.bad and pod.ok:
                self.new_outcomes += 1
            pod.ok += served - failed
            pod.bad += failed

    def snapshot(self, second: int) -> MetricsSnapshot:
        if self.scraped is None or second % self.scrape_every == 0:
            self.scraped = self.scrape()
        return self.scraped

    def scrape(self) -> MetricsSnapshot:
        snap = MetricsSnapshot(window_seconds=30)
        for version in PODS:
            series: dict[str, VersionMetrics] = {}
            requests = errors = 0.0
            for pod in self.pods:
                if pod.version != version:
                    continue
                if pod.ok:  # a counter exists once it counted a request
                    series[pod.keys[0]] = VersionMetrics(pod.ok, 0.0)
                if pod.bad:
                    series[pod.keys[1]] = VersionMetrics(pod.bad, pod.bad)
                requests, errors = requests + pod.ok + pod.bad, errors + pod.bad
            workload = (NAMESPACE, SERVICE, version)
            snap.cumulative_series[workload] = series
            snap.cumulative[workload] = snap.by_workload[workload] = VersionMetrics(requests, errors)
        return snap

    def feed(self, second: int, gate_spec: RolloutSpec = SPEC) -> GateReport:
        report = evaluate_gates(gate_spec, ("v1",), self.snapshot(second), self.evidence)
        self.evidence = dict(report.evidence)
        return report


def first_failure(feeding: Feeding, feeds: int, gate_spec: RolloutSpec = SPEC) -> tuple[int, list[float]]:
    """Warm-up, a baseline feed, then one feed per second: the first feed (1...) that failed, else -1; and
    the e-values of feeds 1... up to it."""
    for second in range(WARMUP + 1):
        feeding.serve(second)
    feeding.feed(WARMUP, gate_spec)  # feed 0: every series sets its baseline
    feeding.new_outcomes = 0
    values = []
    for n in range(1, feeds + 1):
        feeding.serve(WARMUP + n)
        report = feeding.feed(WARMUP + n, gate_spec)
        values.append(report.results[0].e_value or 0.0)
        if report.verdict == Verdict.FAIL:
            return n, values
    return -1, values


def log_e_paths(new: tuple[Ints, Ints], stable: tuple[Ints, Ints], tolerance: float = TOLERANCE) -> Floats:
    """log E_t per run and feed, vectorised (tests/unit/eprocess_paths.py): `new` and `stable` are
    (requests, errors) per run and interval, shape (runs, feeds)."""
    (n_total, n_bad), (s_total, s_bad) = new, stable
    return eprocess_paths.log_e_paths(n_total, n_bad, s_total, s_bad, tolerance)


def false_alarm_bound(runs: int, rate: float) -> int:
    return int(binom.ppf(1 - SURE, runs, rate))


NULL_RUNS, NULL_FEEDS = 100, 600  # 10 minutes at 1 s feeds


def test_identical_versions_fed_every_second_are_falsely_rolled_back_at_most_alpha_of_the_time(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A/A: both versions fail 1 %, pods restart now and then (about every 5 minutes each).

    Each interval's likelihood ratio has conditional expectation <= 1 under H0 (r = 1 <= tolerance) however
    short the interval, and the new rule counts a new 5xx series' value once (it was created after the
    previous feed), so Ville's inequality bounds the probability of ever reaching K/alpha by alpha per run.
    The runs are independent: false rollbacks ~ Binomial(runs, p), p <= alpha, which exceeds
    binom.ppf(1 - SURE, runs, alpha) with probability at most SURE.
    """
    rng = np.random.default_rng(3101)
    false_rollbacks = new_outcomes = restarts = 0
    for _ in range(NULL_RUNS):
        traffic = simulate(rng, WARMUP + 1 + NULL_FEEDS, BASELINE_ERRORS, restart_rate=1 / 300)
        feeding = Feeding(traffic)
        failed, _ = first_failure(feeding, NULL_FEEDS)
        false_rollbacks += failed > 0
        new_outcomes += feeding.new_outcomes
        restarts += int(traffic.restarts.sum())
    bound = false_alarm_bound(NULL_RUNS, ALPHA)
    with capsys.disabled():
        print(
            f"\n[fast lane] A/A at 10% weight, 1 s feeds for 10 min: {false_rollbacks}/{NULL_RUNS} false rollbacks "
            f"(bound {bound} = binom.ppf(0.999, {NULL_RUNS}, {ALPHA})); {new_outcomes} 5xx series counted "
            f"from 0, {restarts} pod restarts"
        )
    assert new_outcomes >= NULL_RUNS * 6  # every pod's first error, at least: the rule is exercised
    assert restarts >= NULL_RUNS * 6
    assert false_rollbacks <= bound


BOUNDARY_RUNS, BOUNDARY_FEEDS, BOUNDARY_ALPHA = 100, 300, 0.1


def test_at_the_tolerance_itself_false_rollbacks_stay_below_alpha(capsys: pytest.CaptureFixture[str]) -> None:
    """The sharpest null: v2 fails exactly `tolerance` times as often as v1 (1.2 %, 1 %), where the e-process is
    a martingale, not just a supermartingale: its crossing rate approaches alpha. Any evidence counted twice
    (e.g. a new series' value from before the previous feed) would push it over; alpha = 0.1 makes the
    bound binom.ppf(0.999, runs, 0.1) tight enough to see that. Prometheus scrapes every 5 s here while the
    lane feeds every second (4 feeds of 5 see no growth; new series show up at a scrape, mid-interval).
    """
    gate_spec = SPEC.model_copy(update={"gates": [SPEC.gates[0].model_copy(update={"alpha": BOUNDARY_ALPHA})]})
    rng = np.random.default_rng(3201)
    false_rollbacks = 0
    for _ in range(BOUNDARY_RUNS):
        traffic = simulate(rng, WARMUP + 1 + BOUNDARY_FEEDS, TOLERANCE * BASELINE_ERRORS, restart_rate=1 / 300)
        failed, _ = first_failure(Feeding(traffic, scrape_every=5), BOUNDARY_FEEDS, gate_spec)
        false_rollbacks += failed > 0
    bound = false_alarm_bound(BOUNDARY_RUNS, BOUNDARY_ALPHA)
    with capsys.disabled():
        print(
            f"\n[fast lane] v2 at exactly the tolerance (1.2x), alpha {BOUNDARY_ALPHA}, 1 s feeds of 5 s scrapes "
            f"for 5 min: "
            f"{false_rollbacks}/{BOUNDARY_RUNS} false rollbacks (bound {bound})"
        )
    assert false_rollbacks <= bound


POWER_RUNS, POWER_HORIZON = 501, 120
REFERENCE_RUNS = 10_000


def wald_time() -> float:
    """T* = a / mu: the time the r = 5 component of the mixture needs, on average drift, to reach a.

    The e-value is at least (1 - s)(1/|grid|) sum_i LR(r_i) >= (1 - s) LR(5) / |grid| (s = RESTART_SHARE), so
    it has crossed K/alpha once log LR(5) >= a = log(K/alpha) + log|grid| + log(1 / (1 - s)). Per second,
    log LR(5) grows on average by
    mu = e_new log(5 / r0) - (e_new + e_stable) (D(5) - D(r0)), D(r) = log(1 + rho (r - 1)), with the
    expected errors per second e_new = 10 x 5 % = 0.5 and e_stable = 90 x 1 % = 0.9 at rho = 0.1.
    By Wald's identity its first passage takes a / mu seconds or more on average (overshoot), and a first
    passage time with positive drift is skewed right (inverse-Gaussian-like: median < mean), so the median
    detection time should sit below T*; the test checks that this holds with probability >= 1 - SURE.
    """
    grid = grid_for(TOLERANCE)
    rho, e_new, e_stable = WEIGHT, RPS * WEIGHT * 0.05, RPS * (1 - WEIGHT) * BASELINE_ERRORS
    mu = e_new * math.log(5 / TOLERANCE) - (e_new + e_stable) * (
        math.log1p(rho * (5 - 1)) - math.log1p(rho * (TOLERANCE - 1))
    )
    return (math.log(LIMIT) + math.log(len(grid)) - math.log1p(-RESTART_SHARE)) / mu


def crossing_seconds(log_e: Floats) -> Floats:
    """Per run, the first feed (in seconds of traffic since the baseline) with log E >= log(K/alpha), else inf."""
    hits = log_e >= math.log(LIMIT)
    first = np.where(hits.any(axis=1), hits.argmax(axis=1) + 1.0, np.inf)
    return first


def test_a_five_fold_regression_is_detected_in_seconds(capsys: pytest.CaptureFixture[str]) -> None:
    """v2 fails 5 % against v1's 1 %, no restarts: the controller's e-values are the vectorised e-process's
    exactly (every error counted at the feed it happened in, first 5xx of each pod included), and the median
    detection time is below the Wald time T* (see `wald_time`)."""
    rng = np.random.default_rng(3301)
    seconds = WARMUP + 1 + POWER_HORIZON
    detected = []
    for _ in range(POWER_RUNS):
        traffic = simulate(rng, seconds, 5 * BASELINE_ERRORS, restart_rate=0.0)
        failed, values = first_failure(Feeding(traffic), POWER_HORIZON)
        new, stable = traffic.totals("v2"), traffic.totals("v1")
        expected = log_e_paths(
            (new[0][None, WARMUP + 1:], new[1][None, WARMUP + 1:]),
            (stable[0][None, WARMUP + 1:], stable[1][None, WARMUP + 1:]),
        )[0]  # fmt: skip
        assert np.allclose(np.log(values), expected[: len(values)], rtol=1e-9, atol=1e-9)
        vectorised = crossing_seconds(expected[None, :])[0]
        assert (failed if failed > 0 else math.inf) == vectorised
        detected.append(vectorised)
    median = float(np.median(detected))
    # the reference: many more runs of the vectorised e-process alone (the same model, per-version totals)
    ref = np.random.default_rng(3302)
    n_new = ref.poisson(RPS * WEIGHT, (REFERENCE_RUNS, POWER_HORIZON))
    n_stable = ref.poisson(RPS * (1 - WEIGHT), (REFERENCE_RUNS, POWER_HORIZON))
    reference = crossing_seconds(log_e_paths(
        (n_new, ref.binomial(n_new, 5 * BASELINE_ERRORS)), (n_stable, ref.binomial(n_stable, BASELINE_ERRORS))
    ))  # fmt: skip
    bound = wald_time()
    beyond = float(np.mean(reference > bound))
    with capsys.disabled():
        print(
            f"\n[fast lane] 5x regression at 10% weight, 1 s feeds: median detection {median:.0f} s "
            f"(90th percentile {np.quantile(detected, 0.9):.0f} s; vectorised reference median "
            f"{np.median(reference):.0f} s over {REFERENCE_RUNS} runs); bound T* = {bound:.1f} s, "
            f"P(T > T*) = {beyond:.3f}"
        )
    # the median of POWER_RUNS exceeds T* only if more than half of the runs do: Binomial(POWER_RUNS, beyond)
    assert binom.sf(POWER_RUNS // 2, POWER_RUNS, beyond) <= SURE  # the bound is reliable at the SURE level
    assert median <= bound


def errors_needed(new_requests: float, stable_requests: float) -> int:
    """The fewest errors of the new version (none of stable's) in one interval that cross K/alpha from E = 1,
    by the controller's maths."""
    grid = grid_for(TOLERANCE)
    for bad in range(1, 100):
        new, stable = Counts(new_requests, bad), Counts(stable_requests, 0)
        log_e = update_log_e([0.0] * len(grid), new, stable, TOLERANCE, grid)
        log_restart, intervals = update_restarts([], 0, new, stable, TOLERANCE, grid)
        if mixture_e_value(log_e, log_restart, intervals) >= LIMIT:
            return bad
    raise AssertionError("never crosses")


def hard_fault_traffic(fault_second: int, offset: float, seconds: int) -> Traffic:
    """Deterministic: v1 90 requests/s, v2 5 per pod (at 0.1, 0.3, ... 0.9 s of each second), no errors until
    `fault_second + offset`, then every v2 request fails."""
    versions = tuple(v for v, n in PODS.items() for _ in range(n))
    shares = {v: round(RPS * (WEIGHT if v == "v2" else 1 - WEIGHT)) for v in PODS}  # 90 and 10
    per_pod = [shares[v] // PODS[v] + (i < shares[v] % PODS[v]) for v in PODS for i in range(PODS[v])]
    requests = np.array([[n] * seconds for n in per_pod], dtype=np.int64)
    errors = np.zeros_like(requests)
    at = (np.arange(5) + 0.5) / 5  # arrival times within a second
    for i, version in enumerate(versions):
        if version == "v2":
            errors[i, fault_second] = int((at > offset).sum())
            errors[i, fault_second + 1 :] = requests[i, fault_second + 1 :]
    return Traffic(requests, errors, np.zeros(requests.shape, dtype=bool), versions)


class OldKeys(Feeding):
    """The same traffic with keys that name no exporter (before the change): every new series is a baseline."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for pod in self.pods:
            pod.keys = (pod.keys[0].split(".")[1], pod.keys[1].split(".")[1])


@pytest.mark.parametrize("offset", [0.05, 0.3, 0.5, 0.7, 0.95])
def test_a_hard_fault_crosses_at_the_first_feed_with_enough_errors(offset: float) -> None:
    """100 % 5xx on v2 from 20 s + offset: new 503 series on v2's known pods. At 10 % weight and none on v1,
    `errors_needed` = 5 errors cross K/alpha (the from-start test carries 1 - RESTART_SHARE of the weight): the
    gate fails at the first feed where the errors since the fault reach 5, not a feed later as it would with
    every new series a baseline.
    """
    fault, feeds = WARMUP + 20, 30
    traffic = hard_fault_traffic(fault, offset, WARMUP + 1 + feeds)
    new, stable = traffic.totals("v2"), traffic.totals("v1")
    assert (new[0][fault], stable[0][fault]) == (10, 90)
    needed = errors_needed(10, 90)
    assert needed == 5
    failed, _ = first_failure(Feeding(traffic), feeds)
    per_feed = new[1][WARMUP + 1 :]  # feed n covers second WARMUP + n
    assert failed == int(np.argmax(np.cumsum(per_feed) >= needed)) + 1
    assert failed <= int(np.argmax(per_feed >= 5)) + 1  # at the latest the first feed with 5 errors
    # with every new series a baseline, the errors of the feed where the 503 series appear are lost
    lost = per_feed.copy()
    lost[np.argmax(per_feed > 0)] = 0
    old_failed, _ = first_failure(OldKeys(traffic), feeds)
    assert old_failed == int(np.argmax(np.cumsum(lost) >= needed)) + 1
    if per_feed[np.argmax(per_feed > 0)] >= needed:  # the first feed of the fault had enough: a feed later
        assert old_failed == failed + 1
