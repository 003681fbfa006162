"""One rollout's share of a tick: command -> decide -> save -> apply -> confirm -> check for drift.

Writes happen only while `may_write` holds (leadership) and before the tick's deadline, checked right
before each one, so a replica that lost its lease or a tick that was abandoned never acts late.

- The state is saved before its routing is applied; if it cannot be saved, nothing new is applied
  (the rollout holds with the reason), except a move to the baseline, which is always safe.
- A step counts as entered only when the router confirmed its routing: until then the state carries
  `unconfirmed` (the reason) and the step's clock does not run (see decide).
- When the router believes its routing is in place, it is read back from the data plane (if the router
  can): a difference is drift, reported in the event and the state, and repaired at once.
- Hooks: `prepare` reads the command first, so the runner can ask `decide` (pure, no answers yet) which hooks
  this tick needs (controller.hooks.evaluation), call them for all rollouts at once, put the answers in
  `hooks`, and `run` decides with them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from controller.analysis.gates import GateReport
from controller.deadline import Deadline
from controller.engine.commands import CommandError, CommandRequest
from controller.engine.decide import Decision, decide, routing_for
from controller.engine.phases import CommandOutcome, RolloutState
from controller.engine.ports import ManagedRollout, TickEvent, TrafficRouter
from controller.engine.routing_model import DesiredRouting
from controller.engine.state_port import StateStore
from controller.hooks.results import HookAnswer, HookPoint

log = structlog.get_logger("ramp.runner")
NOT_YET_CONFIRMED = "routing saved, not yet confirmed by the data plane"
NOT_LEADER = "not leader"
DEADLINE_PASSED = "tick deadline passed"
BLOCKED = frozenset({NOT_LEADER, DEADLINE_PASSED})  # a TickEvent's apply_error when nothing was written


class RunnerParts(Protocol):
    router: TrafficRouter
    store: StateStore
    may_write: Callable[[], bool] | None


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


@dataclass
class TickStep:
    runner: RunnerParts
    rollout: ManagedRollout
    state: RolloutState
    report: GateReport | None
    now: float
    unavailable: frozenset[str]
    elapsed: float
    deadline: Deadline | None
    hooks: dict[HookPoint, list[HookAnswer]] = field(default_factory=dict)
    _prepared: tuple[CommandRequest | None, CommandOutcome | None, RolloutState] | None = None

    def _blocked(self) -> str | None:
        """Why this replica must not write now, or None."""
        if self.runner.may_write is not None and not self.runner.may_write():
            return NOT_LEADER
        if self.deadline is not None and self.deadline.expired:
            return DEADLINE_PASSED
        return None

    def prepare(self) -> RolloutState:
        """Read the pending command (once); returns the state `decide` starts from."""
        if self._prepared is None:
            request, unreadable = self._command()
            done = self.state.last_command
            if request is not None and request.id and done is not None and done.id == request.id:
                request = None  # already decided (its removal failed last time): never applied twice
                unreadable = done
            state = self.state if unreadable is None else self.state.model_copy(update={"last_command": unreadable})
            self._prepared = (request, unreadable, state)
        return self._prepared[2]

    def decide(self) -> Decision:
        """Pure: the decision from the prepared inputs and the hook answers gathered so far."""
        self.prepare()
        assert self._prepared is not None
        request, _, state = self._prepared
        rollout = self.rollout
        return decide(rollout.plan, rollout.spec, state, self.report, self.now, request, self.unavailable,
                      self.elapsed, self.hooks)  # fmt: skip

    def _command(self) -> tuple[CommandRequest | None, CommandOutcome | None]:
        try:
            return self.runner.store.pending_command(self.rollout.name), None
        except CommandError as exc:  # garbage is refused and dropped, never acted on
            refused = CommandOutcome(id="", command="?", applied=False, reason=f"unreadable command: {exc}",
                                     at=self.now)  # fmt: skip
            return None, refused

    def run(self, damaged: str | None = None) -> TickEvent:
        rollout, store = self.rollout, self.runner.store
        decision = self.decide()
        assert self._prepared is not None
        request, unreadable, _ = self._prepared
        event_args: dict[str, str | None] = {"damaged": damaged}
        command = None if request is None else request.command
        blocked = self._blocked()
        if blocked is not None:
            log.warning("tick abandoned: nothing written", rollout=rollout.name, why=blocked)
            return TickEvent(rollout, self.now, self.state.phase, decision, self.report, command, False, blocked,
                             previous_state=self.state, **event_args)  # fmt: skip
        if (decision.state.phase, decision.state.step) != (self.state.phase, self.state.step):
            log.info("phase change", rollout=rollout.name, phase=decision.state.phase.value,
                     step=decision.state.step, reason=decision.state.reason)  # fmt: skip
        if decision.routing != routing_for(rollout.plan, self.state) and decision.state.unconfirmed is None:
            # Saved before it is applied: until the data plane confirms it, the saved state says so (a reader, or
            # a controller restarted in between, never takes this routing as in place; its step time does not run).
            pending = decision.state.model_copy(update={"unconfirmed": NOT_YET_CONFIRMED})
            decision = Decision(pending, decision.routing, decision.message)
        try:
            store.save(decision.state)
        except Exception as exc:
            error = f"state not saved: {_short(exc)}"
            log.error("rollout state could not be saved", rollout=rollout.name, error=error)
            if decision.routing != rollout.plan.baseline:  # hold: never apply what is not recorded
                held = Decision(self.state.model_copy(update={"reason": f"holding: {error}"}),
                                decision.routing, error)  # fmt: skip
                return TickEvent(rollout, self.now, self.state.phase, held, self.report, command, False, None,
                                 damaged=damaged, store_error=error, previous_state=self.state)  # fmt: skip
            event_args["store_error"] = error  # a move to the baseline is applied all the same
        if request is not None or unreadable is not None:
            try:
                store.clear_command(rollout.name)
            except Exception as exc:  # the outcome is saved; the command is seen again and refused as done
                log.error("command not cleared", rollout=rollout.name, error=_short(exc))
        written, apply_error, drift = self._apply(decision.routing)
        saved = self._confirmed(decision.state, apply_error, drift)
        if saved != decision.state and self._blocked() is None and "store_error" not in event_args:
            try:
                store.save(saved)
            except Exception as exc:
                event_args["store_error"] = f"state not saved: {_short(exc)}"
        decision = Decision(saved, decision.routing, decision.message)
        return TickEvent(rollout, self.now, self.state.phase, decision, self.report, command, written, apply_error,
                         drift=drift, previous_state=self.state, **event_args)  # fmt: skip

    def _apply(self, routing: DesiredRouting) -> tuple[bool, str | None, str | None]:
        """(written, error, drift): apply and confirm; read back what the data plane serves when nothing was written."""
        router = self.runner.router
        try:
            written = router.apply(routing, deadline=self.deadline)
        except Exception as exc:  # the next tick retries: routing follows the saved state
            error = _short(exc)
            log.warning("routing not confirmed", rollout=self.rollout.name, error=error)
            return False, error, None
        observed = getattr(router, "observed", None)
        if written or observed is None or self._blocked() is not None:
            return written, None, None
        try:
            seen: DesiredRouting | None = observed(routing.namespace, routing.service, deadline=self.deadline)
        except Exception as exc:
            return False, f"routing not readable from the data plane: {_short(exc)}", None
        if seen is not None and seen.traffic() == routing.traffic():
            return False, None, None
        drift = f"data plane serves {'nothing' if seen is None else seen.describe()}, expected {routing.describe()}"
        log.warning("routing drift: repairing", rollout=self.rollout.name, drift=drift)
        invalidate = getattr(router, "invalidate", None)
        if invalidate is not None:
            invalidate(routing.namespace, routing.service)
        try:
            written = router.apply(routing, deadline=self.deadline)
        except Exception as exc:
            return False, f"drift not repaired: {_short(exc)}", drift
        return written, None, drift

    def _confirmed(self, state: RolloutState, error: str | None, drift: str | None) -> RolloutState:
        update: dict[str, object] = {}
        if error is not None:
            update = {"unconfirmed": error, "apply_failures": state.apply_failures + 1, "last_apply_error": error}
        elif state.unconfirmed is not None or state.apply_failures:
            update = {"unconfirmed": None, "apply_failures": 0, "last_apply_error": None}
            if state.step_elapsed == 0 and state.history and state.history[-1].step == state.step:
                # The step's routing is in place only now: its history and start say so, not the first attempt.
                entered = state.history[-1].model_copy(update={"at": self.now})
                update |= {"step_started_at": self.now, "history": [*state.history[:-1], entered]}
        if drift is not None:
            update["drift"] = drift
        return state.model_copy(update=update) if update else state
