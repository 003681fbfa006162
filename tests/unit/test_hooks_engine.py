"""Hooks in the pure engine: their answers are inputs to `decide`, like gate reports.

pre-step holds before its step until every hook there answered 2xx (a pass is remembered), step-gate failures
are failed checks, confirm-promotion holds the promotion, the progress deadline fails a hook that never allows,
and a person's commands still work while a hook holds."""

from __future__ import annotations

from collections.abc import Sequence

from controller.analysis.gates import Verdict
from controller.engine.decide import PROGRESS_DEADLINE_REASON, Decision, decide
from controller.engine.phases import Command, Phase, RolloutState
from controller.hooks.results import HookAnswer, HookAnswers, HookPoint
from controller.plan import build_plan
from controller.spec import RolloutSpec
from tests.unit.engine_fixtures import report, spec

BASE = """
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
rollback: {failed_checks: 2}
progress_deadline: 60s
"""

PRE_STEP_1 = HookPoint("pre-step", 1)
PRE_STEP_3 = HookPoint("pre-step", 3)
GATE_1 = HookPoint("step-gate", 1)
CONFIRM = HookPoint("confirm-promotion")


def with_hooks(hooks: str) -> RolloutSpec:
    return spec(BASE + "hooks:\n" + hooks)


def ok(name: str) -> HookAnswer:
    return HookAnswer(name, True, "HTTP 200", 1, 200)


def no(name: str, reason: str = "HTTP 503") -> HookAnswer:
    return HookAnswer(name, False, reason, 3, 503)


def unanswered(name: str) -> HookAnswer:
    return HookAnswer(name, None, "not answered before the tick's deadline")


class Driver:
    """Ticks `decide` every 5 s with passing gates unless told otherwise."""

    def __init__(self, s: RolloutSpec) -> None:
        self.spec, self.plan = s, build_plan(s)
        self.state = RolloutState(rollout=s.rollout_name, spec_digest="d")
        self.now = 1000.0

    def tick(
        self,
        hooks: HookAnswers | None = None,
        verdict: Verdict = Verdict.PASS,
        command: Command | None = None,
    ) -> Decision:
        decision = decide(self.plan, self.spec, self.state, report(verdict), self.now, command, elapsed=5.0,
                          hooks=hooks)  # fmt: skip
        self.state = decision.state
        self.now += 5
        return decision

    def ticks(self, n: int, **kwargs: object) -> Decision:
        decision = None
        for _ in range(n):
            decision = self.tick(**kwargs)  # type: ignore[arg-type]
        assert decision is not None
        return decision


def answers(point: HookPoint, *items: HookAnswer) -> dict[HookPoint, Sequence[HookAnswer]]:
    return {point: list(items)}


def test_pre_step_holds_the_first_step_until_the_hook_answers_2xx() -> None:
    d = Driver(with_hooks("  - {name: acceptance, type: pre-step, url: 'http://t/a', steps: [1]}\n"))
    held = d.tick()
    assert held.phase == Phase.PENDING and held.state.hook_wait == "pre-step:1"
    assert held.state.reason == "holding before step 1/3: hook acceptance: not called yet"
    assert held.routing == d.plan.baseline
    refused = d.tick(answers(PRE_STEP_1, no("acceptance")))
    assert (
        refused.phase == Phase.PENDING and refused.state.reason == "holding before step 1/3: hook acceptance: HTTP 503"
    )
    entered = d.tick(answers(PRE_STEP_1, ok("acceptance")))
    assert entered.phase == Phase.PROGRESSING and entered.state.step == 0 and entered.state.hook_wait is None
    assert entered.routing == d.plan.steps[0].routing and entered.state.hooks_passed == []


