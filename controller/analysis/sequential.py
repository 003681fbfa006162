"""Anytime-valid comparison of the new version with the stable one: pure maths, no I/O.

Per tick the controller sees, for each version, how many requests it served and how many
of them were "bad" (5xx, or slower than a latency threshold). Given the new version's share
rho of the interval's requests, each bad request comes from the new version with probability

    theta(r) = rho r / (rho r + 1 - rho)

where r is the ratio of the bad rates, new / stable. So, given the number of bad requests in
the interval, the new version's count is Binomial(n_bad, theta(r)) whatever the common rate
is: the stable version is the control and a shared outage cancels out.

We test H0: r <= r0 (r0 = the tolerance) with the e-process

    E_t = sum_i w_i prod_{s <= t} LR_s(r_i),
    LR_s(r) = theta(r)^bad_new (1 - theta(r))^bad_stable / [theta(r0)^bad_new (1 - theta(r0))^bad_stable]

over a grid of alternatives r_i > r0 with equal weights w_i. theta is increasing in r and the
likelihood ratio is monotone, so under H0 every factor has conditional expectation <= 1 (it is
exactly 1 at r = r0): E_t is a nonnegative supermartingale with E_0 = 1, and Ville's inequality
gives P(sup_t E_t >= 1/a) <= a. Stopping at the first t with E_t >= K/alpha (K statistical gates)
therefore falsely rolls back with probability at most alpha/K per gate, however often we look.

In log space, with D(r) = log(1 + rho (r - 1)):

    log LR_s(r) = bad_new log(r / r0) - (bad_new + bad_stable) (D(r) - D(r0)).

Intervals where a version served nothing, or with no bad requests, contribute a factor of 1.

A fault that starts late. Healthy intervals are evidence for H0: the product above sinks while the new
version is fine, so a fault appearing after ten healthy minutes would first have to climb back up (minutes at
a 5x regression). So the e-value also mixes tests *restarted* at later informative intervals:

    E_t = (1 - s) M_t + sum_{j >= 1} w_j M_t^(j) + W_t,   w_j = s / (j (j + 1)),   W_t = s / (n_t + 1)

where M_t is the mixture above from the start, M_t^(j) the same mixture started at the j-th informative interval
(1 before it), n_t the number of informative intervals so far and W_t the weight of the tests not started yet
(each worth 1 until then); s = RESTART_SHARE. Per grid point, A_t(r) = sum_{j <= n_t} w_j prod_{s >= start j}
LR_s(r) follows A_t = (A_{t-1} + w_{n_t}) LR_t at an informative interval (unchanged otherwise), and
E_t = (1 - s) mean_r exp(log_e) + mean_r A_t + W_t. Whether an interval is informative depends only on its total
of bad requests, which the likelihood ratio conditions on, so each new term is a test supermartingale from its
start and E_t, a convex mixture of them with weights fixed beforehand, is one too: Ville's bound is unchanged.
The cost: 1 - s of the weight for a version bad from the start (log(1/0.9) = 0.1 nat), and log(j (j + 1) / s)
nats for a fault starting at the j-th informative interval instead of all the evidence gathered before it.

References: Lindon & Malek, "Anytime-Valid Inference for Multinomial Count Data" (NeurIPS 2022);
Lindon, Sanden & Shirikian, "Rapid Regression Detection in Software Deployments through
Sequential Testing" (KDD 2022).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

BASE_GRID = (1.5, 2.0, 3.0, 5.0, 10.0)
RESTART_SHARE = 0.1  # s: the prior weight of the tests restarted at later informative intervals
_MAX_LOG = 700.0  # exp() overflows a float near 709.8


class Counts(NamedTuple):
    """Requests and bad requests (5xx or slow), cumulative or per interval."""

    total: float
    bad: float


ZERO = Counts(0.0, 0.0)


def theta(rho: float, r: float) -> float:
    """The probability that a bad request comes from the new version (share rho, rate ratio r)."""
    return rho * r / (rho * r + 1.0 - rho)


def grid_for(r0: float) -> tuple[float, ...]:
    """Alternatives r_i > r0 for the mixture: the base grid above r0, or r0 times it for a large r0."""
    above = tuple(r for r in BASE_GRID if r > r0)
    return above if above else tuple(r0 * r for r in BASE_GRID)


def log_factor(bad_new: float, bad_stable: float, rho: float, r: float, r0: float) -> float:
    """log LR of one interval for the alternative r against r0 (0 when the interval says nothing)."""
    if bad_new + bad_stable <= 0 or not 0.0 < rho < 1.0:
        return 0.0
    shift = math.log1p(rho * (r - 1.0)) - math.log1p(rho * (r0 - 1.0))
    return bad_new * math.log(r / r0) - (bad_new + bad_stable) * shift


def update_log_e(
    log_e: Sequence[float], new: Counts, stable: Counts, r0: float, grid: Sequence[float]
) -> list[float]:
    """The cumulative log likelihood ratios per grid point after one interval's counts."""
    if not informative(new, stable):
        return list(log_e)
    rho = new.total / (new.total + stable.total)
    return [total + log_factor(new.bad, stable.bad, rho, r, r0) for total, r in zip(log_e, grid, strict=True)]


