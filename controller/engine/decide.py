"""The pure heart of Ramp: decide(plan, spec, state, gates, now, command) -> Decision.

No I/O and no clock of its own. Rules:
- a FAIL from any gate in an active phase rolls back at once (traffic = baseline);
- HOLD (a statistical gate's max breached by stable too) holds the step with its reason: it
  never promotes, never rolls back by itself and is not missing data;
- a step completes only when its duration has elapsed AND the gates pass now;
  NO_DATA holds the step (never promotes), and after `missing_data_timeout` of
  continuous missing data the rollout rolls back (policy `rollback`) or keeps
  holding (policy `hold`);
- approval steps pause until a person resumes;
- routing that could not be applied MAX_APPLY_FAILURES ticks in a row fails the rollout
  (traffic: baseline, retried every tick);
- terminal phases never change (a new spec digest starts a new rollout, see runner).
"""

from __future__ import annotations

from dataclasses import dataclass

from controller.analysis.gates import GateReport, Verdict
from controller.engine.phases import ACTIVE_PHASES, Command, EValue, GateSnapshot, Phase, RolloutState
from controller.plan import Plan
from controller.routing.model import DesiredRouting
from controller.spec import RolloutSpec

MAX_APPLY_FAILURES = 5


@dataclass(frozen=True)
class Decision:
    state: RolloutState
    routing: DesiredRouting
    message: str

    @property
    def phase(self) -> Phase:
        return self.state.phase


def routing_for(plan: Plan, state: RolloutState) -> DesiredRouting:
    """The routing that a state stands for; always one of the plan's routings."""
    if state.phase == Phase.PROMOTED:
        return plan.promoted
    if state.phase in (Phase.PENDING, Phase.ROLLED_BACK, Phase.FAILED) or state.step < 0:
        return plan.baseline
    return plan.steps[min(state.step, len(plan.steps) - 1)].routing


def _phase_for_step(plan: Plan, index: int) -> Phase:
    kind = plan.steps[index].kind
    if kind == "header":
        return Phase.HEADER_TEST
    if kind == "approval":
        return Phase.PAUSED
    return Phase.PROGRESSING


def _needs_pods(routing: DesiredRouting) -> set[str]:
    return {v for v, w in routing.weights if w > 0} | {r.version for r in routing.header_routes}


def _enter_step(
    plan: Plan, state: RolloutState, index: int, now: float, unavailable: frozenset[str] = frozenset()
) -> RolloutState:
    routing = plan.promoted if index >= len(plan.steps) else plan.steps[index].routing
    missing = sorted(_needs_pods(routing) & unavailable)
    if missing:  # never send traffic to a version without ready pods: hold where we are
        where = "promotion" if index >= len(plan.steps) else f"step {index + 1}/{len(plan.steps)}"
        pods = ", ".join(missing)
        return state.model_copy(update={"reason": f"holding before {where}: no ready pods for {pods}"})
    if index >= len(plan.steps):
        return state.moved(Phase.PROMOTED, len(plan.steps), now, f"all steps passed: {plan.target} promoted")
    step = plan.steps[index]
    reason = f"step {index + 1}/{len(plan.steps)}: {step.label}"
    if step.kind == "approval":
        reason = f"step {index + 1}/{len(plan.steps)}: waiting for manual approval"
    return state.moved(_phase_for_step(plan, index), index, now, reason)


def _apply_command(
    plan: Plan, state: RolloutState, command: Command, now: float, unavailable: frozenset[str]
) -> RolloutState:
    if state.terminal:
        return state
    if command == Command.ABORT:
        return state.moved(Phase.ROLLED_BACK, state.step, now, "aborted by user")
    if command == Command.PROMOTE:
        promoted = _enter_step(plan, state, len(plan.steps), now, unavailable)
        if promoted.phase != Phase.PROMOTED:
            return promoted
        return promoted.model_copy(update={"reason": "promoted by user"})
    if command == Command.PAUSE and state.phase != Phase.PAUSED and state.step >= 0:
        paused = state.moved(Phase.PAUSED, state.step, now, "paused by user")
        return paused.model_copy(update={"paused_by_user": True})
    if command == Command.RESUME and state.phase == Phase.PAUSED:
        if state.paused_by_user:
            resumed = state.moved(_phase_for_step(plan, state.step), state.step, now, "resumed by user")
            # Time spent paused does not count: the step is observed for its full duration again.
            return resumed.model_copy(update={"paused_by_user": False, "step_started_at": now})
        return _enter_step(plan, state, state.step + 1, now, unavailable)  # approval given
    return state