def test_pre_step_is_wanted_only_when_its_step_is_due_and_a_pass_is_remembered() -> None:
    hooks = (
        "  - {name: load, type: pre-step, url: 'http://t/l', steps: [3]}\n"
        "  - {name: tests, type: pre-step, url: 'http://t/t', steps: [3]}\n"
    )
    d = Driver(with_hooks(hooks))
    d.tick()  # step 1 (no hook there)
    running = d.tick()
    assert running.state.step == 0 and running.state.hook_wait is None  # step 1 not yet over: nothing to call
    d.tick()  # 10 s passed: approval step (no hook: steps: [3])
    assert d.state.phase == Phase.PAUSED and d.state.hook_wait is None
    resumed = d.tick(answers(PRE_STEP_3, ok("load"), no("tests", "HTTP 500")), command=Command.RESUME)
    assert resumed.phase == Phase.PAUSED and resumed.state.step == 1
    assert resumed.state.last_command is not None and not resumed.state.last_command.applied
    assert resumed.state.reason == "resume refused: holding before step 3/3: hook tests: HTTP 500"
    assert resumed.state.hook_wait == "pre-step:3" and resumed.state.hooks_passed == ["pre-step:3/load"]
    again = d.tick(answers(PRE_STEP_3, ok("tests")), command=Command.RESUME)  # load is not asked again
    assert again.phase == Phase.PROGRESSING and again.state.step == 2
    assert again.state.last_command is not None and again.state.last_command.applied


def test_a_step_gate_failure_is_a_failed_check_and_the_nth_rolls_back() -> None:
    d = Driver(with_hooks("  - {name: slo, type: step-gate, url: 'http://t/s', steps: [1]}\n"))
    d.tick()
    first = d.tick(answers(GATE_1, no("slo", "HTTP 500")))
    assert first.phase == Phase.PROGRESSING and first.state.failed_checks == 1
    assert first.state.reason == "failed check 1 of 2: step-gate hook slo: HTTP 500"
    second = d.tick(answers(GATE_1, no("slo", "timeout: no complete answer within 5s")))
    assert second.phase == Phase.ROLLED_BACK and second.routing == d.plan.baseline
    assert second.state.reason == "gate failed: step-gate hook slo: timeout: no complete answer within 5s"


def test_a_gate_and_a_step_gate_failing_in_one_tick_are_one_failed_check() -> None:
    d = Driver(with_hooks("  - {name: slo, type: step-gate, url: 'http://t/s'}\n"))
    d.tick()
    failed = d.tick(answers(GATE_1, no("slo", "HTTP 500")), verdict=Verdict.FAIL)
    assert (
        failed.state.failed_checks == 1
        and failed.state.reason == "failed check 1 of 2: r; step-gate hook slo: HTTP 500"
    )


def test_an_unanswered_step_gate_is_never_a_failed_check_but_the_step_cannot_complete() -> None:
    d = Driver(with_hooks("  - {name: slo, type: step-gate, url: 'http://t/s', steps: [1]}\n"))
    d.tick()
    for _ in range(4):  # well past the step's 10 s
        held = d.tick(answers(GATE_1, unanswered("slo")))
    assert held.phase == Phase.PROGRESSING and held.state.step == 0 and held.state.failed_checks == 0
    assert held.state.reason == ("step 1/3: 10%; holding: step-gate hook slo: not answered before the tick's deadline")
    passed = d.tick(answers(GATE_1, ok("slo")))
    assert passed.phase == Phase.PAUSED and passed.state.step == 1  # step complete: the approval step


def test_a_step_gate_applies_only_to_its_steps() -> None:
    d = Driver(with_hooks("  - {name: slo, type: step-gate, url: 'http://t/s', steps: [3]}\n"))
    d.ticks(3)
    assert d.state.phase == Phase.PAUSED  # step 1 completed with no step-gate answer: the hook is not for it


def test_confirm_promotion_holds_the_promotion_until_it_answers_2xx() -> None:
    d = Driver(with_hooks("  - {name: ticket, type: confirm-promotion, url: 'http://t/c'}\n"))
    d.ticks(3)
    d.tick(command=Command.RESUME)
    d.ticks(2)
    held = d.tick()
    assert held.phase == Phase.PROGRESSING and held.state.step == 2 and held.state.hook_wait == "confirm-promotion"
    assert held.state.reason == "holding before promotion: hook ticket: not called yet"
    held = d.tick(answers(CONFIRM, no("ticket", "HTTP 409")))
    assert held.phase == Phase.PROGRESSING and held.state.reason == "holding before promotion: hook ticket: HTTP 409"
    promoted = d.tick(answers(CONFIRM, ok("ticket")))
    assert promoted.phase == Phase.PROMOTED and promoted.routing == d.plan.promoted


