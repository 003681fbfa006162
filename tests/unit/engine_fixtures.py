"""Shared builders for engine tests: specs, gate reports and fake edges."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from controller.analysis.gates import GateReport, GateResult, Verdict
from controller.analysis.metrics import MetricsSnapshot, VersionMetrics
from controller.analysis.prometheus import MetricsRequest
from controller.deadline import Deadline
from controller.engine.routing_model import DesiredRouting
from controller.spec_loader import parse_spec_text

SPEC_YAML = """
service: shop
namespace: prod
versions:
  - {name: v1, weight: 100}
  - {name: v2, weight: 0}
target: v2
steps:
  - header: {name: x-version, value: v2}
    duration: 10s
  - weight: 10
    duration: 10s
  - approval: {}
  - weight: 50
    duration: 10s
gates:
  - metric: error_rate
    max: 2
schedule: {interval: 5s}
rollback: {missing_data_timeout: 30s}
"""

# Header step then 10 % and 50 %, one error gate, no approval pause.
NO_APPROVAL_YAML = """
service: shop
namespace: prod
versions: [{name: v1, weight: 100}, {name: v2, weight: 0}]
target: v2
steps:
  - {header: {value: v2}, duration: 10s}
  - {weight: 10, duration: 10s}
  - {weight: 50, duration: 10s}
gates: [{metric: error_rate, max: 2}]
schedule: {interval: 5s}
"""


def spec(text: str = SPEC_YAML):  # type: ignore[no-untyped-def]
    return parse_spec_text(text, "test.yaml")


def report(verdict: Verdict, reason: str = "r") -> GateReport:
    value = 5.0 if verdict == Verdict.FAIL else (0.1 if verdict == Verdict.PASS else None)
    return GateReport((GateResult("error_rate", verdict, value, None, reason),))


@dataclass
class RecordingRouter:
    applied: list[DesiredRouting] = field(default_factory=list)
    fail_next: int = 0

    def apply(self, routing: DesiredRouting, deadline: Deadline | None = None) -> bool:
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("router down")
        if self.applied and self.applied[-1] == routing:
            return False
        self.applied.append(routing)
        return True


@dataclass
class FixedMetrics:
    """Serves the same per-version counts to every request; records the batches."""

    by_version: dict[str, VersionMetrics] = field(default_factory=dict)
    error: str | None = None
    batches: list[int] = field(default_factory=list)

    def fetch(
        self, requests: Sequence[MetricsRequest], deadline: Deadline | None = None
    ) -> dict[MetricsRequest, MetricsSnapshot]:
        self.batches.append(len(requests))
        out = {}
        for r in requests:
            snap = MetricsSnapshot(window_seconds=r.window_seconds, error=self.error)
            for version, metrics in self.by_version.items():
                snap.by_workload[(r.namespace, r.service, version)] = metrics
            out[r] = snap
        return out


class FakeClock:
    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
