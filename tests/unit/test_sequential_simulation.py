"""Simulated rollouts: how often the statistical error gate rolls back a healthy version, and how fast
it catches a bad one, compared with a naive fixed-horizon z-test repeated every tick.

Each scenario is 1,000 independent rollouts of 30 minutes at 5 s ticks (360 ticks), 100 requests/s in
total with Poisson arrivals per tick, the new version at a fixed weight. The e-process is computed for all
runs at once with numpy, with the same formula as `controller.analysis.sequential`;
`test_the_vectorised_maths_is_the_controllers` replays a sample of the same runs through the controller's
own code path (raw cumulative counters -> per-tick deltas -> `evaluate_gates`) and requires the same
e-values and the same rollback tick. Seeds are fixed, so every figure below is reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pytest
from scipy.stats import binom, norm

from controller.analysis.gates import Verdict, evaluate_gates
from controller.analysis.metrics import MetricsSnapshot, VersionMetrics
from controller.analysis.sequential import RESTART_SHARE, grid_for
from tests.unit import eprocess_paths
from tests.unit.engine_fixtures import spec

RUNS = 1000
TICKS = 30 * 60 // 5
RPS, TICK_SECONDS = 100.0, 5.0
BASELINE_ERRORS = 0.01
ALPHA, TOLERANCE = 0.01, 1.2
LIMIT = 1 / ALPHA  # K / alpha with K = 1 statistical gate
SURE = 0.001  # each statistical assertion may fail by chance with probability at most this

SPEC = spec(
    """
