"""The tick runner: the I/O shell around `decide`.

One tick, for every rollout that is due: read state -> (one batched metrics fetch
for all active rollouts) -> evaluate gates -> decide -> persist state -> apply
routing. State is saved before routing is applied and routing is derived from the
state alone, so a controller killed between the two converges on restart (the
next tick re-applies the saved state's routing): a step is never replayed or
skipped. Routers skip writes when nothing changed.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import structlog

from controller.analysis.gates import GateReport, evaluate_gates
from controller.analysis.metrics import MetricsSnapshot
from controller.analysis.prometheus import MetricSource, MetricsRequest
from controller.deadline import Deadline
from controller.engine.decide import Decision, decide
from controller.engine.phases import ACTIVE_PHASES, Command, Phase, PhaseChange, RolloutState
from controller.plan import Plan, build_plan
from controller.routing.model import DesiredRouting
from controller.spec import RolloutSpec
from controller.state.file_store import StateStore

log = structlog.get_logger("ramp.runner")


class TrafficRouter(Protocol):
    def apply(self, routing: DesiredRouting) -> bool:
        """Make the data plane match `routing`; False when it already did (no write)."""
        ...


class VersionAvailability(Protocol):
    def unavailable_versions(self, rollouts: Sequence[ManagedRollout]) -> dict[str, frozenset[str]]:
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
class ManagedRollout:
    spec: RolloutSpec
    plan: Plan
    digest: str
    source: Path | None = None

    @classmethod
    def from_spec(cls, spec: RolloutSpec, source: Path | None = None) -> ManagedRollout:
        return cls(spec, build_plan(spec), spec_digest(spec), source)

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

    @property
    def phase_changed(self) -> bool:
        return self.previous_phase != self.decision.phase


Observer = Callable[[TickEvent], None]


@dataclass
class RolloutRunner:
    router: TrafficRouter
    metrics: MetricSource
    store: StateStore
    clock: Callable[[], float] = time.time
    observers: list[Observer] = field(default_factory=list)
    availability: VersionAvailability | None = None
    may_write: Callable[[], bool] | None = None  # leadership check right before each write
    rollouts: dict[str, ManagedRollout] = field(default_factory=dict)
    _last_tick: dict[str, float] = field(default_factory=dict)

    def set_rollouts(self, rollouts: Sequence[ManagedRollout]) -> None:
        self.rollouts = {r.name: r for r in rollouts}
        self.store.track({r.name: (r.spec.namespace, r.spec.service) for r in rollouts})
        self._last_tick = {k: v for k, v in self._last_tick.items() if k in self.rollouts}

    def base_interval(self) -> float:
        return min((r.spec.schedule.interval for r in self.rollouts.values()), default=5.0)

    def _due(self, now: float) -> list[ManagedRollout]:
        # Tolerate scheduler jitter (milliseconds) without skipping a tick, but never tick early:
        # callers that poll faster than the interval must still get the configured interval.
        slack = min(0.25 * self.base_interval(), 0.2)
        return [
            r
            for r in self.rollouts.values()
            if now - self._last_tick.get(r.name, float("-inf")) >= r.spec.schedule.interval - slack
        ]

    def load_state(self, rollout: ManagedRollout, now: float) -> RolloutState:
        """The saved state, adapted to a changed spec (documented in the README):

        - same versions + target, rollout finished: the outcome stands (no traffic moves);
        - same versions + target, rollout running: it starts over from its first step;
        - other versions or target: a new rollout from the new baseline.
        """
        identity = rollout_identity(rollout.spec)
        state = self.store.load(rollout.name)
        if state is None:
            return RolloutState(rollout=rollout.name, spec_digest=rollout.digest, identity=identity)
        if state.spec_digest == rollout.digest:
            return state
        if state.identity == identity and state.terminal:
            return state.model_copy(update={"spec_digest": rollout.digest})
        reason = "spec changed: rollout starts over" if state.identity == identity else "new rollout: spec changed"
        note = PhaseChange(phase=Phase.PENDING, step=-1, at=now, reason=reason)
        return RolloutState(
            rollout=rollout.name, spec_digest=rollout.digest, identity=identity, history=[*state.history, note]
        )

    def tick(self, deadline: Deadline | None = None) -> list[TickEvent]:
        now = self.clock()
        states: dict[str, RolloutState] = {}
        candidates = self._due(now)
        if candidates:
            try:
                self.store.begin_tick()
            except Exception as exc:  # bulk read failed: each load below reads on its own
                log.warning("bulk state read failed", error=f"{type(exc).__name__}: {exc}"[:300])
        for rollout in candidates:
            try:
                states[rollout.name] = self.load_state(rollout, now)
            except Exception as exc:  # this rollout waits for the next tick; the others go on
                log.warning("state not readable", rollout=rollout.name, error=f"{type(exc).__name__}: {exc}"[:300])
        due = [r for r in candidates if r.name in states]
        active = [r for r in due if states[r.name].phase in ACTIVE_PHASES]
        snapshots = self._fetch(active)
        unavailable = self._unavailable([r for r in due if not states[r.name].terminal])
        events = []
        for rollout in due:
            self._last_tick[rollout.name] = now
            snapshot = snapshots.get(rollout.name)
            report = None
            if snapshot is not None:
                state = states[rollout.name]
                report = evaluate_gates(rollout.spec, rollout.plan.stable_versions, snapshot, state.sequential)
            missing = unavailable.get(rollout.name, frozenset())
            events.append(self._tick_one(rollout, states[rollout.name], report, now, missing))
        for event in events:
            for observer in self.observers:
                observer(event)
        return events

    def _fetch(self, active: list[ManagedRollout]) -> dict[str, MetricsSnapshot]:
        if not active:
            return {}
        requests = {r.name: metrics_request(r.spec) for r in active}
        fetched = self.metrics.fetch(list(requests.values()))
        return {name: fetched[request] for name, request in requests.items()}

    def _unavailable(self, rollouts: list[ManagedRollout]) -> dict[str, frozenset[str]]:
        if self.availability is None or not rollouts:
            return {}
        try:
            return self.availability.unavailable_versions(rollouts)
        except Exception as exc:  # unknown pod health: treat every version of these rollouts as unavailable
            log.warning("pod availability unknown", error=f"{type(exc).__name__}: {exc}")
            return {r.name: frozenset(v.name for v in r.spec.versions) for r in rollouts}

    def _tick_one(
        self,
        rollout: ManagedRollout,
        state: RolloutState,
        report: GateReport | None,
        now: float,
        unavailable: frozenset[str] = frozenset(),
    ) -> TickEvent:
        command = self.store.pending_command(rollout.name)
        decision = decide(rollout.plan, rollout.spec, state, report, now, command, unavailable)
        if self.may_write is not None and not self.may_write():
            # Leadership ended during this tick: another replica may act now; write nothing.
            log.warning("not leader any more: tick abandoned", rollout=rollout.name)
            return TickEvent(rollout, now, state.phase, decision, report, command, False, "not leader")
        if decision.state.phase != state.phase or decision.state.step != state.step:
            log.info(
                "phase change",
                rollout=rollout.name,
                phase=decision.state.phase.value,
                step=decision.state.step,
                reason=decision.state.reason,
            )
        self.store.save(decision.state)
        if command is not None:
            self.store.clear_command(rollout.name)
        written, error = False, None
        try:
            written = self.router.apply(decision.routing)
        except Exception as exc:  # the next tick retries: routing follows the saved state
            error = f"{type(exc).__name__}: {exc}"[:500]
            log.warning("routing not applied", rollout=rollout.name, error=error)
        saved = decision.state
        if error is not None:
            saved = saved.model_copy(update={"apply_failures": saved.apply_failures + 1, "last_apply_error": error})
        elif saved.apply_failures:
            saved = saved.model_copy(update={"apply_failures": 0, "last_apply_error": None})
        if saved is not decision.state:
            self.store.save(saved)
            decision = Decision(saved, decision.routing, decision.message)
        return TickEvent(rollout, now, state.phase, decision, report, command, written, error)

    def all_terminal(self) -> bool:
        states = [self.store.load(name) for name in self.rollouts]
        return all(s is not None and s.terminal for s in states)
