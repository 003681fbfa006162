"""The ports the engine needs, and the types adapters share with it.

Adapters (routers, metric sources, state stores, availability, observers) implement these and import
them from here, never from the runner.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from controller.analysis.custom_metrics import spec_queries
from controller.analysis.gates import GateReport
from controller.deadline import Deadline
from controller.engine.decide import Decision
from controller.engine.metrics_port import MetricsRequest
from controller.engine.phases import TERMINAL_PHASES, Command, GateSnapshot, Phase, PhaseChange, RolloutState
from controller.engine.routing_model import DesiredRouting
from controller.plan import Plan, build_plan
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
    """What a rollout needs fetched: its window, raw counters for statistical gates, gRPC statuses when an
    error gate counts them, and its custom gates' queries (shared with every rollout using the same ones)."""
    statistical = {gate.metric for gate in spec.gates if gate.statistical}
    return MetricsRequest(
        spec.namespace, spec.service, spec.analysis.window, spec.analysis.reporter,
        cumulative_requests="error_rate" in statistical, cumulative_latency="latency" in statistical,
        grpc=any(gate.grpc for gate in spec.gates if gate.metric == "error_rate"), custom=spec_queries(spec),
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
    previous_state: RolloutState | None = None  # the state the tick started from (None: not known)

    @property
    def phase_changed(self) -> bool:
        return self.previous_phase != self.decision.phase

    @cached_property
    def transitions(self) -> tuple[Transition, ...]:
        """What happened to the rollout in this tick, computed once and shared by every observer (Events,
        metrics, notifications, post-rollout hooks). See `tick_transitions` for the rules."""
        return tick_transitions(self)


Observer = Callable[[TickEvent], None]


@runtime_checkable
class RemovalObserver(Protocol):
    """An observer that also hears which rollouts left the runner (their spec deleted or renamed, their shard given
    up), as (rollout name, namespace) pairs: e.g. to stop exporting their metric series."""

    def rollouts_removed(self, removed: Sequence[tuple[str, str]]) -> None: ...


TransitionKind = Literal[
    "started", "step", "approval", "paused", "resumed", "holding", "rolled_back", "failed", "promoted", "restarted"
]
TRANSITION_KINDS: tuple[TransitionKind, ...] = (
    "started", "step", "approval", "paused", "resumed", "holding", "rolled_back", "failed", "promoted", "restarted",
)  # fmt: skip


@dataclass(frozen=True)
class Transition:
    """One thing that happened to a rollout in a tick: a phase or step change, or the start of a hold for missing
    data. `step` is 0-based (-1 before the first step, `steps` once promoted); `weights` is the traffic split
    the tick left in place; `gates` the last gate evaluation (a rollback's breaching gate and value are in it
    and in `reason`)."""

    kind: TransitionKind
    rollout: str
    namespace: str
    service: str
    target: str
    phase: Phase
    from_phase: Phase
    step: int
    steps: int
    reason: str
    at: float
    weights: tuple[tuple[str, int], ...] = ()
    gates: tuple[GateSnapshot, ...] = ()

    @property
    def step_label(self) -> str:
        """E.g. `step 2/4` (1-based); empty before the first step and once promoted."""
        return f"step {self.step + 1}/{self.steps}" if 0 <= self.step < self.steps else ""


def _kind(change: PhaseChange, before: tuple[Phase, int]) -> TransitionKind:
    phase, step = before
    if change.phase == Phase.PENDING:
        return "restarted"  # a changed spec starts the rollout over
    if change.phase == Phase.PROMOTED:
        return "promoted"
    if change.phase == Phase.ROLLED_BACK:
        return "rolled_back"
    if change.phase == Phase.FAILED:
        return "failed"
    if phase == Phase.PENDING:
        return "started"
    if change.phase == Phase.PAUSED:
        return "approval" if change.step != step else "paused"  # same step: paused by a person (or set-weights)
    if phase == Phase.PAUSED and change.step == step:
        return "resumed"
    return "step"


def _restamped(event: TickEvent, change: PhaseChange) -> bool:
    """Whether the tick's last history entry is an OLD change re-stamped with this tick's time (the runner does so
    when a step's routing is confirmed by the data plane only in a later tick), not a change made in this tick.

    With the tick's previous state (the runner gives it) this is exact: the entry the tick started with, re-timed.
    Without it, this follows from how `decide` writes reasons: a tick that moves leaves the new
    entry's reason in the state, while a tick of an active rollout that does not move always writes a holding
    or failed-check reason; a finished rollout changes phase only by a person's command, always to another
    phase; a paused rollout moves to another paused entry only by a command applied in this tick."""
    state = event.decision.state
    if event.damaged is not None or change.phase != event.previous_phase or change is not state.history[-1]:
        return False
    before = event.previous_state
    if before is not None:  # exact: the entry the tick started with, only its time changed
        last = before.history[-1] if before.history else None
        return (
            last is not None
            and last.at != change.at
            and (last.phase, last.step, last.reason) == (change.phase, change.step, change.reason)
        )
    if change.phase == Phase.PENDING:
        return False  # a restart note is written by the runner in this tick, never re-stamped
    if change.phase in TERMINAL_PHASES:
        return True
    if change.phase == Phase.PAUSED:
        command = state.last_command
        applied_now = command is not None and command.applied and command.at == event.at
        return not (applied_now and state.reason == change.reason)
    return state.reason != change.reason


def _abandoned(event: TickEvent) -> bool:
    """A tick that wrote nothing (no longer the leader, or past its deadline): its decision was not saved, so
    nothing in it happened. Then `apply_error` holds why, and the state's `unconfirmed` was not set from it
    (the runner sets it to the router's error whenever routing was attempted)."""
    return event.apply_error is not None and event.decision.state.unconfirmed != event.apply_error


def tick_transitions(event: TickEvent) -> tuple[Transition, ...]:
    """The transitions of one tick, from the decision: the history entries stamped with the tick's time (matched by
    time, not position: history is bounded), less an old entry merely re-stamped (`_restamped`), plus "holding"
    when a hold for missing data started in this tick. An abandoned tick has none."""
    if _abandoned(event):
        return ()
    state = event.decision.state
    rollout, spec = event.rollout, event.rollout.spec
    weights, gates, steps = tuple(event.decision.routing.weights), tuple(state.last_gates), len(rollout.plan.steps)

    def made(kind: TransitionKind, phase: Phase, before: Phase, step: int, reason: str) -> Transition:
        return Transition(kind, rollout.name, spec.namespace, spec.service, spec.target, phase, before, step, steps,
                          reason, event.at, weights, gates)  # fmt: skip

    found: list[Transition] = []
    history = state.history
    for index, change in enumerate(history):
        if change.at != event.at or _restamped(event, change):
            continue
        before = (history[index - 1].phase, history[index - 1].step) if index > 0 else (Phase.PENDING, -1)
        found.append(made(_kind(change, before), change.phase, before[0], change.step, change.reason))
    if state.missing_data_since == event.at and state.phase in (Phase.HEADER_TEST, Phase.PROGRESSING):
        found.append(made("holding", state.phase, state.phase, state.step, state.reason))
    return tuple(found)