service: shop
namespace: sim
versions: [{name: v1, weight: 100}, {name: v2, weight: 0}]
target: v2
gates: [{metric: error_rate, mode: statistical}]
analysis: {min_requests: 1}
"""
)
Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Runs:
    new_requests: Ints  # (RUNS, TICKS): per tick
    stable_requests: Ints
    new_errors: Ints
    stable_errors: Ints


def simulate(seed: int, weight: float, new_error_rate: float, runs: int = RUNS) -> Runs:
    rng = np.random.default_rng(seed)
    per_tick = RPS * TICK_SECONDS
    new = rng.poisson(per_tick * weight, (runs, TICKS))
    stable = rng.poisson(per_tick * (1 - weight), (runs, TICKS))
    return Runs(new, stable, rng.binomial(new, new_error_rate), rng.binomial(stable, BASELINE_ERRORS))


def log_e_paths(runs: Runs) -> Floats:
    """log E_t for every run and tick (tests/unit/eprocess_paths.py: the formula of `sequential`, vectorised)."""
    return eprocess_paths.log_e_paths(
        runs.new_requests, runs.new_errors, runs.stable_requests, runs.stable_errors, TOLERANCE
    )


def first_crossing(hits: npt.NDArray[np.bool_]) -> Ints:
    """Per run, the first tick where `hits` is true, else -1."""
    first: Ints = np.where(hits.any(axis=1), hits.argmax(axis=1), -1)
    return first


def false_alarm_bound(rate: float) -> int:
    return int(binom.ppf(1 - SURE, RUNS, rate))


NULL_SCENARIOS = {"5% weight": (101, 0.05), "50% weight": (102, 0.5)}


@pytest.mark.parametrize("scenario", list(NULL_SCENARIOS))
def test_identical_versions_are_falsely_rolled_back_at_most_alpha_of_the_time(
    scenario: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """1% errors on both versions, 1,000 rollouts of 30 minutes, checked every 5 s.

    Ville's inequality bounds the probability that a run's e-process ever reaches K/alpha by alpha/K
    = alpha here (one gate), however often it is checked. The runs are independent, so the number of
    false rollbacks is Binomial(1000, p) with p <= alpha, which is stochastically smaller than
    Binomial(1000, alpha): it exceeds binom.ppf(1 - 0.001, 1000, alpha) with probability at most 0.001.
    (Here r = 1 lies strictly inside H0: r <= 1.2, so the true rate is far below alpha.)
    """
    seed, weight = NULL_SCENARIOS[scenario]
    log_e = log_e_paths(simulate(seed, weight, BASELINE_ERRORS))
    false_rollbacks = int((log_e.max(axis=1) >= math.log(LIMIT)).sum())
    bound = false_alarm_bound(ALPHA)
    with capsys.disabled():
        print(f"\n[statistical gate] identical versions, v2 at {scenario}: {false_rollbacks}/{RUNS} false rollbacks "
              f"(bound {bound} = binom.ppf(0.999, {RUNS}, {ALPHA}))")
    assert false_rollbacks <= bound


def test_a_five_fold_error_regression_is_caught_within_250_new_version_requests(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """v2 fails 5% of requests against v1's 1%, at 5% weight: median detection <= 250 v2 requests.

    Detection = the cumulative number of requests v2 served up to the tick whose e-value reached K/alpha
    (runs never detected in 30 minutes count as infinite, which can only raise the median).
    """
    runs = simulate(201, 0.05, 5 * BASELINE_ERRORS)
    first = first_crossing(log_e_paths(runs) >= math.log(LIMIT))
    served = np.cumsum(runs.new_requests, axis=1)
    detected = np.where(first >= 0, served[np.arange(RUNS), np.maximum(first, 0)], np.inf)
    median, p90 = float(np.median(detected)), float(np.quantile(detected, 0.9))
    with capsys.disabled():
        print(f"\n[statistical gate] 5x regression at 5% weight: median detection {median:.0f} v2 requests "
              f"({median / (RPS * 0.05):.0f} s), 90th percentile {p90:.0f}, "
              f"undetected after 30 min: {int((first < 0).sum())}/{RUNS}")
    assert median <= 250


def naive_z_rollbacks(runs: Runs, level: float) -> int:
    """A fixed-horizon one-sided two-proportion z-test on the cumulative counts, repeated at every tick."""
    n1, n0 = np.cumsum(runs.new_requests, axis=1), np.cumsum(runs.stable_requests, axis=1)
    e1, e0 = np.cumsum(runs.new_errors, axis=1), np.cumsum(runs.stable_errors, axis=1)
    pooled = (e1 + e0) / np.maximum(n1 + n0, 1)
    se = np.sqrt(pooled * (1 - pooled) * (1 / np.maximum(n1, 1) + 1 / np.maximum(n0, 1)))
    z = np.where(se > 0, (e1 / np.maximum(n1, 1) - e0 / np.maximum(n0, 1)) / np.where(se > 0, se, 1), 0.0)
    return int((z.max(axis=1) > norm.isf(level)).sum())


@pytest.mark.parametrize("scenario", list(NULL_SCENARIOS))
def test_a_naive_z_test_repeated_every_tick_rolls_back_healthy_versions_often(
    scenario: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The problem is real: on the same null runs, a z-test valid for ONE look rolls back far more often.

    At the usual 5% level it rolls back close to half of the healthy rollouts: the count is asserted to be
    at least binom.ppf(0.001, 1000, 0.35), i.e. consistent only with a rate of 35% or more. Even at the
    e-process's own level alpha = 1% it exceeds binom.ppf(0.001, 1000, 10 alpha): ten times the nominal rate.
    """
    seed, weight = NULL_SCENARIOS[scenario]
    runs = simulate(seed, weight, BASELINE_ERRORS)
    at_5, at_1 = naive_z_rollbacks(runs, 0.05), naive_z_rollbacks(runs, ALPHA)
    with capsys.disabled():
        print(f"\n[naive z-test every tick] identical versions, v2 at {scenario}: {at_5}/{RUNS} rolled back at "
              f"level 5%, {at_1}/{RUNS} at level 1%")
    assert at_5 >= binom.ppf(SURE, RUNS, 0.35)
    assert at_1 >= binom.ppf(SURE, RUNS, 10 * ALPHA)


def replay(runs: Runs, run: int, ticks: int) -> tuple[list[float], int]:
    """One simulated run through the controller: e-values per tick and the first FAIL tick (or -1)."""
    evidence = None
    counters = {"v1": VersionMetrics(), "v2": VersionMetrics()}
    values: list[float] = []
    failed = -1
    for tick in range(-1, ticks):  # tick -1: the first scrape sets the baseline
        if tick >= 0:
            counters = {
                "v1": VersionMetrics(counters["v1"].requests + int(runs.stable_requests[run, tick]),
                                     counters["v1"].errors + int(runs.stable_errors[run, tick])),
                "v2": VersionMetrics(counters["v2"].requests + int(runs.new_requests[run, tick]),
                                     counters["v2"].errors + int(runs.new_errors[run, tick])),
            }  # fmt: skip
        snapshot = MetricsSnapshot(window_seconds=30)
        for version, metrics in counters.items():
            snapshot.by_workload[("sim", "shop", version)] = metrics
            snapshot.cumulative[("sim", "shop", version)] = metrics
        report = evaluate_gates(SPEC, ("v1",), snapshot, evidence)
        evidence = dict(report.evidence)
        if tick >= 0:
            value = report.results[0].e_value
            assert value is not None
            values.append(value)
            if failed < 0 and report.verdict == Verdict.FAIL:
                failed = tick
    return values, failed


