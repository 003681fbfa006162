"""From the runner's tick events to report data (pure): one TickSample per tick, and the rollout's header."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from controller.analysis.gate_thresholds import THRESHOLD_KINDS, GateThreshold, gate_thresholds, gate_unit
from controller.engine.ports import ManagedRollout, TickEvent
from controller.engine.routing_model import DesiredRouting
from controller.report.model import MAX_NAME, GateSample, TickSample, clip, finite_or_none

Name = Annotated[str, Field(max_length=MAX_NAME)]


class StoredThreshold(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    gate: Name
    kind: Name
    value: float = Field(allow_inf_nan=False)
    unit: Annotated[str, Field(max_length=16)] = ""

    def threshold(self) -> GateThreshold | None:
        for kind in THRESHOLD_KINDS:
            if kind == self.kind:
                return GateThreshold(self.gate, kind, self.value, self.unit)
        return None  # a kind this version does not know: not drawn


class RolloutHeader(BaseModel):
    """What a timeline needs to know of the rollout's spec: written when the spec (digest) changes."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    rollout: Name
    namespace: Name
    service: Name
    target: Name
    digest: Annotated[str, Field(max_length=128)] = ""
    stable: list[Name] = Field(default_factory=list, max_length=64)
    versions: list[Name] = Field(default_factory=list, max_length=64)
    steps: list[Annotated[str, Field(max_length=500)]] = Field(default_factory=list, max_length=1000)
    thresholds: list[StoredThreshold] = Field(default_factory=list, max_length=1000)
    units: dict[Name, Annotated[str, Field(max_length=16)]] = Field(default_factory=dict, max_length=64)
    higher_is_better: list[Name] = Field(default_factory=list, max_length=64)


def rollout_header(rollout: ManagedRollout) -> RolloutHeader:
    spec = rollout.spec
    baseline = spec.baseline
    return RolloutHeader(
        rollout=rollout.name,
        namespace=spec.namespace,
        service=spec.service,
        target=spec.target,
        digest=rollout.digest,
        stable=[v for v, weight in baseline.items() if weight > 0 and v != spec.target],
        versions=[v.name for v in spec.versions],
        steps=[step.label for step in rollout.plan.steps],
        thresholds=[
            StoredThreshold(gate=t.gate, kind=t.kind, value=t.value, unit=t.unit) for t in gate_thresholds(spec)
        ],
        units={gate.display_name: gate_unit(gate) for gate in spec.gates},
        higher_is_better=[gate.display_name for gate in spec.gates if gate.higher_is_better],
    )


def _header_version(routing: DesiredRouting) -> str | None:
    return routing.header_routes[0].version if routing.header_routes else None


def tick_sample(event: TickEvent) -> TickSample:
    state = event.decision.state
    gates: list[GateSample] = []
    if event.report is not None:
        for result in event.report.results:
            gates.append(
                GateSample(
                    gate=result.gate,
                    verdict=str(result.verdict),
                    value=finite_or_none(result.value),
                    stable_value=finite_or_none(result.stable_value),
                    e_value=finite_or_none(result.e_value),
                    e_limit=finite_or_none(result.e_limit),
                )
            )
    return TickSample(
        at=event.at,
        phase=state.phase.value,
        step=state.step,
        weights=dict(event.decision.routing.weights),
        header_version=_header_version(event.decision.routing),
        verdict=None if event.report is None else str(event.report.verdict),
        reason=clip(state.reason),
        gates=gates,
    )
