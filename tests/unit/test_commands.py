"""Every command has a defined outcome: applied, or refused with a reason (pure engine rules)."""

from __future__ import annotations

import pytest

from controller.analysis.gates import Verdict
from controller.engine.commands import CommandError, CommandRequest
from controller.engine.decide import decide, routing_for
from controller.engine.phases import Command, Phase, RolloutState
from controller.plan import build_plan
from tests.unit.engine_fixtures import NO_APPROVAL_YAML, report, spec

SPEC = spec(NO_APPROVAL_YAML)
PLAN = build_plan(SPEC)
THREE = spec(
    NO_APPROVAL_YAML.replace(
        "versions: [{name: v1, weight: 100}, {name: v2, weight: 0}]",
        "versions: [{name: v1, weight: 50}, {name: v2, weight: 50}, {name: v3, weight: 0}]",
    ).replace("target: v2", "target: v3").replace("{header: {value: v2}", "{header: {value: v3}")
)
THREE_PLAN = build_plan(THREE)


def fresh() -> RolloutState:
    return RolloutState(rollout="shop", spec_digest="d")


def promoted(plan=PLAN, rollout_spec=SPEC) -> RolloutState:  # type: ignore[no-untyped-def]
    s = decide(plan, rollout_spec, fresh(), None, now=0).state
    return decide(plan, rollout_spec, s, None, now=1, command=Command.PROMOTE).state


def request(command: Command, **kw: object) -> CommandRequest:
    return CommandRequest(id="c1", command=command, **kw)  # type: ignore[arg-type]


def test_abort_after_promotion_reverts_to_the_baseline_and_records_it() -> None:
    s = promoted()
    assert s.phase == Phase.PROMOTED and routing_for(PLAN, s) == PLAN.promoted
    d = decide(PLAN, SPEC, s, None, now=10, command=request(Command.ABORT))
    assert d.phase == Phase.ROLLED_BACK and d.routing == PLAN.baseline
    assert d.state.last_command is not None and d.state.last_command.applied
    assert d.state.last_command.id == "c1" and "aborted after promotion" in d.state.last_command.reason
    assert d.state.history[-1].phase == Phase.ROLLED_BACK and "after promotion" in d.state.history[-1].reason
    later = decide(PLAN, SPEC, d.state, None, now=20)
    assert later.routing == PLAN.baseline  # and it stays there


@pytest.mark.parametrize("command", [Command.PROMOTE, Command.RESUME, Command.PAUSE])
def test_commands_on_a_rolled_back_rollout_are_refused_with_a_reason(command: Command) -> None:
    s = decide(PLAN, SPEC, fresh(), None, now=0).state
    s = decide(PLAN, SPEC, s, report(Verdict.FAIL, "error_rate of v2 is 9%"), now=1).state
    assert s.phase == Phase.ROLLED_BACK
    d = decide(PLAN, SPEC, s, None, now=2, command=request(command))
    assert d.phase == Phase.ROLLED_BACK and d.routing == PLAN.baseline
    outcome = d.state.last_command
    assert outcome is not None and not outcome.applied and outcome.reason
    assert outcome.command == command.value


def test_set_weights_after_promotion_is_an_override_kept_until_a_new_rollout() -> None:
    s = promoted()
    d = decide(PLAN, SPEC, s, None, now=10, command=request(Command.SET_WEIGHTS, weights={"v1": 100, "v2": 0}))
    assert d.state.last_command is not None and d.state.last_command.applied
    assert d.routing.weight_of("v1") == 100 and d.routing.weight_of("v2") == 0
    for now in (15, 20, 1_000):  # the next ticks keep it
        d = decide(PLAN, SPEC, d.state, None, now=now)
        assert d.routing.weight_of("v1") == 100
    assert d.phase == Phase.PROMOTED and d.state.override == {"v1": 100, "v2": 0}


def test_set_weights_changes_only_the_versions_named() -> None:
    s = decide(THREE_PLAN, THREE, fresh(), None, now=0).state
    s = decide(THREE_PLAN, THREE, s, None, now=1, command=Command.ABORT).state  # back on 50/50/0
    d = decide(THREE_PLAN, THREE, s, None, now=2, command=request(Command.SET_WEIGHTS, weights={"v3": 50}))
    assert d.state.override == {"v1": 50, "v2": 50, "v3": 50}
    assert dict(d.routing.weights) == {"v1": 34, "v2": 33, "v3": 33}
    assert "v3=50 (33%)" in (d.state.last_command.reason if d.state.last_command else "")


