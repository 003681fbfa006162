from __future__ import annotations

from controller.analysis.gates import Verdict
from controller.engine.decide import decide, routing_for
from controller.engine.phases import Command, Phase, RolloutState
from controller.plan import build_plan
from tests.unit.engine_fixtures import SPEC_YAML, report, spec

SPEC = spec()
PLAN = build_plan(SPEC)


def fresh() -> RolloutState:
    return RolloutState(rollout="shop", spec_digest="d")


def test_pending_enters_header_step_with_header_route_and_zero_weight() -> None:
    d = decide(PLAN, SPEC, fresh(), None, now=0)
    assert d.phase == Phase.HEADER_TEST and d.state.step == 0
    assert d.routing.weight_of("v2") == 0
    assert [(r.header, r.value, r.version) for r in d.routing.header_routes] == [("x-version", "v2", "v2")]


def test_step_advances_only_after_duration_with_passing_gates() -> None:
    s = decide(PLAN, SPEC, fresh(), None, now=0).state
    s = decide(PLAN, SPEC, s, report(Verdict.PASS), now=9.9).state
    assert s.step == 0
    s = decide(PLAN, SPEC, s, report(Verdict.PASS), now=10).state
    assert (s.phase, s.step) == (Phase.PROGRESSING, 1)
    assert routing_for(PLAN, s).weight_of("v2") == 10


def test_missing_data_never_promotes_then_rolls_back_after_timeout() -> None:
    s = decide(PLAN, SPEC, fresh(), None, now=0).state
    s = decide(PLAN, SPEC, s, report(Verdict.NO_DATA, "v2 had 3 requests"), now=50).state
    assert (s.phase, s.step) == (Phase.HEADER_TEST, 0)
    assert "holding, no data: v2 had 3 requests" in s.reason
    s = decide(PLAN, SPEC, s, report(Verdict.NO_DATA, "v2 had 3 requests"), now=79).state
    assert s.phase == Phase.HEADER_TEST
    d = decide(PLAN, SPEC, s, report(Verdict.NO_DATA, "v2 had 3 requests"), now=80)
    assert d.phase == Phase.ROLLED_BACK
    assert "no data for 30s" in d.state.reason
    assert d.routing == PLAN.baseline


def test_data_returning_resets_missing_data_clock() -> None:
    s = decide(PLAN, SPEC, fresh(), None, now=0).state
    s = decide(PLAN, SPEC, s, report(Verdict.NO_DATA), now=1).state
    s = decide(PLAN, SPEC, s, report(Verdict.PASS), now=5).state
    assert s.missing_data_since is None
    s = decide(PLAN, SPEC, s, report(Verdict.NO_DATA), now=6).state
    s = decide(PLAN, SPEC, s, report(Verdict.NO_DATA), now=35).state
    assert s.phase == Phase.HEADER_TEST


def test_hold_policy_holds_past_the_missing_data_timeout_until_the_progress_deadline() -> None:
    held_spec = spec(SPEC_HOLD)
    assert held_spec.progress_deadline == 600.0
    plan = build_plan(held_spec)
    s = decide(plan, held_spec, fresh(), None, now=0).state
    s = decide(plan, held_spec, s, report(Verdict.NO_DATA), now=1).state
    s = decide(plan, held_spec, s, report(Verdict.NO_DATA), now=500).state  # far past missing_data_timeout
    assert s.phase == Phase.HEADER_TEST
    d = decide(plan, held_spec, s, report(Verdict.NO_DATA), now=1200)  # overdue for more than 10 minutes
    assert d.phase == Phase.FAILED and d.state.reason.startswith("progress deadline (10m) exceeded")
    assert d.routing == plan.baseline


def test_gate_failure_rolls_back_at_once_with_reason() -> None:
    s = decide(PLAN, SPEC, fresh(), None, now=0).state
    d = decide(PLAN, SPEC, s, report(Verdict.FAIL, "error_rate of v2 is 20.00% > max 2.00%"), now=1)
    assert d.phase == Phase.ROLLED_BACK
    assert d.state.reason == "gate failed: error_rate of v2 is 20.00% > max 2.00%"
    assert d.routing == PLAN.baseline and not d.routing.header_routes


