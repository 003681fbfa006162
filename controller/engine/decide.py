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
- a step's time counts only while its routing is confirmed in place (`state.unconfirmed` is None): the
  runner passes `elapsed`, its own monotonic time since its previous tick of this rollout, so replicas'
  wall clocks never shorten or stretch a step; without `elapsed` (tests) the wall clock `now` is used;
- routing that could not be applied MAX_APPLY_FAILURES ticks in a row fails the rollout
  (traffic: baseline, retried every tick); a promotion that is never confirmed fails the same way;
- progress deadline: time without progress (still Pending because a version has no ready pods, routing not
  confirmed, or a step overdue: its duration passed but it cannot complete) is counted in `stalled_for`; at
  the spec's `progress_deadline` the rollout fails, traffic on the baseline. Approval waits and pauses by a
  person never count, and any progress starts the count afresh;
- every command gets an outcome (`state.last_command`): applied, or refused with the reason (see commands);
- terminal phases change only by a person's command (a new spec digest starts a new rollout, see runner);
- hooks (controller.hooks): their answers are an input like the gate report. A step with `pre-step` hooks, and
  the promotion with `confirm-promotion` hooks, is entered only once each hook answered 2xx (a pass is kept in
  `hooks_passed` until the step is entered); until then the rollout holds with the hook's reason and
  `hook_wait` names the point, so the runner calls those hooks and decides again in the same tick. A failing
  `step-gate` answer is a failed check (rollback.failed_checks); a step-gate that was not answered (no time
  left in the tick) keeps its step from completing. A person's `promote` skips confirm-promotion hooks.