def test_set_weights_refuses_unknown_versions_zero_sums_and_versions_without_pods() -> None:
    s = promoted()
    unknown = decide(PLAN, SPEC, s, None, now=2, command=request(Command.SET_WEIGHTS, weights={"v9": 5}))
    assert unknown.state.last_command is not None and not unknown.state.last_command.applied
    assert "unknown version" in unknown.state.last_command.reason and unknown.routing == PLAN.promoted
    zero = decide(PLAN, SPEC, s, None, now=2, command=request(Command.SET_WEIGHTS, weights={"v2": 0}))
    assert zero.state.last_command is not None and "all weights would be 0" in zero.state.last_command.reason
    down = decide(PLAN, SPEC, s, None, now=2, command=request(Command.SET_WEIGHTS, weights={"v1": 100}),
                  unavailable=frozenset({"v1"}))  # fmt: skip
    assert down.state.last_command is not None and "no ready pods for v1" in down.state.last_command.reason
    assert down.routing == PLAN.promoted


def test_set_weights_during_a_rollout_needs_force_and_then_pauses_it_until_resume() -> None:
    s = decide(PLAN, SPEC, fresh(), None, now=0).state
    nudge = request(Command.SET_WEIGHTS, weights={"v2": 5})
    refused = decide(PLAN, SPEC, s, report(Verdict.PASS), now=1, command=nudge)
    assert refused.state.last_command is not None and "--force" in refused.state.last_command.reason
    assert refused.routing == PLAN.steps[0].routing
    forced = decide(PLAN, SPEC, s, report(Verdict.PASS), now=1,
                    command=request(Command.SET_WEIGHTS, weights={"v2": 100}, force=True))  # fmt: skip
    assert forced.phase == Phase.PAUSED and forced.state.paused_by_user
    assert forced.routing.weight_of("v2") == 50  # v1=100, v2=100: the others keep their weight
    held = decide(PLAN, SPEC, forced.state, report(Verdict.PASS), now=500)
    assert held.phase == Phase.PAUSED and held.routing.weight_of("v2") == 50
    resumed = decide(PLAN, SPEC, held.state, report(Verdict.PASS), now=501, command=request(Command.RESUME))
    assert resumed.state.override is None and resumed.routing == PLAN.steps[0].routing


def test_pause_twice_and_resume_when_not_paused_are_refused() -> None:
    s = decide(PLAN, SPEC, fresh(), None, now=0).state
    paused = decide(PLAN, SPEC, s, report(Verdict.PASS), now=1, command=request(Command.PAUSE)).state
    again = decide(PLAN, SPEC, paused, report(Verdict.PASS), now=2, command=request(Command.PAUSE)).state
    assert again.last_command is not None and not again.last_command.applied and "already paused" in again.reason
    running = decide(PLAN, SPEC, s, report(Verdict.PASS), now=2, command=request(Command.RESUME)).state
    assert running.last_command is not None and not running.last_command.applied
    assert "not paused" in running.last_command.reason


def test_promote_twice_is_refused_and_promote_drops_a_manual_override() -> None:
    s = promoted()
    twice = decide(PLAN, SPEC, s, None, now=2, command=request(Command.PROMOTE)).state
    assert twice.last_command is not None and not twice.last_command.applied
    overridden = decide(PLAN, SPEC, s, None, now=3, command=request(Command.SET_WEIGHTS, weights={"v1": 1})).state
    restored = decide(PLAN, SPEC, overridden, None, now=4, command=request(Command.PROMOTE))
    assert restored.state.last_command is not None and restored.state.last_command.applied
    assert restored.routing == PLAN.promoted and restored.state.override is None


@pytest.mark.parametrize(
    "raw",
    [
        "launch",
        "{not json",
        '{"command": "set-weights"}',
        '{"command": "set-weights", "weights": {"../../x": 5}}',
        '{"command": "set-weights", "weights": {"v1": -1}}',
        '{"command": "set-weights", "weights": {"v1": "5"}}',
        '{"command": "abort", "rm": "-rf"}',
        "x" * 5000,
    ],
)
def test_unreadable_commands_are_refused_never_acted_on(raw: str) -> None:
    with pytest.raises(CommandError):
        CommandRequest.decode(raw)


def test_commands_round_trip_and_bare_words_are_still_understood() -> None:
    original = CommandRequest(id="a-1", command=Command.SET_WEIGHTS, weights={"v1": 50, "v3": 50}, force=True)
    assert CommandRequest.decode(original.encode()) == original
    assert CommandRequest.decode(" Abort ".lower()).command == Command.ABORT