def test_the_progress_deadline_fails_a_pre_step_hook_that_never_allows() -> None:
    d = Driver(with_hooks("  - {name: acceptance, type: pre-step, url: 'http://t/a', steps: [1]}\n"))
    held = d.ticks(11, hooks=answers(PRE_STEP_1, no("acceptance")))
    assert held.phase == Phase.PENDING and held.state.stalled_for == 55.0
    failed = d.tick(answers(PRE_STEP_1, no("acceptance")))
    assert failed.phase == Phase.FAILED and failed.routing == d.plan.baseline
    assert failed.state.reason.startswith(f"{PROGRESS_DEADLINE_REASON} (1m) exceeded after 60s without progress")
    assert failed.state.reason.endswith("holding before step 1/3: hook acceptance: HTTP 503")


def test_the_progress_deadline_counts_a_confirm_promotion_hold() -> None:
    d = Driver(with_hooks("  - {name: ticket, type: confirm-promotion, url: 'http://t/c'}\n"))
    d.ticks(3)
    d.tick(command=Command.RESUME)
    final = d.ticks(20, hooks=answers(CONFIRM, no("ticket")))
    assert final.phase == Phase.FAILED and "hook ticket: HTTP 503" in final.state.reason


def test_a_persons_commands_work_while_a_hook_holds() -> None:
    hooks = (
        "  - {name: acceptance, type: pre-step, url: 'http://t/a', steps: [3]}\n"
        "  - {name: ticket, type: confirm-promotion, url: 'http://t/c'}\n"
    )
    s = with_hooks(hooks)
    # abort
    d = Driver(s)
    d.ticks(3)
    aborted = d.tick(answers(PRE_STEP_3, no("acceptance")), command=Command.ABORT)
    assert aborted.phase == Phase.ROLLED_BACK and aborted.routing == d.plan.baseline
    # promote: an explicit override; confirm-promotion hooks are skipped, and the outcome says so
    d = Driver(s)
    d.ticks(3)
    promoted = d.tick(answers(PRE_STEP_3, no("acceptance")), command=Command.PROMOTE)
    assert promoted.phase == Phase.PROMOTED and promoted.routing == d.plan.promoted
    outcome = promoted.state.last_command
    assert outcome is not None and outcome.applied
    assert outcome.reason == "promoted by user (confirm-promotion hooks skipped: ticket)"
    # pause while the confirm-promotion hook holds, then resume: still held until it answers 2xx
    d = Driver(s)
    d.ticks(3)
    d.tick(answers(PRE_STEP_3, ok("acceptance")), command=Command.RESUME)
    d.ticks(2)
    assert d.tick().state.hook_wait == "confirm-promotion"
    paused = d.tick(command=Command.PAUSE)
    assert paused.phase == Phase.PAUSED and paused.state.paused_by_user
    d.tick(command=Command.RESUME)
    d.ticks(2)
    assert d.state.phase == Phase.PROGRESSING and d.state.hook_wait == "confirm-promotion"
    assert d.tick(answers(CONFIRM, ok("ticket"))).phase == Phase.PROMOTED


def test_without_hooks_nothing_changes() -> None:
    d = Driver(spec(BASE))
    first = d.tick()
    assert first.phase == Phase.PROGRESSING and first.state.hook_wait is None and first.state.hooks_passed == []


def test_hook_memory_is_not_durable() -> None:
    state = RolloutState(rollout="r", spec_digest="d", hooks_passed=["pre-step:2/a"], hook_wait="pre-step:2")
    assert "hooks_passed" not in state.durable() and "hook_wait" not in state.durable()
