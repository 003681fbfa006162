"""Is a loaded state one the engine could have written for this plan? (pure)

A state that parses may still be damaged: a step index past the plan, a phase that does not fit
its step, negative counters, non-finite times, manual weights for unknown versions. Such a state
must never be acted on as if it were sound (it could switch the gates off or freeze a rollout); the
runner fails safe to the baseline instead and keeps the damaged state aside for inspection.
"""

from __future__ import annotations

import math

from controller.engine.phases import ACTIVE_PHASES, Phase, RolloutState
from controller.plan import Plan


class StateDamaged(ValueError):
    """A stored rollout state that cannot be read or does not fit its plan."""


_STEP_KINDS = {
    Phase.HEADER_TEST: ("header",),
    Phase.PROGRESSING: ("weight", "traffic"),
    Phase.PAUSED: ("header", "weight", "traffic", "approval"),
}


def _numbers_problem(state: RolloutState) -> str | None:
    times = {
        "step_started_at": state.step_started_at,
        "observed_at": state.observed_at,
        "missing_data_since": state.missing_data_since,
        "step_elapsed": state.step_elapsed,
        "missing_data_for": state.missing_data_for,
        "stalled_for": state.stalled_for,
    }
    for name, value in times.items():
        if value is not None and (not math.isfinite(value) or value < 0):
            return f"{name} is {value!r} (must be a finite number >= 0)"
    for name in ("ticks", "failed_checks", "apply_failures", "dropped_history"):
        if getattr(state, name) < 0:
            return f"{name} is negative"
    for gate, evidence in state.sequential.items():
        numbers = [*evidence.log_e, *evidence.log_restart]
        counts = [*evidence.new, *evidence.stable, *(v for pair in evidence.counters.values() for v in pair)]
        if not all(math.isfinite(x) for x in numbers) or not all(math.isfinite(x) and x >= 0 for x in counts):
            return f"the e-process of gate {gate!r} holds a non-finite or negative number"
        if evidence.crossed is not None and not (math.isfinite(evidence.crossed) and evidence.crossed > 0):
            return f"the e-process of gate {gate!r} crossed at {evidence.crossed!r} (must be a finite number > 0)"
    return None


def state_problem(plan: Plan, state: RolloutState) -> str | None:
    """Why `state` cannot belong to `plan`, or None when it is sound."""
    if state.rollout != plan.rollout:
        return f"state names rollout {state.rollout!r}, not {plan.rollout!r}"
    steps = len(plan.steps)
    if state.phase == Phase.PENDING and state.step != -1:
        return f"phase Pending with step index {state.step} (must be -1)"
    if state.phase in ACTIVE_PHASES:
        if not 0 <= state.step < steps:
            return f"phase {state.phase.value} at step index {state.step}, but the plan has {steps} steps"
        kind = plan.steps[state.step].kind
        if kind not in _STEP_KINDS[state.phase]:
            return f"phase {state.phase.value} does not fit step {state.step + 1}, a {kind} step"
        if state.phase == Phase.PAUSED and kind != "approval" and not state.paused_by_user:
            return f"paused at step {state.step + 1} ({kind}) without a user pause"
    elif not -1 <= state.step <= steps:
        return f"phase {state.phase.value} at step index {state.step}, but the plan has {steps} steps"
    problem = _numbers_problem(state)
    if problem is not None:
        return problem
    if state.override is not None:
        unknown = sorted(set(state.override) - set(plan.baseline.versions))
        if unknown:
            return f"manual weights name unknown versions {', '.join(unknown)}"
        if any(w < 0 for w in state.override.values()) or sum(state.override.values()) <= 0:
            return "manual weights must be >= 0 with a positive sum"
    return None