def _with_gates(state: RolloutState, report: GateReport | None, now: float) -> RolloutState:
    if report is None:
        return state
    snapshots = [
        GateSnapshot(gate=r.gate, verdict=r.verdict.value, value=r.value, stable_value=r.stable_value, reason=r.reason)
        for r in report.results
    ]
    e_values = {
        r.gate: EValue(value=r.e_value, limit=r.e_limit, at=now)
        for r in report.results
        if r.e_value is not None and r.e_limit is not None
    }
    return state.model_copy(
        update={"last_gates": snapshots, "sequential": dict(report.evidence), "e_values": e_values}
    )


def decide(
    plan: Plan,
    spec: RolloutSpec,
    state: RolloutState,
    report: GateReport | None,
    now: float,
    command: Command | None = None,
    unavailable: frozenset[str] = frozenset(),
) -> Decision:
    """Pure: the next state and the routing it requires.

    `report` None = gates not evaluated; `unavailable` = versions with no ready pods (they never get
    traffic: a step that would route to one is not entered, the rollout holds with the reason).
    """
    state = _with_gates(state.model_copy(update={"ticks": state.ticks + 1}), report, now)
    if command is not None:
        state = _apply_command(plan, state, command, now, unavailable)
    if state.phase == Phase.PENDING:
        state = _enter_step(plan, state, 0, now, unavailable)
        return Decision(state, routing_for(plan, state), state.reason)
    if state.phase not in ACTIVE_PHASES:
        return Decision(state, routing_for(plan, state), state.reason)
    if state.apply_failures >= MAX_APPLY_FAILURES:
        reason = f"routing could not be applied {state.apply_failures} times in a row: {state.last_apply_error}"
        state = state.moved(Phase.FAILED, state.step, now, reason)
        return Decision(state, routing_for(plan, state), state.reason)
    judged = _judge(plan, spec, state, report, now, unavailable)
    refused = command is not None and state.reason.startswith("holding before")
    if refused and (judged.phase, judged.step) == (state.phase, state.step):
        # The person asked for something the pods do not allow: say so instead of the routine hold text.
        judged = judged.model_copy(update={"reason": f"{command} refused: {state.reason}"})
    return Decision(judged, routing_for(plan, judged), judged.reason)


def _judge(
    plan: Plan,
    spec: RolloutSpec,
    state: RolloutState,
    report: GateReport | None,
    now: float,
    unavailable: frozenset[str],
) -> RolloutState:
    verdict = Verdict.NO_DATA if report is None else report.verdict
    if report is not None and verdict == Verdict.FAIL:
        failed = state.failed_checks + 1
        why = report.reasons(Verdict.FAIL)
        if failed >= spec.rollback.failed_checks:
            return state.moved(Phase.ROLLED_BACK, state.step, now, f"gate failed: {why}")
        limit = spec.rollback.failed_checks
        return state.model_copy(update={"failed_checks": failed, "reason": f"failed check {failed} of {limit}: {why}"})
    if state.phase == Phase.PAUSED:
        return state  # a paused rollout keeps its traffic; only a gate failure moves it
    if verdict == Verdict.NO_DATA:
        why = "gates not evaluated" if report is None else report.reasons(Verdict.NO_DATA)
        since = state.missing_data_since if state.missing_data_since is not None else now
        held = now - since
        policy = spec.rollback
        if policy.on_missing_data == "rollback" and held >= policy.missing_data_timeout:
            reason = f"no data for {held:.0f}s (limit {policy.missing_data_timeout:g}s): {why}"
            return state.moved(Phase.ROLLED_BACK, state.step, now, reason)
        step = plan.steps[state.step]
        return state.model_copy(
            update={
                "missing_data_since": since,
                "reason": f"step {state.step + 1}/{len(plan.steps)}: {step.label}; holding, no data: {why}",
            }
        )
    state = state.model_copy(update={"missing_data_since": None})
    step = plan.steps[state.step]
    if verdict == Verdict.HOLD:  # e.g. a shared dependency is down: neither promote nor roll back
        why = "" if report is None else report.reasons(Verdict.HOLD)
        reason = f"step {state.step + 1}/{len(plan.steps)}: {step.label}; holding: {why}"
        return state.model_copy(update={"reason": reason})
    started = state.step_started_at if state.step_started_at is not None else now
    if now - started >= step.duration:
        return _enter_step(plan, state, state.step + 1, now, unavailable)
    remaining = step.duration - (now - started)
    return state.model_copy(
        update={"reason": f"step {state.step + 1}/{len(plan.steps)}: {step.label}; gates pass, {remaining:.0f}s left"}
    )
