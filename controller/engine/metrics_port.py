"""The metrics port: what the engine asks a metric source for (one batched fetch per tick), and its answer.

Implemented by controller.analysis.prometheus (one query per metric for ALL rollouts, split per series).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from controller.analysis.custom_metrics import CustomQuery
from controller.analysis.metrics import MetricsSnapshot
from controller.deadline import Deadline


@dataclass(frozen=True)
class MetricsRequest:
    namespace: str
    service: str
    window_seconds: float
    reporter: str = "destination"
    cumulative_requests: bool = False  # raw istio_requests_total counters too (statistical error gates)
    cumulative_latency: bool = False  # raw duration buckets too (statistical latency gates)
    grpc: bool = False  # an error gate counts gRPC failures: group requests by grpc_response_status too
    custom: tuple[CustomQuery, ...] = ()  # the custom gates' queries (shared by every rollout that uses one)
    windowed: bool = True  # False: the raw counters only (the fast lane), no windowed request/latency queries


class MetricSource(Protocol):
    def fetch(
        self, requests: Sequence[MetricsRequest], deadline: Deadline | None = None
    ) -> dict[MetricsRequest, MetricsSnapshot]: ...
