"""Prometheus metric source: one batched query per metric kind per tick.

The queries use Istio's standard metrics (`istio_requests_total`,
`istio_request_duration_milliseconds_bucket`), grouped by namespace, service and
version, for every rollout at once. This is the only module that imports
prometheus-api-client.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from prometheus_api_client import PrometheusConnect
from urllib3.util.retry import Retry

from controller.analysis.metrics import MetricsSnapshot, VersionMetrics, WorkloadKey

GROUP_LABELS = "destination_workload_namespace, destination_service_name, destination_version"


@dataclass(frozen=True)
class MetricsRequest:
    namespace: str
    service: str
    window_seconds: float
    reporter: str = "destination"
    cumulative_requests: bool = False  # raw istio_requests_total counters too (statistical error gates)
    cumulative_latency: bool = False  # raw duration buckets too (statistical latency gates)


class MetricSource(Protocol):
    def fetch(self, requests: Sequence[MetricsRequest]) -> dict[MetricsRequest, MetricsSnapshot]: ...


def _window(seconds: float) -> str:
    return f"{max(1, math.ceil(seconds))}s"


def _regex_union(values: Iterable[str]) -> str:
    # Names are DNS labels (validated), so they need no regex escaping.
    return "|".join(sorted(set(values)))


def _selector(services: Iterable[str], namespaces: Iterable[str], reporter: str) -> str:
    return (
        f'reporter="{reporter}", destination_service_name=~"{_regex_union(services)}", '
        f'destination_workload_namespace=~"{_regex_union(namespaces)}"'
    )


def requests_query(services: Iterable[str], namespaces: Iterable[str], window: float, reporter: str) -> str:
    selector = _selector(services, namespaces, reporter)
    return (
        f"sum by ({GROUP_LABELS}, response_code) "
        f"(increase(istio_requests_total{{{selector}}}[{_window(window)}]))"
    )


def latency_query(services: Iterable[str], namespaces: Iterable[str], window: float, reporter: str) -> str:
    selector = _selector(services, namespaces, reporter)
    return (
        f"sum by ({GROUP_LABELS}, le) "
        f"(increase(istio_request_duration_milliseconds_bucket{{{selector}}}[{_window(window)}]))"
    )


def cumulative_requests_query(services: Iterable[str], namespaces: Iterable[str], reporter: str) -> str:
    """The counters themselves (no range function): the statistical gates take per-tick deltas."""
    selector = _selector(services, namespaces, reporter)
    return f"sum by ({GROUP_LABELS}, response_code) (istio_requests_total{{{selector}}})"


def cumulative_latency_query(services: Iterable[str], namespaces: Iterable[str], reporter: str) -> str:
    selector = _selector(services, namespaces, reporter)
    return f"sum by ({GROUP_LABELS}, le) (istio_request_duration_milliseconds_bucket{{{selector}}})"


Rows = list[tuple[dict[str, str], float]]


def _add_request_rows(into: dict[WorkloadKey, VersionMetrics], rows: Rows) -> None:
    for labels, value in rows:
        metrics = into.setdefault(_key(labels), VersionMetrics())
        metrics.requests += value
        if labels.get("response_code", "").startswith("5"):
            metrics.errors += value


def _add_bucket_rows(into: dict[WorkloadKey, VersionMetrics], rows: Rows) -> None:
    for labels, value in rows:
        le = labels.get("le")
        if le is None:
            continue
        metrics = into.setdefault(_key(labels), VersionMetrics())
        bound = math.inf if le == "+Inf" else float(le)
        metrics.buckets[bound] = metrics.buckets.get(bound, 0.0) + value


class QueryClient(Protocol):
    def custom_query(self, query: str) -> list[dict[str, Any]]: ...


class PrometheusSource:
    """Batches all rollouts sharing a (window, reporter) into one query per metric kind.

    The raw counters of the statistical gates do not depend on the window: one query per kind and
    reporter serves every rollout that asks for them, and none is sent when no rollout does.
    """

    def __init__(self, url: str, timeout_seconds: float = 5.0, client: QueryClient | None = None) -> None:
        self.url = url
        self._client: QueryClient = client or _TimeoutClient(url, timeout_seconds)
        self.queries_sent = 0
        self.query_errors = 0

    def fetch(self, requests: Sequence[MetricsRequest]) -> dict[MetricsRequest, MetricsSnapshot]:
        groups: dict[tuple[float, str], list[MetricsRequest]] = {}
        for request in requests:
            groups.setdefault((request.window_seconds, request.reporter), []).append(request)
        result: dict[MetricsRequest, MetricsSnapshot] = {}
        for (window, reporter), members in groups.items():
            snapshot = self._fetch_group(window, reporter, members)
            for request in members:
                result[request] = snapshot
        self._add_cumulative(requests, result)
        return result

    def _add_cumulative(
        self, requests: Sequence[MetricsRequest], result: dict[MetricsRequest, MetricsSnapshot]
    ) -> None:
        by_reporter: dict[str, list[MetricsRequest]] = {}
        for request in requests:
            if (request.cumulative_requests or request.cumulative_latency) and result[request].error is None:
                by_reporter.setdefault(request.reporter, []).append(request)
        for reporter, members in by_reporter.items():
            counters: dict[WorkloadKey, VersionMetrics] = {}
            wanted_requests = [m for m in members if m.cumulative_requests]
            wanted_latency = [m for m in members if m.cumulative_latency]
            try:
                if wanted_requests:
                    query = cumulative_requests_query(
                        [m.service for m in wanted_requests], [m.namespace for m in wanted_requests], reporter
                    )
                    _add_request_rows(counters, self._query(query))
                if wanted_latency:
                    query = cumulative_latency_query(
                        [m.service for m in wanted_latency], [m.namespace for m in wanted_latency], reporter
                    )
                    _add_bucket_rows(counters, self._query(query))
            except Exception as exc:  # as for the windowed queries: no data, never a pass
                self.query_errors += 1
                error = f"Prometheus at {self.url} did not answer: {type(exc).__name__}: {exc}"[:300]
                for member in members:
                    result[member] = replace(result[member], error=error)
                continue
            for member in members:
                result[member].cumulative = counters

    def _fetch_group(self, window: float, reporter: str, members: list[MetricsRequest]) -> MetricsSnapshot:
        services = [m.service for m in members]
        namespaces = [m.namespace for m in members]
        snapshot = MetricsSnapshot(window_seconds=window)
        try:
            request_rows = self._query(requests_query(services, namespaces, window, reporter))
            latency_rows = self._query(latency_query(services, namespaces, window, reporter))
        except Exception as exc:  # any transport/API failure means "no data", never "pass"
            self.query_errors += 1
            snapshot.error = f"Prometheus at {self.url} did not answer: {type(exc).__name__}: {exc}"[:300]
            return snapshot
        _add_request_rows(snapshot.by_workload, request_rows)
        _add_bucket_rows(snapshot.by_workload, latency_rows)
        return snapshot

    def _query(self, query: str) -> Rows:
        self.queries_sent += 1
        rows = self._client.custom_query(query)
        parsed: Rows = []
        for row in rows:
            value = float(row["value"][1])
            if math.isfinite(value):
                parsed.append((dict(row.get("metric", {})), value))
        return parsed


def _key(labels: dict[str, str]) -> WorkloadKey:
    return (
        labels.get("destination_workload_namespace", ""),
        labels.get("destination_service_name", ""),
        labels.get("destination_version", ""),
    )


class _TimeoutClient:
    def __init__(self, url: str, timeout_seconds: float) -> None:
        # One quick retry only: a tick must not stall; the next tick asks again anyway.
        retry = Retry(total=1, connect=1, read=0, status=1, backoff_factor=0.1, status_forcelist=(502, 503, 504))
        self._prom = PrometheusConnect(url=url, disable_ssl=True, retry=retry, timeout=timeout_seconds)
        self._timeout = timeout_seconds

    def custom_query(self, query: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._prom.custom_query(
            query, params={"timeout": f"{self._timeout:g}s"}
        )
        return result