"""

from __future__ import annotations

from dataclasses import dataclass

from controller.analysis.gates import GateReport, Verdict
from controller.engine.commands import (
    CommandRequest,
    as_request,
    describe_weights,
    edited_weights,
    outcome,
    override_routing,
    set_weights_refusal,
)
from controller.engine.phases import ACTIVE_PHASES, Command, EValue, GateSnapshot, Phase, RolloutState
from controller.engine.routing_model import DesiredRouting
from controller.hooks.results import (
    CONFIRM_PROMOTION,
    HookAnswers,
    HookPoint,
    boundary_hooks,
    hooks_at,
    step_gate_hooks,
)
from controller.plan import Plan
from controller.spec import RolloutSpec
from controller.spec_rules import format_seconds

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
    """The routing that a state stands for: one of the plan's routings, or a person's manual override of one."""
    if state.phase == Phase.PROMOTED:
        base = plan.promoted
    elif state.phase in (Phase.PENDING, Phase.ROLLED_BACK, Phase.FAILED) or state.step < 0:
        base = plan.baseline
    else:
        base = plan.steps[min(state.step, len(plan.steps) - 1)].routing
    if state.override and sum(state.override.values()) > 0:
        return override_routing(base, state.override)
    return base


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
    plan: Plan,
    spec: RolloutSpec,
    state: RolloutState,
    index: int,
    now: float,
    unavailable: frozenset[str] = frozenset(),
    hooks: HookAnswers | None = None,
    skip_hooks: bool = False,
) -> RolloutState:
    routing = plan.promoted if index >= len(plan.steps) else plan.steps[index].routing
    where = "promotion" if index >= len(plan.steps) else f"step {index + 1}/{len(plan.steps)}"
    missing = sorted(_needs_pods(routing) & unavailable)
    if missing:  # never send traffic to a version without ready pods: hold where we are
        pods = ", ".join(missing)
        return state.model_copy(update={"reason": f"holding before {where}: no ready pods for {pods}"})
    if not skip_hooks:
        point = HookPoint(CONFIRM_PROMOTION) if index >= len(plan.steps) else HookPoint("pre-step", index + 1)
        state, waiting = boundary_hooks(spec, state, point, hooks)
        if waiting:
            return state.model_copy(update={"reason": f"holding before {where}: {waiting}", "hook_wait": point.key})
    state = state.model_copy(update={"hooks_passed": []})
    if index >= len(plan.steps):
        return state.moved(Phase.PROMOTED, len(plan.steps), now, f"all steps passed: {plan.target} promoted")
    step = plan.steps[index]
    reason = f"step {index + 1}/{len(plan.steps)}: {step.label}"
    if step.kind == "approval":
        reason = f"step {index + 1}/{len(plan.steps)}: waiting for manual approval"
    return state.moved(_phase_for_step(plan, index), index, now, reason)


def _apply_command(
    plan: Plan,
    spec: RolloutSpec,
    state: RolloutState,
    request: CommandRequest,
    now: float,
    unavailable: frozenset[str],
    hooks: HookAnswers | None,
) -> RolloutState:
    """The state after `request`, with its outcome recorded in `last_command` (applied or refused, and why)."""
    result, reason = _command_result(plan, spec, state, request, now, unavailable, hooks)
    applied = result is not None
    if result is None:
        result = state
        if request.command == Command.RESUME and state.phase == Phase.PAUSED and not state.paused_by_user:
            # An approval refused because the next step's hooks hold: say which hooks the runner must call.
            held = _enter_step(plan, spec, state, state.step + 1, now, unavailable, hooks)
            result = state.model_copy(update={"hook_wait": held.hook_wait, "hooks_passed": held.hooks_passed})
    return result.model_copy(update={"last_command": outcome(request, applied, reason, now)})


def _command_result(
    plan: Plan,
    spec: RolloutSpec,
    state: RolloutState,
    request: CommandRequest,
    now: float,
    unavailable: frozenset[str],
    hooks: HookAnswers | None,
) -> tuple[RolloutState | None, str]:
    """(new state, reason) when applied; (None, why not) when refused."""
    command, phase = request.command, state.phase
    if command == Command.SET_WEIGHTS:
        base = routing_for(plan, state.model_copy(update={"override": None}))
        refusal = set_weights_refusal(plan, state, base, request, unavailable)
        if refusal is not None:
            return None, refusal
        weights = edited_weights(plan, state, base, request)
        reason = f"manual weights {describe_weights(weights)} set by user"
        changed = state.model_copy(update={"override": weights, "reason": reason})
        if phase in ACTIVE_PHASES and not state.paused_by_user:
            changed = changed.moved(Phase.PAUSED, state.step, now, reason).model_copy(update={"paused_by_user": True})
        return changed, reason
    if phase == Phase.PENDING and command != Command.ABORT:
        return None, "the rollout has not started yet"
    if command == Command.ABORT:
        return _abort(plan, state, now)
    if command == Command.PROMOTE:
        if phase == Phase.PROMOTED:
            if state.override:
                return state.model_copy(update={"override": None, "reason": "promoted routing restored by user"}), (
                    "manual weights dropped: promoted routing restored"
                )
            return None, f"already promoted ({plan.target} serves all traffic)"
        if state.terminal:
            return None, (
                f"the rollout is {phase.value} ({state.reason}): promoting would send all traffic to {plan.target}; "
                "change the spec to start a new rollout"
            )
        # A person's promote is an explicit override: confirm-promotion hooks are skipped, and the outcome says so.
        promoted = _enter_step(plan, spec, state, len(plan.steps), now, unavailable, skip_hooks=True)
        if promoted.phase != Phase.PROMOTED:
            return None, promoted.reason
        skipped = [h.name for h in hooks_at(spec, HookPoint(CONFIRM_PROMOTION))]
        said = "promoted by user" + (f" (confirm-promotion hooks skipped: {', '.join(skipped)})" if skipped else "")
        return promoted.model_copy(update={"reason": said, "override": None}), said
    if state.terminal:
        return None, f"the rollout is {phase.value}: nothing to {command.value}"
    if command == Command.PAUSE:
        if phase == Phase.PAUSED:
            return None, "already paused" if state.paused_by_user else "already waiting for approval (ramp resume)"
        paused = state.moved(Phase.PAUSED, state.step, now, "paused by user")
        return paused.model_copy(update={"paused_by_user": True}), "paused by user"
    if phase != Phase.PAUSED:  # RESUME
        return None, f"not paused (the rollout is {phase.value})"
    if state.paused_by_user:
        resumed = state.moved(_phase_for_step(plan, state.step), state.step, now, "resumed by user")
        # Time spent paused does not count: the step is observed for its full duration again.
        update = {"paused_by_user": False, "step_started_at": now, "step_elapsed": 0.0, "override": None}
        return resumed.model_copy(update=update), "resumed by user" + (
            "; manual weights dropped" if state.override else ""
        )
    entered = _enter_step(plan, spec, state, state.step + 1, now, unavailable, hooks)  # approval given
    if entered.step == state.step:
        return None, entered.reason
    return entered, "approved by user"


def _abort(plan: Plan, state: RolloutState, now: float) -> tuple[RolloutState | None, str]:
    baseline = plan.baseline.describe()
    if state.phase == Phase.PROMOTED:
        reason = f"aborted after promotion by user: traffic back to the baseline ({baseline})"
    elif state.terminal:
        if not state.override:
            return None, f"already at the baseline ({state.phase.value})"
        cleared = state.model_copy(update={"override": None, "reason": f"baseline restored by user ({baseline})"})
        return cleared, "manual weights dropped: baseline restored"
    else:
        reason = "aborted by user"
    moved = state.moved(Phase.ROLLED_BACK, state.step, now, reason)
    return moved.model_copy(update={"override": None, "paused_by_user": False}), reason


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
    return state.model_copy(update={"last_gates": snapshots, "sequential": dict(report.evidence), "e_values": e_values})


def decide(
    plan: Plan,
    spec: RolloutSpec,
    state: RolloutState,
    report: GateReport | None,
    now: float,
    command: Command | CommandRequest | None = None,
    unavailable: frozenset[str] = frozenset(),
    elapsed: float | None = None,
    hooks: HookAnswers | None = None,
) -> Decision:
    """Pure: the next state and the routing it requires.

    `report` None = gates not evaluated; `unavailable` = versions with no ready pods (they never get
    traffic: a step that would route to one is not entered, the rollout holds with the reason);
    `elapsed` = seconds since the previous tick of this rollout (monotonic; see the module docstring);
    `hooks` = the hook answers of this tick by point (None: no hook called).
    """
    if elapsed is None:
        elapsed = 0.0 if state.observed_at is None else now - state.observed_at
    elapsed = max(0.0, elapsed)
    observed = 0.0 if state.unconfirmed is not None else elapsed  # time with the routing confirmed in place
    update = {"ticks": state.ticks + 1, "observed_at": now, "hook_wait": None}
    state = _with_gates(state.model_copy(update=update), report, now)
    if command is not None:
        state = _apply_command(plan, spec, state, as_request(command), now, unavailable, hooks)
        if state.phase not in (Phase.PENDING, *ACTIVE_PHASES) or state.paused_by_user:
            observed = 0.0
    if state.phase == Phase.PENDING:
        first = _enter_step(plan, spec, state, 0, now, unavailable, hooks)
        entered = _progress_deadline(plan, spec, state, first, elapsed, now)
        return Decision(entered, routing_for(plan, entered), entered.reason)
    if state.apply_failures >= MAX_APPLY_FAILURES and state.phase in (*ACTIVE_PHASES, Phase.PROMOTED):
        reason = (
            f"routing could not be applied {state.apply_failures} times in a row, traffic sent to the baseline: "
            f"{state.last_apply_error}"
        )
        state = state.moved(Phase.FAILED, state.step, now, reason).model_copy(update={"override": None})
        return Decision(state, routing_for(plan, state), state.reason)
    if state.phase not in ACTIVE_PHASES:
        return Decision(state, routing_for(plan, state), state.reason)
    judged = _progress_deadline(
        plan, spec, state, _judge(plan, spec, state, report, now, unavailable, elapsed, observed, hooks), elapsed, now
    )
    refused = state.last_command if command is not None else None
    if refused is not None and not refused.applied and (judged.phase, judged.step) == (state.phase, state.step):
        # Say what became of the person's command rather than the routine text.
        judged = judged.model_copy(update={"reason": f"{refused.command} refused: {refused.reason}"})
    return Decision(judged, routing_for(plan, judged), judged.reason)


def _judge(
    plan: Plan,
    spec: RolloutSpec,
    state: RolloutState,
    report: GateReport | None,
    now: float,
    unavailable: frozenset[str],
    elapsed: float,
    observed: float,
    hooks: HookAnswers | None,
) -> RolloutState:
    verdict = Verdict.NO_DATA if report is None else report.verdict
    if state.phase != Phase.PAUSED:
        state = state.model_copy(update={"step_elapsed": state.step_elapsed + observed})
    hook_failed, hook_unanswered = step_gate_hooks(spec, state, hooks)
    gate_failed = report is not None and verdict == Verdict.FAIL
    if gate_failed or hook_failed:  # one failed check per tick, whatever failed in it
        failed = state.failed_checks + 1
        why = "; ".join(w for w in (report.reasons(Verdict.FAIL) if report and gate_failed else "", hook_failed) if w)
        if failed >= spec.rollback.failed_checks:
            return state.moved(Phase.ROLLED_BACK, state.step, now, f"gate failed: {why}")
        limit = spec.rollback.failed_checks
        return state.model_copy(update={"failed_checks": failed, "reason": f"failed check {failed} of {limit}: {why}"})
    if state.phase == Phase.PAUSED:
        return state  # a paused rollout keeps its traffic; only a gate failure moves it
    step = plan.steps[state.step]
    where = f"step {state.step + 1}/{len(plan.steps)}: {step.label}"
    if verdict == Verdict.NO_DATA:
        why = "gates not evaluated" if report is None else report.reasons(Verdict.NO_DATA)
        first = state.missing_data_since is None
        held = 0.0 if first else state.missing_data_for + elapsed
        policy = spec.rollback
        if policy.on_missing_data == "rollback" and held >= policy.missing_data_timeout:
            reason = f"no data for {held:.0f}s (limit {policy.missing_data_timeout:g}s): {why}"
            return state.moved(Phase.ROLLED_BACK, state.step, now, reason)
        return state.model_copy(
            update={
                "missing_data_since": now if first else state.missing_data_since,
                "missing_data_for": held,
                "reason": f"{where}; holding, no data: {why}",
            }
        )
    state = state.model_copy(update={"missing_data_since": None, "missing_data_for": 0.0})
    if verdict == Verdict.HOLD:  # e.g. a shared dependency is down: neither promote nor roll back
        why = "" if report is None else report.reasons(Verdict.HOLD)
        return state.model_copy(update={"reason": f"{where}; holding: {why}"})
    if state.unconfirmed is not None:
        reason = f"{where}; holding: routing not confirmed by the data plane: {state.unconfirmed}"
        return state.model_copy(update={"reason": reason})
    if state.step_elapsed + 1e-6 >= step.duration:
        if hook_unanswered:
            return state.model_copy(update={"reason": f"{where}; holding: {hook_unanswered}"})
        return _enter_step(plan, spec, state, state.step + 1, now, unavailable, hooks)
    remaining = step.duration - state.step_elapsed
    return state.model_copy(update={"reason": f"{where}; gates pass, {remaining:.0f}s left"})


PROGRESS_DEADLINE_REASON = "progress deadline"  # how a failure for the progress deadline starts its reason
_MAKING_PROGRESS = frozenset({Phase.PENDING, Phase.HEADER_TEST, Phase.PROGRESSING})


def _stalled(plan: Plan, state: RolloutState) -> bool:
    """No progress possible now: still Pending (a version step 1 needs has no ready pods), routing not confirmed,
    or the step is overdue (its duration passed, yet it did not complete: no data, holding, or no ready pods for
    the next step)."""
    if state.phase == Phase.PENDING:
        return True
    if state.unconfirmed is not None:
        return True
    return state.step_elapsed + 1e-6 >= plan.steps[state.step].duration


def _progress_deadline(
    plan: Plan, spec: RolloutSpec, before: RolloutState, after: RolloutState, elapsed: float, now: float
) -> RolloutState:
    """Count time without progress (`stalled_for`) and fail the rollout, traffic on the baseline, at the spec's
    progress_deadline. Approval waits and pauses by a person never count; any progress starts the count afresh."""
    moved = (after.phase, after.step) != (before.phase, before.step)
    if moved or after.phase not in _MAKING_PROGRESS or after.paused_by_user or not _stalled(plan, after):
        return after if after.stalled_for == 0.0 else after.model_copy(update={"stalled_for": 0.0})
    stalled = after.stalled_for + elapsed
    limit = spec.progress_deadline
    if stalled + 1e-6 < limit:
        return after.model_copy(update={"stalled_for": stalled})
    reason = (
        f"{PROGRESS_DEADLINE_REASON} ({format_seconds(limit)}) exceeded after {stalled:.0f}s without progress, "
        f"traffic sent to the baseline: {after.reason}"
    )
    failed = after.moved(Phase.FAILED, after.step, now, reason)
    return failed.model_copy(update={"override": None, "stalled_for": stalled})
