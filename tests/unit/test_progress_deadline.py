"""The progress deadline: a rollout that cannot make progress fails at its deadline, traffic on the baseline.

Driven through the pure `decide()` with explicit `elapsed` (the runner's monotonic time between ticks).
"""

from __future__ import annotations

import pytest

from controller.analysis.gates import Verdict
from controller.engine.decide import PROGRESS_DEADLINE_REASON, Decision, decide
from controller.engine.phases import Command, Phase, RolloutState
from controller.plan import build_plan
from controller.spec import RolloutSpec
from tests.unit.engine_fixtures import report, spec

DEADLINE_YAML = """
service: shop
namespace: prod
versions: [{name: v1, weight: 100}, {name: v2, weight: 0}]
target: v2
steps:
  - {weight: 10, duration: 10s}
  - approval: {}
  - {weight: 50, duration: 10s}
gates: [{metric: error_rate, max: 2}]
schedule: {interval: 5s}
rollback: {on_missing_data: hold}
progress_deadline: 60s
"""


def _setup(text: str = DEADLINE_YAML) -> tuple[RolloutSpec, RolloutState]:
    s = spec(text)
    return s, RolloutState(rollout=s.rollout_name, spec_digest="d")


def _run(
    s: RolloutSpec,
    state: RolloutState,
    ticks: int,
    *,
    verdict: Verdict | None = Verdict.PASS,
    unavailable: frozenset[str] = frozenset(),
    start: float = 1000.0,
    every: float = 5.0,
    command: Command | None = None,
) -> tuple[RolloutState, Decision]:
    plan = build_plan(s)
    decision: Decision | None = None
    for i in range(ticks):
        gates = None if verdict is None else report(verdict)
        decision = decide(
            plan,
            s,
            state,
            gates,
            start + i * every,
            command if i == 0 else None,
            unavailable=unavailable,
            elapsed=every,
        )
        state = decision.state
    assert decision is not None
    return state, decision


def test_the_default_deadline_is_ten_minutes() -> None:
    minimal = spec("service: a\nversions: [{name: v1, weight: 1}, {name: v2, weight: 0}]\ntarget: v2\n")
    assert minimal.progress_deadline == 600.0


def test_new_pods_never_ready_fail_the_rollout_at_the_deadline_with_traffic_on_the_baseline() -> None:
    s, state = _setup()
    # 60 s deadline, 5 s ticks: the first tick is at elapsed 5 s; the 12th reaches 60 s.
    state, decision = _run(s, state, 11, unavailable=frozenset({"v2"}))
    assert state.phase == Phase.PENDING and "no ready pods for v2" in state.reason
    assert state.stalled_for == pytest.approx(55.0)
    state, decision = _run(s, state, 1, unavailable=frozenset({"v2"}), start=2000.0)
    assert state.phase == Phase.FAILED
    assert state.reason.startswith(PROGRESS_DEADLINE_REASON) and "no ready pods for v2" in state.reason
    assert dict(decision.routing.weights) == {"v1": 100, "v2": 0}
    assert state.history[-1].phase == Phase.FAILED


def test_pods_that_become_ready_before_the_deadline_let_the_rollout_go_on_and_reset_the_count() -> None:
    s, state = _setup()
    state, _ = _run(s, state, 10, unavailable=frozenset({"v2"}))
    state, _ = _run(s, state, 1, start=2000.0)
    assert state.phase == Phase.PROGRESSING and state.step == 0 and state.stalled_for == 0.0


def test_an_overdue_step_that_can_never_complete_fails_at_the_deadline() -> None:
    s, state = _setup()
    state, _ = _run(s, state, 1)  # enters the 10 % step
    assert state.phase == Phase.PROGRESSING
    # No data for ever, policy hold: the step's 10 s pass, then it is overdue; 60 s overdue fails it.
    state, _ = _run(s, state, 1, verdict=None, start=1100.0)
    assert state.phase == Phase.PROGRESSING and state.stalled_for == 0.0  # 5 s of 10: not yet overdue
    state, _ = _run(s, state, 11, verdict=None, start=1200.0)  # overdue for 55 s
    assert state.phase == Phase.PROGRESSING and "no data" in state.reason and state.stalled_for == 55.0
    state, decision = _run(s, state, 1, verdict=None, start=1400.0)
    assert state.phase == Phase.FAILED and state.reason.startswith(PROGRESS_DEADLINE_REASON)
    assert dict(decision.routing.weights) == {"v1": 100, "v2": 0}


def test_an_approval_wait_and_a_pause_by_a_person_never_count() -> None:
    s, state = _setup()
    state, _ = _run(s, state, 4)  # 10 % step for 10 s, then the approval step
    assert state.phase == Phase.PAUSED and state.step == 1
    state, _ = _run(s, state, 100, start=2000.0)  # 500 s waiting for approval
    assert state.phase == Phase.PAUSED and state.stalled_for == 0.0
    state, _ = _run(s, state, 1, start=3000.0, command=Command.RESUME)
    assert state.phase == Phase.PROGRESSING and state.step == 2
    state, _ = _run(s, state, 1, start=3100.0, command=Command.PAUSE)
    state, _ = _run(s, state, 100, verdict=None, start=3200.0)
    assert state.phase == Phase.PAUSED and state.paused_by_user and state.stalled_for == 0.0


def test_progress_resets_the_count() -> None:
    s, state = _setup()
    state, _ = _run(s, state, 1)
    state, _ = _run(s, state, 2, verdict=None, start=1100.0)
    state, _ = _run(s, state, 8, verdict=None, start=1200.0)  # overdue 40 s
    assert 0 < state.stalled_for < 60
    state, _ = _run(s, state, 1, start=1300.0)  # data returns: the step completes, approval step
    assert state.phase == Phase.PAUSED and state.stalled_for == 0.0


def test_the_deadline_is_validated_like_every_duration() -> None:
    from controller.spec_loader import SpecError, parse_spec_text

    for bad in ("0s", "-1m", "2d", "soon"):
        with pytest.raises(SpecError, match="progress_deadline"):
            parse_spec_text(DEADLINE_YAML.replace("progress_deadline: 60s", f"progress_deadline: {bad}"), "x.yaml")