def test_approval_step_pauses_then_resume_continues_and_failure_still_rolls_back() -> None:
    s = decide(PLAN, SPEC, fresh(), None, now=0).state
    s = decide(PLAN, SPEC, s, report(Verdict.PASS), now=10).state
    s = decide(PLAN, SPEC, s, report(Verdict.PASS), now=20).state
    assert (s.phase, s.step) == (Phase.PAUSED, 2)
    assert routing_for(PLAN, s).weight_of("v2") == 10
    s = decide(PLAN, SPEC, s, report(Verdict.PASS), now=500).state
    assert s.phase == Phase.PAUSED
    resumed = decide(PLAN, SPEC, s, report(Verdict.PASS), now=501, command=Command.RESUME)
    assert (resumed.phase, resumed.state.step, resumed.routing.weight_of("v2")) == (Phase.PROGRESSING, 3, 50)
    failed = decide(PLAN, SPEC, s, report(Verdict.FAIL), now=502)
    assert failed.phase == Phase.ROLLED_BACK


def test_full_rollout_promotes_to_100() -> None:
    s = decide(PLAN, SPEC, fresh(), None, now=0).state
    for now in (10, 20):
        s = decide(PLAN, SPEC, s, report(Verdict.PASS), now=now).state
    s = decide(PLAN, SPEC, s, report(Verdict.PASS), now=21, command=Command.RESUME).state
    d = decide(PLAN, SPEC, s, report(Verdict.PASS), now=31)
    assert d.phase == Phase.PROMOTED
    assert d.routing == PLAN.promoted and d.routing.weight_of("v2") == 100
    assert [c.phase for c in d.state.history] == [
        Phase.HEADER_TEST, Phase.PROGRESSING, Phase.PAUSED, Phase.PROGRESSING, Phase.PROMOTED,
    ]
    again = decide(PLAN, SPEC, d.state, report(Verdict.FAIL), now=40)
    assert again.phase == Phase.PROMOTED


def test_user_commands_pause_resume_abort_promote() -> None:
    s = decide(PLAN, SPEC, fresh(), None, now=0).state
    paused = decide(PLAN, SPEC, s, report(Verdict.PASS), now=100, command=Command.PAUSE).state
    assert paused.phase == Phase.PAUSED and paused.step == 0
    resumed = decide(PLAN, SPEC, paused, report(Verdict.PASS), now=101, command=Command.RESUME).state
    assert (resumed.phase, resumed.step) == (Phase.HEADER_TEST, 0)
    assert decide(PLAN, SPEC, s, None, now=1, command=Command.ABORT).phase == Phase.ROLLED_BACK
    assert decide(PLAN, SPEC, s, None, now=1, command=Command.PROMOTE).routing == PLAN.promoted


SPEC_HOLD = SPEC_YAML.replace(
    "rollback: {missing_data_timeout: 30s}", "rollback: {on_missing_data: hold, missing_data_timeout: 30s}"
)


def test_version_without_ready_pods_never_gets_traffic() -> None:
    pending = decide(PLAN, SPEC, fresh(), None, now=0, unavailable=frozenset({"v2"}))
    assert pending.phase == Phase.PENDING and pending.routing == PLAN.baseline
    assert pending.state.reason == "holding before step 1/4: no ready pods for v2"
    s = decide(PLAN, SPEC, fresh(), None, now=0).state
    held = decide(PLAN, SPEC, s, report(Verdict.PASS), now=10, unavailable=frozenset({"v2"}))
    assert (held.phase, held.state.step) == (Phase.HEADER_TEST, 0)
    assert held.routing.weight_of("v2") == 0
    assert "no ready pods for v2" in held.state.reason
    moved = decide(PLAN, SPEC, held.state, report(Verdict.PASS), now=11)
    assert moved.state.step == 1 and moved.routing.weight_of("v2") == 10
    refused = decide(PLAN, SPEC, s, None, now=1, command=Command.PROMOTE, unavailable=frozenset({"v2"}))
    assert refused.phase == Phase.HEADER_TEST and "before promotion" in refused.state.reason
    aborted = decide(PLAN, SPEC, s, None, now=1, command=Command.ABORT, unavailable=frozenset({"v1", "v2"}))
    assert aborted.phase == Phase.ROLLED_BACK  # rolling back is always allowed


