"""The e-process maths of `controller.analysis.sequential`, against hand-computed values."""

from __future__ import annotations

import itertools
import math

import pytest

from controller.analysis.sequential import (
    BASE_GRID,
    Counts,
    counter_delta,
    e_value,
    grid_for,
    log_e_value,
    log_factor,
    slow_counts,
    snap_boundary,
    theta,
    update_log_e,
)

R0 = 1.2
GRID = grid_for(R0)


def test_theta_is_the_new_versions_share_of_bad_requests() -> None:
    assert theta(0.1, 1.0) == pytest.approx(0.1)  # equal rates: the share of the traffic
    assert theta(0.2, 2.0) == pytest.approx(1 / 3)  # 0.4 / (0.4 + 0.8)
    assert theta(0.5, 3.0) == pytest.approx(0.75)  # 1.5 / (1.5 + 0.5)
    assert theta(0.05, 1.2) == pytest.approx(0.06 / 1.01)


def test_log_factor_matches_the_binomial_likelihood_ratio_by_hand() -> None:
    # rho = 0.25, r = 2, r0 = 1.2: theta(2) = 0.5/1.25 = 0.4, theta(1.2) = 0.3/1.05 = 2/7.
    # 3 bad on the new version, 7 on stable: 3 log(0.4 / (2/7)) + 7 log(0.6 / (5/7)) = 3 log 1.4 + 7 log 0.84
    expected = 3 * math.log(1.4) + 7 * math.log(0.84)
    assert expected == pytest.approx(-0.211057, abs=1e-6)
    assert log_factor(3, 7, 0.25, 2.0, R0) == pytest.approx(expected, rel=1e-12)
    # the same through theta directly, for another point
    t1, t0 = theta(0.1, 5.0), theta(0.1, R0)
    direct = 4 * math.log(t1 / t0) + 2 * math.log((1 - t1) / (1 - t0))
    assert log_factor(4, 2, 0.1, 5.0, R0) == pytest.approx(direct, rel=1e-12)


def test_intervals_without_information_contribute_a_factor_of_one() -> None:
    start = [0.5, -1.0, 0.0, 2.0, 3.0]
    assert update_log_e(start, Counts(0, 0), Counts(100, 3), R0, GRID) == start  # new version: no requests
    assert update_log_e(start, Counts(50, 2), Counts(0, 0), R0, GRID) == start  # stable: no requests
    assert update_log_e(start, Counts(50, 0), Counts(100, 0), R0, GRID) == start  # no errors at all
    assert log_factor(0, 0, 0.3, 2.0, R0) == 0.0
    assert log_factor(1, 1, 1.0, 2.0, R0) == 0.0


def test_the_mixture_e_value_is_exactly_one_before_data() -> None:
    fresh = [0.0] * len(GRID)
    assert log_e_value(fresh) == 0.0
    assert e_value(fresh) == 1.0
    assert e_value([]) == 1.0


def test_the_mixture_is_the_equal_weight_average_of_the_likelihood_ratios() -> None:
    assert e_value([math.log(2.0), math.log(8.0)]) == pytest.approx(5.0, rel=1e-12)
    assert e_value([math.log(1e300), math.log(1e300)]) == pytest.approx(1e300, rel=1e-9)  # no overflow
    assert math.isfinite(e_value([1e6]))


def test_grid_lies_above_the_tolerance() -> None:
    assert grid_for(1.2) == BASE_GRID
    assert grid_for(2.0) == (3.0, 5.0, 10.0)
    assert grid_for(10.0) == tuple(10 * r for r in BASE_GRID)


def test_counter_deltas_survive_resets() -> None:
    assert counter_delta(Counts(100, 5), Counts(130, 7)) == Counts(30, 2)
    assert counter_delta(Counts(100, 5), Counts(40, 1)) == Counts(40, 1)  # requests went down: reset
    assert counter_delta(Counts(100, 5), Counts(120, 2)) == Counts(120, 2)  # errors went down: reset
    assert counter_delta(Counts(100, 5), Counts(100, 5)) == Counts(0, 0)


def test_e_value_grows_under_a_five_fold_regression() -> None:
    # 10% of 500 requests a tick on v2; v2 fails 6% (3 of 50), v1 about 1.1% (5 of 450): r = 5.4
    log_e = [0.0] * len(GRID)
    values = []
    for _ in range(12):
        log_e = update_log_e(log_e, Counts(50, 3), Counts(450, 5), R0, GRID)
        values.append(e_value(log_e))
    assert all(b > a for a, b in itertools.pairwise(values))
    assert values[-1] >= 100  # K/alpha with one gate at alpha = 0.01


def test_e_value_shrinks_when_both_versions_fail_alike() -> None:
    # v2 gets 10% of the traffic and exactly 10% of the errors: r = 1 < r0
    log_e = [0.0] * len(GRID)
    values = [e_value(log_e)]
    for _ in range(20):
        log_e = update_log_e(log_e, Counts(50, 1), Counts(450, 9), R0, GRID)
        values.append(e_value(log_e))
    assert all(b < a for a, b in itertools.pairwise(values))
    assert values[-1] < 0.3


def test_slow_requests_from_buckets_snapped_to_a_boundary() -> None:
    bounds = [5.0, 10.0, 25.0, 50.0, 100.0, 250.0, math.inf]
    assert snap_boundary(bounds, 95.0) == 100.0
    assert snap_boundary(bounds, 100.0) == 100.0
    assert snap_boundary(bounds, 4000.0) == 250.0  # above every finite bound: the largest one
    assert snap_boundary([math.inf], 10.0) is None
    buckets = {50.0: 70.0, 100.0: 90.0, 250.0: 99.0, math.inf: 100.0}
    assert slow_counts(buckets, 100.0) == Counts(100.0, 10.0)
    assert slow_counts(buckets, 60.0) == Counts(100.0, 10.0)  # no 60: the next larger bound
    assert slow_counts({100.0: 3.0}, 100.0) is None  # no +Inf bucket
