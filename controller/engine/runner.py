"""The tick runner: the I/O shell around `decide`.

One tick, for every rollout that is due: read state -> (one batched metrics fetch
for all active rollouts) -> evaluate gates -> decide -> persist state -> apply
routing. State is saved before routing is applied and routing is derived from the
state alone, so a controller killed between the two converges on restart (the
next tick re-applies the saved state's routing): a step is never replayed or
skipped. Routers skip writes when nothing changed.

Hooks (spec `hooks:`): after the metrics fetch, the hooks the due rollouts need are called for all of them
at once, concurrently and within the tick's deadline (controller.hooks.evaluation); their answers are inputs
to `decide`. Post-rollout hooks are handed to a background sender by an observer (`post_rollout_hooks`,
called after the other observers), never inside the tick.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from controller.analysis.gates import evaluate_gates
from controller.analysis.metrics import MetricsSnapshot
from controller.deadline import Deadline
from controller.engine.fast_lane import FastLane
from controller.engine.metrics_port import MetricSource
from controller.engine.phases import ACTIVE_PHASES, MAX_HISTORY, Phase, PhaseChange, RolloutState
from controller.engine.ports import (
    ManagedRollout,
    Observer,
    RemovalObserver,
    RoutingReadBack,
    TickEvent,
    TrafficRouter,
    VersionAvailability,
    metrics_request,
    rollout_identity,
    spec_digest,
)
from controller.engine.state_check import StateDamaged, state_problem
from controller.engine.state_port import StateStore
from controller.engine.tick_step import TickStep

__all__ = [
    "ManagedRollout", "Observer", "RolloutRunner", "RoutingReadBack", "TickEvent", "TrafficRouter",
    "VersionAvailability", "metrics_request", "rollout_identity", "spec_digest",
]  # fmt: skip

log = structlog.get_logger("ramp.runner")


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


class HookRounds(Protocol):
    """Calls the hooks a tick's steps need and records their answers in each step (controller.hooks)."""

    def __call__(self, steps: Sequence[TickStep], deadline: Deadline | None) -> None: ...
    def close(self) -> None: ...


