"""Pure planning: a valid RolloutSpec -> the ordered routing states it may produce.

A plan holds the baseline (also the rollback target), one entry per step, and the
promoted state (target 100%). The engine only ever applies routings from the plan,
so "traffic in a state the plan does not contain" is impossible by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

from controller.engine.routing_model import DesiredRouting, HeaderRoute
from controller.spec import DEFAULT_STEP_DURATION, RolloutSpec, Step
from controller.spec_routers import backends_of, parent_refs_of
from controller.weights import integer_percentages, target_share


@dataclass(frozen=True)
class PlannedStep:
    index: int
    kind: str  # header | weight | traffic | approval
    routing: DesiredRouting
    duration: float  # seconds to observe; 0 for approval steps (they wait for a person)
    target_percent: int

    @property
    def label(self) -> str:
        if self.kind == "header":
            route = self.routing.header_routes[0]
            return f"header {route.header}: {route.value}"
        if self.kind == "approval":
            return "manual approval"
        return f"{self.target_percent}%"


@dataclass(frozen=True)
class Plan:
    rollout: str
    target: str
    baseline: DesiredRouting
    steps: tuple[PlannedStep, ...]
    promoted: DesiredRouting

    def routing_for_step(self, index: int) -> DesiredRouting:
        return self.steps[index].routing

    @property
    def stable_versions(self) -> tuple[str, ...]:
        return tuple(v for v, w in self.baseline.weights if w > 0 and v != self.target)

    def all_routings(self) -> list[DesiredRouting]:
        return [self.baseline, *(s.routing for s in self.steps), self.promoted]


def _routing(spec: RolloutSpec, weights: dict[str, int], headers: tuple[HeaderRoute, ...]) -> DesiredRouting:
    names = tuple(v.name for v in spec.versions)
    return DesiredRouting(
        service=spec.service,
        namespace=spec.namespace,
        host=spec.fqdn,
        versions=names,
        header_routes=headers,
        weights=tuple((n, weights.get(n, 0)) for n in names),
        extra_hosts=tuple(spec.hosts),
        gateways=spec.bound_gateways,
        router=spec.router,
        parent_refs=parent_refs_of(spec),
        backends=backends_of(spec),
    )


def build_plan(spec: RolloutSpec) -> Plan:
    """Spec must already be validated (see controller.spec_loader)."""
    baseline_weights = integer_percentages(spec.baseline)
    baseline = _routing(spec, baseline_weights, ())
    headers: tuple[HeaderRoute, ...] = ()
    current = baseline_weights
    planned: list[PlannedStep] = []
    for index, step in enumerate(spec.effective_steps):
        kind = step.kind
        if kind == "header" and step.header is not None:
            # A header step only adds the route; weights stay as they are.
            h = step.header
            headers = (HeaderRoute(header=h.name, value=h.value, match=h.match, version=spec.target),)
        elif kind == "weight" and step.weight is not None:
            # The others keep their proportions from the previous step (a retired version stays retired).
            current = target_share(_others_weights(spec, current), spec.target, step.weight)
        elif kind == "traffic" and step.traffic:
            current = integer_percentages({n: step.traffic.get(n, 0) for n in spec.baseline})
        planned.append(
            PlannedStep(
                index=index,
                kind=kind,
                routing=_routing(spec, current, headers),
                duration=_duration(step),
                target_percent=current.get(spec.target, 0),
            )
        )
    promoted = _routing(spec, {spec.target: 100}, ())
    return Plan(spec.rollout_name, spec.target, baseline, tuple(planned), promoted)


def _others_weights(spec: RolloutSpec, current: dict[str, int]) -> dict[str, int]:
    """Relative weights of the non-target versions: the current split, else the baseline's."""
    others = {n: w for n, w in current.items() if n != spec.target}
    return others if any(others.values()) else {n: w for n, w in spec.baseline.items() if n != spec.target}


def _duration(step: Step) -> float:
    if step.kind == "approval":
        return 0.0
    return DEFAULT_STEP_DURATION if step.duration is None else step.duration