def test_durable_state_ignores_per_tick_details() -> None:
    s = decide(PLAN, SPEC, fresh(), None, now=0).state
    later = decide(PLAN, SPEC, s, report(Verdict.PASS), now=3).state
    assert later.ticks != s.ticks and later.reason != s.reason
    assert later.durable() == s.durable()


def test_hold_neither_promotes_nor_rolls_back_and_is_not_missing_data() -> None:
    why = "error_rate of v2 is 30.00% > max 2.00%, but stable (v1) is 25.00% too (a shared dependency?)"
    s = decide(PLAN, SPEC, fresh(), None, now=0).state
    s = decide(PLAN, SPEC, s, report(Verdict.NO_DATA), now=1).state
    assert s.missing_data_since == 1
    held = decide(PLAN, SPEC, s, report(Verdict.HOLD, why), now=10)
    assert (held.phase, held.state.step) == (Phase.HEADER_TEST, 0)  # the step's 10 s are over, yet no promotion
    assert held.state.reason == f"step 1/4: header x-version: v2; holding: {why}"
    assert held.state.missing_data_since is None
    assert held.routing == routing_for(PLAN, s)
    s = held.state
    for now in (100, 300, 600):  # far beyond missing_data_timeout: still holding, never rolled back
        s = decide(PLAN, SPEC, s, report(Verdict.HOLD, why), now=now).state
        assert (s.phase, s.step) == (Phase.HEADER_TEST, 0)
    assert decide(PLAN, SPEC, s, report(Verdict.PASS), now=601).state.step == 1  # cleared: the step completes
    assert decide(PLAN, SPEC, s, report(Verdict.FAIL), now=601).phase == Phase.ROLLED_BACK
    # Holding for longer than the progress deadline (10 minutes by default) fails safe to the baseline.
    stuck = decide(PLAN, SPEC, s, report(Verdict.HOLD, why), now=700)
    assert stuck.phase == Phase.FAILED and stuck.routing == PLAN.baseline
    assert stuck.state.reason.startswith("progress deadline (10m) exceeded") and why in stuck.state.reason


def test_failed_checks_limit_rolls_back_only_at_the_nth_failure_and_never_advances_on_one() -> None:
    tolerant = spec(SPEC_YAML.replace("rollback: {missing_data_timeout: 30s}",
                                      "rollback: {missing_data_timeout: 30s, failed_checks: 3}"))
    plan = build_plan(tolerant)
    s = decide(plan, tolerant, fresh(), None, now=0).state
    s = decide(plan, tolerant, s, report(Verdict.FAIL, "error_rate of v2 is 5.00% > max 2.00%"), now=20).state
    assert (s.phase, s.step, s.failed_checks) == (Phase.HEADER_TEST, 0, 1)  # duration is over, but it failed
    assert s.reason == "failed check 1 of 3: error_rate of v2 is 5.00% > max 2.00%"
    s = decide(plan, tolerant, s, report(Verdict.PASS), now=21).state
    assert (s.step, s.failed_checks) == (1, 1)  # Flagger-like: the count is per rollout, not consecutive
    s = decide(plan, tolerant, s, report(Verdict.FAIL), now=22).state
    assert s.phase == Phase.PROGRESSING and s.failed_checks == 2
    rolled = decide(plan, tolerant, s, report(Verdict.FAIL, "again"), now=23)
    assert rolled.phase == Phase.ROLLED_BACK and rolled.state.reason == "gate failed: again"