@dataclass
class RolloutRunner:
    router: TrafficRouter
    metrics: MetricSource
    store: StateStore
    clock: Callable[[], float] = time.time
    observers: list[Observer] = field(default_factory=list)
    availability: VersionAvailability | None = None
    may_write: Callable[[], bool] | None = None  # leadership check right before each write
    # Step time and missing-data time are measured with this clock (default: time.monotonic, or `clock` when a
    # test injects one), so a replica's wall clock never shortens or stretches a step.
    monotonic: Callable[[], float] | None = None
    rollouts: dict[str, ManagedRollout] = field(default_factory=dict)
    # Adapters the entry points give (controller.hooks): the calls of a tick's hooks, and the observer that sends
    # post-rollout hooks. Without `hook_rounds` a spec's hooks are never answered: their steps hold (never pass).
    hook_rounds: HookRounds | None = None
    post_rollout_hooks: Observer | None = None
    # Statistical error gates fed between ticks (engine.fast_lane); None: only at each rollout's interval.
    fast_lane: FastLane | None = field(default_factory=FastLane)
    _last_tick: dict[str, float] = field(default_factory=dict)
    _last_seen: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.monotonic is None:
            self.monotonic = time.monotonic if self.clock is time.time else self.clock

    def set_rollouts(self, rollouts: Sequence[ManagedRollout]) -> None:
        before = {(r.name, r.spec.namespace) for r in self.rollouts.values()}
        self.rollouts = {r.name: r for r in rollouts}
        removed = sorted(before - {(r.name, r.spec.namespace) for r in self.rollouts.values()})
        if removed:
            self._tell_removed(removed)
        self.store.track({r.name: (r.spec.namespace, r.spec.service, r.spec.router) for r in rollouts})
        self._last_tick = {k: v for k, v in self._last_tick.items() if k in self.rollouts}
        self._last_seen = {k: v for k, v in self._last_seen.items() if k in self.rollouts}
        if self.fast_lane is not None:
            self.fast_lane.forget(self.rollouts)

    def stand_down(self) -> None:
        """This process stopped acting (leadership or shard lost): observers drop what they export of every
        rollout, as if all had left. The rollouts stay: a standby keeps reading specs, and ticks them again (and
        exports them afresh) only once it acts again."""
        self._tell_removed(sorted({(r.name, r.spec.namespace) for r in self.rollouts.values()}))

    def _tell_removed(self, removed: list[tuple[str, str]]) -> None:
        for observer in self.observers:
            if not isinstance(observer, RemovalObserver):
                continue
            try:
                observer.rollouts_removed(removed)
            except Exception as exc:  # an observer never breaks the runner
                log.warning("observer failed", observer=type(observer).__name__, error=_short(exc))

    def close(self, timeout: float = 5.0) -> None:
        """On shutdown: queued post-rollout deliveries go out within `timeout`, and the hook pool stops."""
        sender = getattr(self.post_rollout_hooks, "sender", None)
        if sender is not None:
            sender.close(timeout)
        if self.hook_rounds is not None:
            self.hook_rounds.close()

    def _call_hooks(self, steps: list[TickStep], deadline: Deadline | None) -> None:
        if self.hook_rounds is not None:
            self.hook_rounds(steps, deadline)
            return
        hooked = sorted(step.rollout.name for step in steps if step.rollout.spec.hooks)
        if hooked:  # never silently: the hooks are unanswered and their steps hold
            log.error("specs have hooks but this runner calls none: their hook steps hold", rollouts=hooked)

    def base_interval(self) -> float:
        """How often `tick` should be called: the shortest spec interval, or the fast lane's when it is shorter
        and a rollout has gates in it."""
        interval = min((r.spec.schedule.interval for r in self.rollouts.values()), default=5.0)
        if self.fast_lane is not None and self.fast_lane.wanted(self.rollouts):
            interval = min(interval, self.fast_lane.interval)
        return interval

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
        - other versions or target: a new rollout from the new baseline (manual weights end with the old one).

        Raises StateDamaged when the stored state cannot be read or does not fit the plan.
        """
        identity = rollout_identity(rollout.spec)
        state = self.store.load(rollout.name)
        if state is None:
            return RolloutState(rollout=rollout.name, spec_digest=rollout.digest, identity=identity)
        if state.spec_digest == rollout.digest or (state.identity == identity and state.terminal):
            problem = state_problem(rollout.plan, state)
            if problem is not None:
                raise StateDamaged(problem)
            return (
                state
                if state.spec_digest == rollout.digest
                else state.model_copy(update={"spec_digest": rollout.digest})
            )
        reason = "spec changed: rollout starts over" if state.identity == identity else "new rollout: spec changed"
        note = PhaseChange(phase=Phase.PENDING, step=-1, at=now, reason=reason)
        history = [*state.history, note]
        dropped = state.dropped_history + max(0, len(history) - MAX_HISTORY)
        return RolloutState(rollout=rollout.name, spec_digest=rollout.digest, identity=identity,
                            history=history[-MAX_HISTORY:], dropped_history=dropped)  # fmt: skip

    def _fail_safe(self, rollout: ManagedRollout, problem: str, now: float) -> RolloutState:
        """A damaged state: gates are never switched off by it; the rollout fails to its baseline."""
        kept = None
        quarantine = getattr(self.store, "quarantine", None)
        if quarantine is not None:
            try:
                kept = quarantine(rollout.name, problem)
            except Exception as exc:
                log.error("damaged state could not be kept aside", rollout=rollout.name, error=_short(exc))
        where = f"; the damaged state was kept at {kept}" if kept else ""
        reason = f"state damaged ({problem}): traffic sent to the baseline{where}"
        log.error("rollout state damaged: failing safe to the baseline", rollout=rollout.name, problem=problem)
        fresh = RolloutState(rollout=rollout.name, spec_digest=rollout.digest, identity=rollout_identity(rollout.spec))
        return fresh.moved(Phase.FAILED, -1, now, reason)

    def tick(self, deadline: Deadline | None = None) -> list[TickEvent]:
        """One tick for every due rollout. With `deadline`, nothing is written once it has passed (an
        abandoned tick can never act late) and every external call is bounded by it."""
        now = self.clock()
        mono = self._monotonic()
        states: dict[str, RolloutState] = {}
        damaged: dict[str, str] = {}
        candidates = self._due(mono)
        candidates += self._fast_lane(candidates, mono, deadline)
        if candidates:
            try:
                self.store.begin_tick()
            except Exception as exc:  # bulk read failed: each load below reads on its own
                log.warning("bulk state read failed", error=_short(exc)[:300])
        for rollout in candidates:
            try:
                states[rollout.name] = self.load_state(rollout, now)
            except StateDamaged as exc:
                damaged[rollout.name] = str(exc)[:300]
                states[rollout.name] = self._fail_safe(rollout, damaged[rollout.name], now)
            except Exception as exc:  # e.g. the API is unreachable: this rollout waits; the others go on
                log.warning("state not readable", rollout=rollout.name, error=_short(exc)[:300])
        due = [r for r in candidates if r.name in states]
        active = [r for r in due if states[r.name].phase in ACTIVE_PHASES]
        snapshots = self._fetch(active, deadline)
        unavailable = self._unavailable([r for r in due if not states[r.name].terminal], deadline)
        steps: list[tuple[TickStep, str | None]] = []
        for rollout in due:
            self._last_tick[rollout.name] = mono
            last = self._last_seen.get(rollout.name)
            self._last_seen[rollout.name] = mono
            cap = 2 * rollout.spec.schedule.interval  # a stalled controller observed nothing meanwhile
            elapsed = 0.0 if last is None else min(max(0.0, mono - last), cap)
            state = states[rollout.name]
            report = None
            snapshot = snapshots.get(rollout.name)
            if snapshot is not None and state.phase in ACTIVE_PHASES:
                lane = self.fast_lane
                evidence = state.sequential if lane is None else lane.evidence_for(rollout.name, state)
                report = evaluate_gates(rollout.spec, rollout.plan.stable_versions, snapshot, evidence)
            missing = unavailable.get(rollout.name, frozenset())
            step = TickStep(self, rollout, state, report, now, missing, elapsed, deadline)
            step.prepare()
            steps.append((step, damaged.get(rollout.name)))
        try:
            self._call_hooks([step for step, _ in steps], deadline)
        except Exception as exc:  # hooks unanswered: their steps hold; never a pass
            log.error("hooks not called", error=_short(exc))
        events = [step.run(problem) for step, problem in steps]
        if self.fast_lane is not None:
            for event in events:
                self.fast_lane.after_tick(event.rollout, event.decision.state, mono)
        extra = [self.post_rollout_hooks] if self.post_rollout_hooks is not None else []
        for event in events:
            for observer in [*self.observers, *extra]:
                try:
                    observer(event)
                except Exception as exc:  # an observer never breaks a tick
                    log.warning(
                        "observer failed",
                        observer=getattr(observer, "__name__", type(observer).__name__),
                        error=_short(exc),
                    )
        return events

    def _fast_lane(self, due: list[ManagedRollout], mono: float, deadline: Deadline | None) -> list[ManagedRollout]:
        """The rollouts (not due yet) whose statistical error gate crossed its boundary in the fast lane."""
        if self.fast_lane is None:
            return []
        names = {r.name for r in due}
        waiting = [r for r in self.rollouts.values() if r.name not in names]
        try:
            crossed = self.fast_lane.check(waiting, self.metrics, mono, deadline)
        except Exception as exc:  # never breaks a tick: the rollouts keep their pace
            log.error("fast lane failed", error=_short(exc))
            return []
        return [self.rollouts[name] for name in crossed if name in self.rollouts]

    def _monotonic(self) -> float:
        assert self.monotonic is not None
        return self.monotonic()

    def _fetch(self, active: list[ManagedRollout], deadline: Deadline | None) -> dict[str, MetricsSnapshot]:
        if not active:
            return {}
        requests = {r.name: metrics_request(r.spec) for r in active}
        try:
            fetched = self.metrics.fetch(list(requests.values()), deadline=deadline)
        except Exception as exc:  # never a pass: every gate of these rollouts reports no data, with the reason
            error = f"metrics not fetched: {_short(exc)[:300]}"
            log.warning("metrics fetch failed", error=error)
            return {name: MetricsSnapshot(window_seconds=r.window_seconds, error=error) for name, r in requests.items()}
        missing = MetricsSnapshot(window_seconds=0.0, error="no answer for this rollout")
        return {name: fetched.get(request, missing) for name, request in requests.items()}

    def _unavailable(self, rollouts: list[ManagedRollout], deadline: Deadline | None) -> dict[str, frozenset[str]]:
        if self.availability is None or not rollouts:
            return {}
        try:
            return self.availability.unavailable_versions(rollouts, deadline=deadline)
        except Exception as exc:  # unknown pod health: treat every version of these rollouts as unavailable
            log.warning("pod availability unknown", error=_short(exc))
            return {r.name: frozenset(v.name for v in r.spec.versions) for r in rollouts}

    def all_terminal(self) -> bool:
        """Every rollout finished and its outcome confirmed by the data plane."""
        try:
            states = [self.store.load(name) for name in self.rollouts]
        except Exception:
            return False
        return all(s is not None and s.settled for s in states)