def test_the_vectorised_maths_is_the_controllers() -> None:
    for runs, sample, ticks in ((simulate(201, 0.05, 0.05, runs=20), 20, 40), (simulate(101, 0.05, 0.01, 5), 5, TICKS)):
        expected = log_e_paths(runs)
        crossings = first_crossing(expected >= math.log(LIMIT))
        for run in range(sample):
            values, failed = replay(runs, run, ticks)
            assert np.allclose(np.log(values), expected[run, :ticks], rtol=1e-9, atol=1e-9)
            assert failed == (crossings[run] if crossings[run] < ticks else -1)


def test_a_regression_after_ten_healthy_minutes_is_caught_without_climbing_back(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """10 healthy minutes (both versions at 1 %, v2 at 10 % weight, 5 s ticks), then v2 fails 5 %.

    Healthy ticks are evidence for "no worse", so the mixture from the start sinks (its r = 5 term by about
    0.9 x 5 x 0.063 nats per tick) and must climb back before it can cross. The tests restarted at later
    informative ticks do not: the one started at the first tick after the fault costs
    log(j (j + 1) / s) nats of prior weight (j = informative ticks so far, about 121), so by Wald's identity
    its median first passage sits below T = (log(K/alpha) + log|grid| + log(j (j + 1) / s)) / mu, with mu the
    r = 5 term's drift per tick after the fault, plus one tick (a crossing is seen at the end of its tick).
    Asserted: the median detection is within T, and the e-process from the start alone (no restarts) is slower.
    """
    before, after = 120, TICKS - 120
    healthy, faulty = simulate(301, 0.1, BASELINE_ERRORS), simulate(302, 0.1, 5 * BASELINE_ERRORS)

    def joined(a: Ints, b: Ints) -> Ints:
        return np.concatenate([a[:, :before], b[:, :after]], axis=1)

    runs = Runs(*(joined(getattr(healthy, f), getattr(faulty, f)) for f in Runs.__dataclass_fields__))
    counts = (runs.new_requests, runs.new_errors, runs.stable_requests, runs.stable_errors, TOLERANCE)
    with_restarts = eprocess_paths.log_e_paths(*counts)
    from_start = eprocess_paths.log_e_paths(*counts, restarts=False)
    early = int((with_restarts[:, :before].max(axis=1) >= math.log(LIMIT)).sum())

    def median_seconds(log_e: Floats) -> float:
        first = first_crossing(log_e[:, before:] >= math.log(LIMIT))
        return float(np.median(np.where(first >= 0, (first + 1) * TICK_SECONDS, np.inf)))

    rho, new_rate, stable_rate = 0.1, RPS * 0.1 * 0.05, RPS * 0.9 * BASELINE_ERRORS
    shift = math.log1p(rho * 4) - math.log1p(rho * (TOLERANCE - 1))
    mu = (new_rate * math.log(5 / TOLERANCE) - (new_rate + stable_rate) * shift) * TICK_SECONDS
    j = before + 1
    bound = (math.log(LIMIT) + math.log(len(grid_for(TOLERANCE))) + math.log(j * (j + 1) / RESTART_SHARE)) / mu + 1
    restarted, alone = median_seconds(with_restarts), median_seconds(from_start)
    with capsys.disabled():
        print(f"\n[statistical gate] 5x regression after 10 healthy minutes at 10% weight: median detection "
              f"{restarted:.0f} s (bound {bound * TICK_SECONDS:.0f} s); without restarted tests {alone:.0f} s; "
              f"false rollbacks in the healthy minutes: {early}/{RUNS}")
    assert restarted <= bound * TICK_SECONDS
    assert alone > restarted
    assert early <= false_alarm_bound(ALPHA)