def log_e_value(log_e: Sequence[float]) -> float:
    """log of the equal-weight mixture sum_i exp(log_e_i) / n; 0 (E = 1) before any data."""
    if not log_e:
        return 0.0
    top = max(log_e)
    return top + math.log(sum(math.exp(x - top) for x in log_e)) - math.log(len(log_e))


def e_value(log_e: Sequence[float]) -> float:
    return math.exp(min(log_e_value(log_e), _MAX_LOG))


def informative(new: Counts, stable: Counts) -> bool:
    """The interval says something: both sides served requests and some were bad."""
    return new.total > 0 and stable.total > 0 and new.bad + stable.bad > 0


def update_restarts(
    log_restart: Sequence[float], intervals: int, new: Counts, stable: Counts, r0: float, grid: Sequence[float]
) -> tuple[list[float], int]:
    """(log A_t per grid point, informative intervals so far) after one interval (see the module docstring).

    `log_restart` empty means A = 0 (no restarted test yet)."""
    if not informative(new, stable):
        return list(log_restart), intervals
    n = intervals + 1
    log_w = math.log(RESTART_SHARE / (n * (n + 1)))
    rho = new.total / (new.total + stable.total)
    before = log_restart if log_restart else [-math.inf] * len(grid)
    return [
        _log_add(a, log_w) + log_factor(new.bad, stable.bad, rho, r, r0) for a, r in zip(before, grid, strict=True)
    ], n


def _log_add(a: float, b: float) -> float:
    top = max(a, b)
    return top + math.log(math.exp(a - top) + math.exp(b - top))


def log_mixture_e_value(log_e: Sequence[float], log_restart: Sequence[float], intervals: int) -> float:
    """log E_t = log((1 - s) mean exp(log_e) + mean exp(log_restart) + s / (n + 1))."""
    parts = [math.log1p(-RESTART_SHARE) + log_e_value(log_e), math.log(RESTART_SHARE / (intervals + 1))]
    if log_restart:
        parts.append(log_e_value(log_restart))
    top = max(parts)
    return top + math.log(sum(math.exp(p - top) for p in parts))


def mixture_e_value(log_e: Sequence[float], log_restart: Sequence[float], intervals: int) -> float:
    return math.exp(min(log_mixture_e_value(log_e, log_restart, intervals), _MAX_LOG))


def counter_delta(previous: Counts, current: Counts) -> Counts:
    """Growth of cumulative counters; a counter that went down was reset, so its value is the delta."""
    if current.total < previous.total or current.bad < previous.bad:
        return Counts(current.total, min(current.bad, current.total))
    total = current.total - previous.total
    return Counts(total, min(current.bad - previous.bad, total))


def snap_boundary(boundaries: Iterable[float], threshold: float) -> float | None:
    """The smallest finite bucket boundary >= threshold (the largest one when none is); None without any."""
    finite = sorted(b for b in boundaries if math.isfinite(b))
    if not finite:
        return None
    return next((b for b in finite if b >= threshold), finite[-1])


def slow_counts(buckets: Mapping[float, float], boundary: float) -> Counts | None:
    """(all requests, requests slower than `boundary`) from cumulative histogram buckets.

    slow = count(le=+Inf) - count(le=boundary); a version without that boundary uses its next larger one.
    """
    total = buckets.get(math.inf)
    if total is None:
        return None
    at = min((le for le in buckets if le >= boundary), default=math.inf)
    return Counts(total, max(0.0, total - buckets[at]))
