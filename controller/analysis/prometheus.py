"""Prometheus metric source: one batched query per metric kind per tick.

The windowed queries use Istio's standard metrics (`istio_requests_total`,
`istio_request_duration_milliseconds_bucket`), grouped by namespace, service and version, for every
rollout at once. The statistical gates' raw counters are fetched per series, unaggregated: a series'
identity is its full label set, so a reset (a restarted pod/Envoy) is seen per series, as PromQL's own
`rate()` sees it, and the `sum by` alternative (which would merge series of different lifetimes, so one
restarted pod among several would look like a reset of the whole version) is avoided. The answer grows
with the number of series; it is bounded like every answer (`max_response_bytes`).

Custom gates add one query per distinct custom query (text, window, reporter, labels), shared by every
rollout that uses it (`analysis.custom_metrics`), so shared templates cost the same for 1 or 1000 rollouts.

Every query runs under a total deadline (`timeout_seconds`, and never beyond the `Deadline` given to
`fetch`) through `prometheus_http`, which explains why prometheus-api-client (per-read timeouts only) is
not used on this path. Every sample is checked (`prometheus_parse`): a bad one gives *no data* for what it
belongs to, never a pass. Credentials never appear in reasons, logs or the repr (`controller.redact`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any, Protocol

from controller.analysis.custom_metrics import CustomQuery, parse_custom
from controller.analysis.metrics import (
    LATENCY,
    RAW_LATENCY,
    RAW_REQUESTS,
    REQUESTS,
    MetricsSnapshot,
    ProblemKey,
    VersionMetrics,
    WorkloadKey,
)
from controller.analysis.prometheus_http import (
    MAX_RESPONSE_BYTES,
    Credentials,
    PrometheusAnswerError,
    PrometheusError,
    PrometheusHTTP,
)
from controller.analysis.prometheus_parse import GRPC_LABEL, Parsed, parse_vector, series_id
from controller.deadline import Deadline
from controller.engine.metrics_port import MetricSource as MetricSource  # re-exported
from controller.engine.metrics_port import MetricsRequest as MetricsRequest  # re-exported
from controller.redact import redact_text, redact_url

GROUP_LABELS = "destination_workload_namespace, destination_service_name, destination_version"
# Labels that say how a request ended, not where it was counted: a new series differing from a series seen at the
# last feed only by these is a new outcome on a known exporter (see statistical_gate.series_interval).
OUTCOME_LABELS = ("__name__", "le", "response_code", GRPC_LABEL, "response_flags")


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


def requests_query(
    services: Iterable[str], namespaces: Iterable[str], window: float, reporter: str, grpc: bool = False
) -> str:
    """Requests by status; with `grpc` also by gRPC status (only when a rollout's error gate counts them)."""
    selector = _selector(services, namespaces, reporter)
    by = f"{GROUP_LABELS}, response_code" + (f", {GRPC_LABEL}" if grpc else "")
    return f"sum by ({by}) (increase(istio_requests_total{{{selector}}}[{_window(window)}]))"


def latency_query(services: Iterable[str], namespaces: Iterable[str], window: float, reporter: str) -> str:
    selector = _selector(services, namespaces, reporter)
    return (
        f"sum by ({GROUP_LABELS}, le) "
        f"(increase(istio_request_duration_milliseconds_bucket{{{selector}}}[{_window(window)}]))"
    )


def cumulative_requests_query(services: Iterable[str], namespaces: Iterable[str], reporter: str) -> str:
    """The counters themselves, per series (no range function, no aggregation): the statistical gates take
    per-series deltas."""
    return f"istio_requests_total{{{_selector(services, namespaces, reporter)}}}"


def cumulative_latency_query(services: Iterable[str], namespaces: Iterable[str], reporter: str) -> str:
    return f"istio_request_duration_milliseconds_bucket{{{_selector(services, namespaces, reporter)}}}"


REQUESTS_METRIC = "istio_requests_total"
LATENCY_METRIC = "istio_request_duration_milliseconds_bucket"
DEFAULT_TIMEOUT = 5.0


def _grpc_failed(labels: dict[str, str]) -> bool:
    return labels.get(GRPC_LABEL, "") not in ("", "0")


def _add_requests(into: dict[WorkloadKey, VersionMetrics], parsed: Parsed) -> None:
    for sample in parsed.samples:
        metrics = into.setdefault(sample.key, VersionMetrics())
        metrics.add_requests(sample.value, sample.labels.get("response_code", ""), _grpc_failed(sample.labels))


def _add_buckets(into: dict[WorkloadKey, VersionMetrics], parsed: Parsed) -> None:
    for sample in parsed.samples:
        if sample.le is not None:
            metrics = into.setdefault(sample.key, VersionMetrics())
            metrics.buckets[sample.le] = metrics.buckets.get(sample.le, 0.0) + sample.value


def _add_series(into: dict[WorkloadKey, dict[str, VersionMetrics]], parsed: Parsed, histogram: bool) -> None:
    """Raw counters per series (a histogram's buckets share one id; counters and histograms never do)."""
    for sample in parsed.samples:
        series = into.setdefault(sample.key, {})
        if histogram:
            identity = "h" + series_id(sample.labels, drop=("__name__", "le"))
        else:  # "c<exporter>.<series>": series of one exporter differing only by outcome share the first part
            identity = f"c{series_id(sample.labels, drop=OUTCOME_LABELS)}.{series_id(sample.labels)}"
        metrics = series.setdefault(identity, VersionMetrics())
        if histogram and sample.le is not None:
            metrics.buckets[sample.le] = metrics.buckets.get(sample.le, 0.0) + sample.value
        elif not histogram:
            metrics.add_requests(sample.value, sample.labels.get("response_code", ""), _grpc_failed(sample.labels))


def _summed(series: dict[WorkloadKey, dict[str, VersionMetrics]]) -> dict[WorkloadKey, VersionMetrics]:
    totals: dict[WorkloadKey, VersionMetrics] = {}
    for key, by_id in series.items():
        combined = VersionMetrics()
        for metrics in by_id.values():
            combined = combined.merged(metrics)
        totals[key] = combined
    return totals


class QueryClient(Protocol):
    """Runs one instant query within `deadline`; returns `data.result`, raises with a safe reason otherwise."""

    def query(self, promql: str, deadline: Deadline) -> list[Any]: ...


class PrometheusSource:
    """Batches all rollouts sharing a (window, reporter) into one query per metric kind.

    The raw counters of the statistical gates do not depend on the window: one query per kind and
    reporter serves every rollout that asks for them, and none is sent when no rollout does.

    Authentication: `bearer_token_file` (one line) or `basic_auth_file` (`user:password` on one line),
    re-read when they change; or `user:password@` in the URL (sent as basic auth, shown as `***`).
    """

    def __init__(
        self,
        url: str,
        timeout_seconds: float = DEFAULT_TIMEOUT,
        client: QueryClient | None = None,
        *,
        bearer_token_file: str | None = None,
        basic_auth_file: str | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        if not (math.isfinite(timeout_seconds) and timeout_seconds > 0):
            raise ValueError(f"Prometheus timeout must be a positive number of seconds, got {timeout_seconds!r}")
        self._http: PrometheusHTTP | None = None
        if client is None:
            credentials = None
            if bearer_token_file is not None or basic_auth_file is not None:
                credentials = Credentials(bearer_token_file=bearer_token_file, basic_auth_file=basic_auth_file)
            self._http = PrometheusHTTP(url, credentials=credentials, max_response_bytes=max_response_bytes)
            client = self._http
        self._client: QueryClient = client
        self.url = redact_url(url)  # safe to show
        self.timeout_seconds = timeout_seconds
        self.queries_sent = 0
        self.query_errors = 0

    def __repr__(self) -> str:
        return f"PrometheusSource({self.url!r}, timeout_seconds={self.timeout_seconds:g})"

    def check_credentials(self) -> None:
        """Read the credential files now (e.g. at start-up); raises with a reason naming the file."""
        if self._http is not None:
            self._http.credentials.header()

    def _redact(self, text: str) -> str:
        return self._http.redact(text) if self._http is not None else redact_text(text)

    def _safe(self, problems: dict[ProblemKey, str]) -> dict[ProblemKey, str]:
        """Reasons quote the answer's labels: a hostile answer could echo our credentials there."""
        return {key: self._redact(reason)[:300] for key, reason in problems.items()}

    def fetch(
        self, requests: Sequence[MetricsRequest], deadline: Deadline | None = None
    ) -> dict[MetricsRequest, MetricsSnapshot]:
        """One snapshot per request; every query ends within `timeout_seconds` and within `deadline`."""
        groups: dict[tuple[float, str], list[MetricsRequest]] = {}
        result: dict[MetricsRequest, MetricsSnapshot] = {}
        for request in requests:
            if request.windowed:
                groups.setdefault((request.window_seconds, request.reporter), []).append(request)
            else:  # raw counters only (the fast lane): no windowed query at all
                result[request] = MetricsSnapshot(window_seconds=request.window_seconds)
        for (window, reporter), members in groups.items():
            snapshot = self._fetch_group(window, reporter, members, deadline)
            for request in members:
                result[request] = snapshot
        self._add_cumulative(requests, result, deadline)
        self._add_custom(requests, result, deadline)
        return result

    def _add_custom(
        self,
        requests: Sequence[MetricsRequest],
        result: dict[MetricsRequest, MetricsSnapshot],
        deadline: Deadline | None,
    ) -> None:
        """One query per distinct custom query, for every rollout using it (its services and namespaces as a
        regex alternation); a failed query blanks only the gates that read it."""
        members_of: dict[CustomQuery, list[MetricsRequest]] = {}
        for request in requests:
            if result[request].error is None:
                for query in request.custom:
                    members_of.setdefault(query, []).append(request)
        values: dict[str, dict[WorkloadKey, float]] = {}
        series: dict[str, dict[WorkloadKey, dict[str, float]]] = {}
        problems: dict[ProblemKey, str] = {}
        for query, members in members_of.items():
            promql = query.promql([m.service for m in members], [m.namespace for m in members])
            try:
                rows = self._query(promql, deadline)
            except PrometheusError as exc:  # no data for the gates reading this query, never a pass
                problems[(query.id, None, None, None)] = str(exc)
                continue
            parsed = parse_custom(rows, query)
            if query.raw:
                series[query.id] = parsed.series
            else:
                values[query.id] = parsed.values
            problems.update(self._safe(parsed.problems))
        for request in {m for members in members_of.values() for m in members}:
            snapshot = result[request]
            result[request] = replace(
                snapshot, custom=values, custom_series=series, problems={**snapshot.problems, **problems}
            )

    def _add_cumulative(
        self,
        requests: Sequence[MetricsRequest],
        result: dict[MetricsRequest, MetricsSnapshot],
        deadline: Deadline | None,
    ) -> None:
        by_reporter: dict[str, list[MetricsRequest]] = {}
        for request in requests:
            if (request.cumulative_requests or request.cumulative_latency) and result[request].error is None:
                by_reporter.setdefault(request.reporter, []).append(request)
        for reporter, members in by_reporter.items():
            series: dict[WorkloadKey, dict[str, VersionMetrics]] = {}
            problems: dict[ProblemKey, str] = {}
            wanted_requests = [m for m in members if m.cumulative_requests]
            wanted_latency = [m for m in members if m.cumulative_latency]
            try:
                if wanted_requests:
                    query = cumulative_requests_query(
                        [m.service for m in wanted_requests], [m.namespace for m in wanted_requests], reporter
                    )
                    parsed = parse_vector(self._query(query, deadline), REQUESTS_METRIC, RAW_REQUESTS, histogram=False)
                    _add_series(series, parsed, histogram=False)
                    problems.update(self._safe(parsed.problems))
                if wanted_latency:
                    query = cumulative_latency_query(
                        [m.service for m in wanted_latency], [m.namespace for m in wanted_latency], reporter
                    )
                    parsed = parse_vector(self._query(query, deadline), LATENCY_METRIC, RAW_LATENCY, histogram=True)
                    _add_series(series, parsed, histogram=True)
                    problems.update(self._safe(parsed.problems))
            except PrometheusError as exc:  # as for the windowed queries: no data, never a pass
                for member in members:
                    result[member] = replace(result[member], error=str(exc))
                continue
            summed = _summed(series)  # once for all members (per member it would be quadratic in rollouts)
            for member in members:  # a copy per member: snapshots of one window group are shared
                result[member] = replace(
                    result[member],
                    cumulative=summed,
                    cumulative_series=series,
                    problems={**result[member].problems, **problems},
                )

    def _fetch_group(
        self, window: float, reporter: str, members: list[MetricsRequest], deadline: Deadline | None
    ) -> MetricsSnapshot:
        services = [m.service for m in members]
        namespaces = [m.namespace for m in members]
        grpc = any(m.grpc for m in members)
        snapshot = MetricsSnapshot(window_seconds=window)
        try:
            request_rows = self._query(requests_query(services, namespaces, window, reporter, grpc), deadline)
            latency_rows = self._query(latency_query(services, namespaces, window, reporter), deadline)
        except PrometheusError as exc:  # any transport/API failure means "no data", never "pass"
            snapshot.error = str(exc)
            return snapshot
        requests = parse_vector(request_rows, REQUESTS_METRIC, REQUESTS, histogram=False)
        latency = parse_vector(latency_rows, LATENCY_METRIC, LATENCY, histogram=True)
        _add_requests(snapshot.by_workload, requests)
        _add_buckets(snapshot.by_workload, latency)
        snapshot.problems = self._safe({**requests.problems, **latency.problems})
        return snapshot

    def _query(self, promql: str, deadline: Deadline | None) -> list[Any]:
        """`data.result` of one query under its total deadline; PrometheusError with a safe reason otherwise."""
        left = self.timeout_seconds if deadline is None else min(self.timeout_seconds, deadline.remaining())
        if left <= 0:
            self.query_errors += 1
            raise PrometheusError(f"Prometheus at {self.url} was not asked: the tick's deadline ran out")
        self.queries_sent += 1
        try:
            return self._client.query(promql, Deadline(left))
        except Exception as exc:  # any failure (transport, API, a client bug): a reason, never a traceback
            self.query_errors += 1
            if isinstance(exc, PrometheusAnswerError):
                reason = f"Prometheus at {self.url} gave an unusable answer: {exc}"
            elif isinstance(exc, PrometheusError):
                reason = f"Prometheus at {self.url} did not answer: {exc}"
            else:
                reason = f"Prometheus at {self.url} did not answer: {type(exc).__name__}: {exc}"
            raise PrometheusError(self._redact(reason)[:300]) from None
