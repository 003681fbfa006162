"""The runner's side of hooks: which hooks a tick needs, called for all rollouts at once within the tick.

A tick with hooks runs two rounds, each a batch of concurrent calls (a bounded thread pool, so one slow
receiver never starves the other rollouts' ticks):
1. `step-gate` hooks of every active rollout's current step (their answers may fail the step);
2. `pre-step` / `confirm-promotion` hooks of the rollouts that would otherwise enter a step (or promote) now:
   `decide` runs once without their answers (pure, cheap) and names the point in `state.hook_wait`. So a
   pre-step hook is called only when the step is due (never hammered while the previous step runs), and a hook
   that already passed there (`state.hooks_passed`) is not called again.
`decide` then runs once more with every answer (TickStep.run).

Every call is bounded by min(hook timeout, what is left of the tick's deadline minus a reserve for saving and
applying the routing). A call the tick could not wait for counts as "not answered" (hold), never as a failure.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Protocol

import structlog

from controller.deadline import Deadline
from controller.engine.decide import Decision, routing_for
from controller.engine.phases import ACTIVE_PHASES, RolloutState
from controller.engine.ports import ManagedRollout
from controller.hooks.client import HookClient
from controller.hooks.payload import build_payload, encode
from controller.hooks.results import CONFIRM_PROMOTION, HookAnswer, HookPoint, hooks_at, passed_key
from controller.spec_hooks import Hook

log = structlog.get_logger("ramp.hooks")

MAX_WORKERS = 16
RESERVE_FRACTION = 0.25  # of the tick's deadline, kept for saving the state and applying the routing
RESERVE_CAP = 5.0
_GRACE = 0.5  # waiting for a call past its own deadline (it ends by then; this only absorbs scheduling)


@dataclass(frozen=True)
class HookCall:
    rollout: str
    point: HookPoint
    hook: Hook
    body: bytes


class HookedStep(Protocol):
    """What the rounds need of a TickStep."""

    rollout: ManagedRollout
    now: float
    hooks: dict[HookPoint, list[HookAnswer]]

    def prepare(self) -> RolloutState: ...

    def decide(self) -> Decision: ...


class HookCaller:
    """Calls batches of hooks concurrently; the pool is created on first use and bounded (MAX_WORKERS)."""

    def __init__(self, client: HookClient | None = None, workers: int = MAX_WORKERS) -> None:
        self.client = client or HookClient()
        self._workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="ramp-hook")
            return self._pool

    def call_all(self, calls: Sequence[HookCall], deadline: Deadline | None) -> list[HookAnswer]:
        """One answer per call, in order; returns by the tick's deadline (minus the reserve) at the latest."""
        if not calls:
            return []
        budget = _budget(deadline)
        futures: list[Future[HookAnswer]] = [self._executor().submit(self.client.call, c.hook, c.body, budget)
                                             for c in calls]  # fmt: skip
        longest = max(c.hook.timeout for c in calls)
        limit = longest if budget is None else min(longest, budget.remaining())
        wait(futures, timeout=limit + _GRACE)
        answers = []
        for call, future in zip(calls, futures, strict=True):
            if not future.done():  # queued behind slower calls, or late: left to end on its own deadline
                future.cancel()
                answers.append(HookAnswer(call.hook.name, None, "not answered before the tick's deadline"))
                continue
            try:
                answers.append(future.result())
            except Exception as exc:  # the client never raises; if it did, no answer (never a pass)
                answers.append(HookAnswer(call.hook.name, None, f"hook call failed: {type(exc).__name__}"))
        for call, answer in zip(calls, answers, strict=True):
            log.info("hook called", rollout=call.rollout, hook=call.hook.name, point=call.point.key,
                     ok=answer.ok, reason=answer.reason, attempts=answer.attempts)  # fmt: skip
        return answers

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None


def _budget(deadline: Deadline | None) -> Deadline | None:
    if deadline is None:
        return None
    reserve = min(RESERVE_CAP, RESERVE_FRACTION * deadline.seconds)
    return Deadline(max(0.0, deadline.remaining() - reserve))


def _payload(step: HookedStep, hook: Hook, point: HookPoint, state: RolloutState) -> bytes:
    plan, spec = step.rollout.plan, step.rollout.spec
    steps = len(plan.steps)
    if point.type == CONFIRM_PROMOTION:
        routing, number, reason = plan.promoted, steps, f"all steps passed: confirm the promotion of {plan.target}"
    elif point.type == "pre-step":
        planned = plan.steps[point.step - 1]
        routing, number, reason = planned.routing, point.step, f"before step {point.step}/{steps}: {planned.label}"
    else:
        routing, number, reason = routing_for(plan, state), point.step, state.reason
    payload = build_payload(hook, spec, phase=state.phase.value, step=number, steps=steps, routing=routing,
                            reason=reason, at=step.now)  # fmt: skip
    return encode(payload)


def step_gate_calls(step: HookedStep) -> list[HookCall]:
    state = step.prepare()
    if state.phase not in ACTIVE_PHASES:
        return []
    point = HookPoint("step-gate", state.step + 1)
    name = step.rollout.name
    return [HookCall(name, point, h, _payload(step, h, point, state)) for h in hooks_at(step.rollout.spec, point)]


def boundary_calls(step: HookedStep, dry: Decision) -> list[HookCall]:
    """The pre-step / confirm-promotion hooks the dry decision waits for and that have not passed yet."""
    if dry.state.hook_wait is None:
        return []
    point = HookPoint.parse(dry.state.hook_wait)
    passed = set(dry.state.hooks_passed)
    wanted = [h for h in hooks_at(step.rollout.spec, point) if passed_key(point, h.name) not in passed]
    return [HookCall(step.rollout.name, point, h, _payload(step, h, point, dry.state)) for h in wanted]


def _record(steps: dict[str, HookedStep], calls: list[HookCall], answers: list[HookAnswer]) -> None:
    for call, answer in zip(calls, answers, strict=True):
        steps[call.rollout].hooks.setdefault(call.point, []).append(answer)


def run_hook_rounds(caller: HookCaller, steps: Sequence[HookedStep], deadline: Deadline | None) -> None:
    """Call the hooks this tick needs (see the module docstring) and store the answers in each step's `hooks`."""
    hooked = {s.rollout.name: s for s in steps if s.rollout.spec.hooks}
    if not hooked:
        return
    gates = [call for s in hooked.values() for call in step_gate_calls(s)]
    _record(hooked, gates, caller.call_all(gates, deadline))
    boundaries = [call for s in hooked.values() for call in boundary_calls(s, s.decide())]
    _record(hooked, boundaries, caller.call_all(boundaries, deadline))


class HookRounds:
    """What the runner is given to call a tick's hooks (`RolloutRunner.hook_rounds`): the rounds of
    `run_hook_rounds` through one bounded pool (`HookCaller`). The entry points (`ramp run`, `ramp demo`,
    `ramp controller`) build one; the engine only knows the call."""

    def __init__(self, caller: HookCaller | None = None) -> None:
        self.caller = caller or HookCaller()

    def __call__(self, steps: Sequence[HookedStep], deadline: Deadline | None) -> None:
        run_hook_rounds(self.caller, steps, deadline)

    def close(self) -> None:
        self.caller.close()
