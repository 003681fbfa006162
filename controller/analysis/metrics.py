"""Per-version request metrics over the analysis window, as fetched in one batch.

Quantiles are computed here from the raw histogram buckets with the same linear
interpolation as PromQL's histogram_quantile, so one bucket query per tick serves
every latency gate (p50/p90/p99) of every rollout.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

WorkloadKey = tuple[str, str, str]  # (namespace, service, version)
QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99}


@dataclass
class VersionMetrics:
    requests: float = 0.0
    errors: float = 0.0  # 5xx responses
    buckets: dict[float, float] = field(default_factory=dict)  # le (ms) -> cumulative count
    # requests by (response_code, gRPC failed): what error gates with `grpc` or `codes` count besides 5xx
    outcomes: dict[tuple[str, bool], float] = field(default_factory=dict)

    @property
    def error_percent(self) -> float | None:
        return None if self.requests <= 0 else 100.0 * self.errors / self.requests

    def add_requests(self, count: float, response_code: str, grpc_failed: bool) -> None:
        self.requests += count
        if response_code.startswith("5"):
            self.errors += count
        key = (response_code, grpc_failed)
        self.outcomes[key] = self.outcomes.get(key, 0.0) + count

    def bad_requests(self, grpc: bool = False, codes: Collection[str] = ()) -> float:
        """5xx, plus gRPC failures (`grpc`) and the 4xx `codes`, each request counted once."""
        if not grpc and not codes:
            return self.errors
        return sum(
            count
            for (code, grpc_failed), count in self.outcomes.items()
            if code.startswith("5") or code in codes or (grpc and grpc_failed)
        )

    def error_percent_for(self, grpc: bool = False, codes: Collection[str] = ()) -> float | None:
        return None if self.requests <= 0 else 100.0 * self.bad_requests(grpc, codes) / self.requests

    def quantile(self, q: float) -> float | None:
        return histogram_quantile(q, self.buckets.items())

    def merged(self, other: VersionMetrics) -> VersionMetrics:
        buckets = dict(self.buckets)
        for le, count in other.buckets.items():
            buckets[le] = buckets.get(le, 0.0) + count
        outcomes = dict(self.outcomes)
        for key, count in other.outcomes.items():
            outcomes[key] = outcomes.get(key, 0.0) + count
        return VersionMetrics(self.requests + other.requests, self.errors + other.errors, buckets, outcomes)


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """PromQL histogram_quantile over cumulative (le, count) pairs; None without observations."""
    ordered = sorted(buckets)
    if len(ordered) < 2 or not math.isinf(ordered[-1][0]):
        return None
    # Cumulative counts must be monotonic; increase() noise can break that slightly.
    fixed: list[tuple[float, float]] = []
    running = 0.0
    for le, count in ordered:
        running = max(running, count)
        fixed.append((le, running))
    total = fixed[-1][1]
    if total <= 0:
        return None
    rank = q * total
    for i, (le, count) in enumerate(fixed):
        if count >= rank:
            if math.isinf(le):
                return fixed[i - 1][0]  # like Prometheus: the highest finite bound
            lower_le, lower_count = (0.0, 0.0) if i == 0 else fixed[i - 1]
            if count == lower_count:
                return le
            return lower_le + (le - lower_le) * (rank - lower_count) / (count - lower_count)
    return fixed[-2][0]


# What a sample feeds: the windowed request counts and latency buckets, and the raw counters of the
# statistical gates. A bad sample blanks only the kinds it belongs to.
REQUESTS, LATENCY, RAW_REQUESTS, RAW_LATENCY = "requests", "latency", "raw_requests", "raw_latency"
# (kind, namespace, service, version); None is a wildcard: (kind, ns, svc, None) covers every version of a
# service, (kind, None, None, None) every rollout that shares the query.
ProblemKey = tuple[str, str | None, str | None, str | None]


@dataclass
class MetricsSnapshot:
    """Everything one tick knows about traffic; `error` says why data is missing."""

    window_seconds: float
    by_workload: dict[WorkloadKey, VersionMetrics] = field(default_factory=dict)
    error: str | None = None
    # Raw cumulative counters (no range function), fetched only for statistical gates: per version, summed...
    cumulative: dict[WorkloadKey, VersionMetrics] = field(default_factory=dict)
    # ... and per series (a stable id of the series' labels -> its counters), for per-series reset handling.
    cumulative_series: dict[WorkloadKey, dict[str, VersionMetrics]] = field(default_factory=dict)
    # Samples that could not be trusted (NaN, negative, mistyped...): which data they blank out, and why.
    problems: dict[ProblemKey, str] = field(default_factory=dict)
    # Custom gates (analysis.custom_metrics), by query id: one value per version, or raw counters per series.
    custom: dict[str, dict[WorkloadKey, float]] = field(default_factory=dict)
    custom_series: dict[str, dict[WorkloadKey, dict[str, float]]] = field(default_factory=dict)

    def version(self, namespace: str, service: str, version: str) -> VersionMetrics | None:
        return self.by_workload.get((namespace, service, version))

    def versions_combined(self, namespace: str, service: str, versions: Iterable[str]) -> VersionMetrics | None:
        found = [m for v in versions if (m := self.version(namespace, service, v)) is not None]
        if not found:
            return None
        combined = VersionMetrics()
        for metrics in found:
            combined = combined.merged(metrics)
        return combined

    def problem(self, kinds: Iterable[str], namespace: str, service: str, versions: Iterable[str]) -> str | None:
        """Why the data of these kinds for these versions cannot be trusted this tick, if it cannot."""
        if not self.problems:
            return None
        wanted = list(versions)
        for kind in kinds:
            for key in [(kind, None, None, None), (kind, namespace, service, None)] + [
                (kind, namespace, service, v) for v in wanted
            ]:
                if key in self.problems:
                    return self.problems[key]
        return None
