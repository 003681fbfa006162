"""The ports the engine needs, and the types adapters share with it.

Adapters (routers, metric sources, state stores, availability, observers) implement these and import
them from here, never from the runner.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from controller.analysis.gates import GateReport
from controller.analysis.prometheus import MetricsRequest
from controller.deadline import Deadline
from controller.engine.decide import Decision
from controller.engine.phases import Command, Phase
from controller.plan import Plan, build_plan
from controller.routing.model import DesiredRouting
from controller.spec import RolloutSpec


class TrafficRouter(Protocol):
    def apply(self, routing: DesiredRouting, deadline: Deadline | None = None) -> bool:
        """Make the data plane serve `routing`; returns only once the data plane CONFIRMED it (True: written,
        False: already confirmed in place). Raises when it is rejected or not confirmed (reason in the message)."""
        ...


class RoutingReadBack(Protocol):
    """Optional for routers: what the data plane serves now, to find drift after a rollout (or a step)."""

    def observed(self, namespace: str, service: str, deadline: Deadline | None = None) -> DesiredRouting | None: ...


class VersionAvailability(Protocol):
    def unavailable_versions(
        self, rollouts: Sequence[ManagedRollout], deadline: Deadline | None = None
    ) -> dict[str, frozenset[str]]:
        """Per rollout name, the versions with no ready pods (batched: one call per tick)."""
        ...


def spec_digest(spec: RolloutSpec) -> str:
    return hashlib.sha256(spec.model_dump_json(by_alias=True).encode()).hexdigest()[:16]


def rollout_identity(spec: RolloutSpec) -> str:
    """What is being rolled out: the baseline versions/weights and the target. Gates or timings are not."""
    what = {"versions": spec.baseline, "target": spec.target, "service": spec.service}
    return hashlib.sha256(repr(sorted(what.items())).encode()).hexdigest()[:16]


def metrics_request(spec: RolloutSpec) -> MetricsRequest:
    """What a rollout needs fetched: its window, plus raw counters for statistical gates."""
    statistical = {gate.metric for gate in spec.gates if gate.statistical}
    return MetricsRequest(
        spec.namespace, spec.service, spec.analysis.window, spec.analysis.reporter,
        cumulative_requests="error_rate" in statistical, cumulative_latency="latency" in statistical,
    )  # fmt: skip


@dataclass(frozen=True)
class ResourceRef:
    """The RampRollout custom resource a rollout comes from (None for a spec file)."""

    namespace: str
    name: str
    uid: str = ""
    generation: int = 0


@dataclass(frozen=True)
class ManagedRollout:
    spec: RolloutSpec
    plan: Plan
    digest: str
    source: Path | None = None
    resource: ResourceRef | None = None

    @classmethod
    def from_spec(
        cls, spec: RolloutSpec, source: Path | None = None, resource: ResourceRef | None = None
    ) -> ManagedRollout:
        return cls(spec, build_plan(spec), spec_digest(spec), source, resource)

    @property
    def name(self) -> str:
        return self.spec.rollout_name


@dataclass(frozen=True)
class TickEvent:
    rollout: ManagedRollout
    at: float
    previous_phase: Phase
    decision: Decision
    report: GateReport | None
    command: Command | None
    routing_written: bool
    apply_error: str | None = None
    drift: str | None = None  # the data plane served something else than the state says (then repaired)
    damaged: str | None = None  # the stored state was damaged: failed safe to the baseline
    store_error: str | None = None  # the state could not be saved: nothing new was applied

    @property
    def phase_changed(self) -> bool:
        return self.previous_phase != self.decision.phase


Observer = Callable[[TickEvent], None]
