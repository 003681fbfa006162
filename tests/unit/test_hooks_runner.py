"""Hooks through the real runner, against a real receiver on 127.0.0.1: called only when due, concurrently for
many rollouts, within the tick's deadline, and post-rollout payloads delivered from a queue outside the tick."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from controller.analysis.metrics import VersionMetrics
from controller.deadline import Deadline
from controller.engine.phases import Command, Phase
from controller.engine.runner import ManagedRollout, RolloutRunner
from controller.hooks.evaluation import HookRounds
from controller.hooks.post_rollout import BackgroundSender, Delivery, PostRolloutHooks
from controller.spec_hooks import Hook
from controller.state.file_store import FileStateStore
from tests.fakes.webhook_receiver import Answer, WebhookReceiver
from tests.unit.engine_fixtures import FakeClock, FixedMetrics, RecordingRouter, spec

HEALTHY = {"v1": VersionMetrics(200, 0, {}), "v2": VersionMetrics(100, 0, {})}


@pytest.fixture()
def rx() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(secret=b"test-secret") as receiver:
        yield receiver


def spec_text(url: str, hooks: str, service: str = "shop", failed_checks: int = 1) -> str:
    return f"""
service: {service}
namespace: prod
versions: [{{name: v1, weight: 100}}, {{name: v2, weight: 0}}]
target: v2
steps:
  - {{header: {{value: v2}}, duration: 10s}}
  - {{weight: 10, duration: 10s}}
  - {{weight: 50, duration: 10s}}
gates: [{{metric: error_rate, max: 2}}]
schedule: {{interval: 5s}}
rollback: {{failed_checks: {failed_checks}}}
hooks:
{hooks.replace("URL", url)}
"""


def make_runner(tmp_path: Path, texts: list[str], clock: FakeClock) -> tuple[RolloutRunner, FileStateStore]:
    store = FileStateStore(tmp_path)
    runner = RolloutRunner(router=RecordingRouter(), metrics=FixedMetrics(dict(HEALTHY)), store=store, clock=clock,
                           hook_rounds=HookRounds(), post_rollout_hooks=PostRolloutHooks())  # fmt: skip
    runner.set_rollouts([ManagedRollout.from_spec(spec(t)) for t in texts])
    return runner, store


def tick(runner: RolloutRunner, clock: FakeClock, deadline: Deadline | None = None) -> None:
    runner.tick(deadline)
    clock.advance(5)


def test_a_pre_step_hook_holds_its_step_until_2xx_and_is_called_only_when_the_step_is_due(
    tmp_path: Path, rx: WebhookReceiver
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("test-secret")
    hooks = f"  - {{name: acceptance, type: pre-step, url: 'URL/pre', steps: [2], retries: 0, secret_file: '{secret}'}}"
    clock = FakeClock()
    runner, store = make_runner(tmp_path / "state", [spec_text(rx.url, hooks)], clock)
    rx.answer("/pre", [Answer(503), Answer(503), Answer(200)])
    tick(runner, clock)  # header step entered
    tick(runner, clock)  # 5 s into it
    assert rx.received("/pre") == []  # step 1 not over: the hook is not called
    tick(runner, clock)  # step 1 over: the hook answers 503
    state = store.load("shop")
    assert state is not None and state.step == 0 and state.phase == Phase.HEADER_TEST
    assert state.reason == "holding before step 2/3: hook acceptance: HTTP 503"
    tick(runner, clock)
    tick(runner, clock)  # 200: step 2 entered
    state = store.load("shop")
    assert state is not None and state.step == 1 and state.phase == Phase.PROGRESSING
    tick(runner, clock)
    calls = rx.received("/pre")
    assert len(calls) == 3 and all(c.signed_ok for c in calls)
    payload = calls[-1].json
    assert {k: payload[k] for k in ("version", "hook", "type", "rollout", "phase", "step", "steps", "weights")} == {
        "version": 1, "hook": "acceptance", "type": "pre-step", "rollout": "shop", "phase": "HeaderTest", "step": 2,
        "steps": 3, "weights": {"v1": 90, "v2": 10},
    }  # fmt: skip
    assert payload["reason"] == "before step 2/3: 10%" and payload["header_routes"][0]["value"] == "v2"


def test_a_failing_step_gate_rolls_back_and_the_post_rollout_hook_gets_the_final_payload(
    tmp_path: Path, rx: WebhookReceiver
) -> None:
    hooks = (
        "  - {name: slo, type: step-gate, url: 'URL/gate', steps: [2], retries: 0}\n"
        "  - {name: log, type: post-rollout, url: 'URL/post', metadata: {team: shop}}"
    )
    rx.answer("/gate", Answer(500))
    clock = FakeClock()
    runner, store = make_runner(tmp_path, [spec_text(rx.url, hooks)], clock)
    for _ in range(5):
        tick(runner, clock)
    state = store.load("shop")
    assert state is not None and state.phase == Phase.ROLLED_BACK
    assert state.reason == "gate failed: step-gate hook slo: HTTP 500"
    assert len(rx.received("/gate")) == 1  # called on the ticks of step 2 only
    final = rx.wait_for(lambda r: r.path == "/post", timeout=5)
    assert final is not None and final.json["phase"] == "RolledBack" and final.json["type"] == "post-rollout"
    assert final.json["reason"] == state.reason and final.json["weights"] == {"v1": 100, "v2": 0}
    assert final.json["step"] == 2 and final.json["metadata"] == {"team": "shop"}
    for _ in range(3):
        tick(runner, clock)
    time.sleep(0.2)
    assert len(rx.received("/post")) == 1  # once per ending


def test_a_step_gate_is_called_on_every_tick_of_its_steps_and_post_rollout_tells_the_promotion(
    tmp_path: Path, rx: WebhookReceiver
) -> None:
    hooks = (
        "  - {name: slo, type: step-gate, url: 'URL/gate', steps: [1, 3]}\n"
        "  - {name: ticket, type: confirm-promotion, url: 'URL/confirm'}\n"
        "  - {name: log, type: post-rollout, url: 'URL/post'}"
    )
    clock = FakeClock()
    runner, store = make_runner(tmp_path, [spec_text(rx.url, hooks)], clock)
    for _ in range(12):
        tick(runner, clock)
    state = store.load("shop")
    assert state is not None and state.phase == Phase.PROMOTED
    gate_steps = [r.json["step"] for r in rx.received("/gate")]
    assert gate_steps == [1, 1, 3, 3]  # the ticks of steps 1 and 3 (10 s each, 5 s ticks, entered on a tick)
    (confirm,) = rx.received("/confirm")
    assert confirm.json["weights"] == {"v1": 0, "v2": 100} and confirm.json["step"] == 3
    final = rx.wait_for(lambda r: r.path == "/post", timeout=5)
    assert final is not None and final.json["phase"] == "Promoted" and final.json["weights"] == {"v1": 0, "v2": 100}


def test_hooks_of_many_rollouts_are_called_concurrently(tmp_path: Path, rx: WebhookReceiver) -> None:
    rx.answer("/slow", Answer(delay=1.0))
    hooks = "  - {name: acceptance, type: pre-step, url: 'URL/slow', steps: [1], timeout: 5s}"
    texts = [spec_text(rx.url, hooks, service=f"svc{i}") for i in range(6)]
    clock = FakeClock()
    runner, store = make_runner(tmp_path, texts, clock)
    started = time.monotonic()
    runner.tick(Deadline(20))
    took = time.monotonic() - started
    assert took < 2.5, took  # one after the other: 6 s
    assert len(rx.received("/slow")) == 6
    for i in range(6):
        state = store.load(f"svc{i}")
        assert state is not None and state.phase == Phase.HEADER_TEST


def test_a_slow_hook_never_holds_the_tick_past_its_deadline_and_is_not_a_failed_check(
    tmp_path: Path, rx: WebhookReceiver
) -> None:
    rx.answer("/hang", Answer(delay=30))
    hooks = (
        "  - {name: slo, type: step-gate, url: 'URL/hang', steps: [1], timeout: 20s}\n"
        "  - {name: load, type: pre-step, url: 'URL/fast', steps: [1]}"
    )
    clock = FakeClock()
    runner, store = make_runner(tmp_path, [spec_text(rx.url, hooks)], clock)
    tick(runner, clock, Deadline(5))  # pre-step answers at once: step 1 entered
    for _ in range(3):
        started = time.monotonic()
        tick(runner, clock, Deadline(2.0))
        assert time.monotonic() - started < 2.0  # the hooks' share: 2 s minus a reserve of 0.5 s
    state = store.load("shop")
    assert state is not None and state.phase == Phase.HEADER_TEST and state.failed_checks == 0
    assert state.reason == (
        "step 1/3: header x-version: v2; holding: step-gate hook slo: not answered before the tick's deadline: "
        "timeout: no complete answer within 1.5s"
    )


def test_a_persons_abort_while_a_pre_step_hook_holds(tmp_path: Path, rx: WebhookReceiver) -> None:
    rx.answer("/pre", Answer(503))
    hooks = "  - {name: acceptance, type: pre-step, url: 'URL/pre', steps: [1], retries: 0}"
    clock = FakeClock()
    runner, store = make_runner(tmp_path, [spec_text(rx.url, hooks)], clock)
    tick(runner, clock)
    state = store.load("shop")
    assert state is not None and state.phase == Phase.PENDING and "hook acceptance: HTTP 503" in state.reason
    store.request("shop", Command.ABORT)
    tick(runner, clock)
    state = store.load("shop")
    assert state is not None and state.phase == Phase.ROLLED_BACK and state.reason == "aborted by user"
    assert len(rx.received("/pre")) == 1  # not called for a tick that aborts


def test_the_background_sender_never_blocks_and_drops_when_its_queue_is_full(rx: WebhookReceiver) -> None:
    rx.answer("/post", Answer(delay=1.0))
    sender = BackgroundSender(capacity=1)
    hook = Hook.model_validate({"name": "log", "type": "post-rollout", "url": rx.url + "/post", "timeout": 2})
    started = time.monotonic()
    accepted = [sender.submit(Delivery("shop", hook, b"{}")) for _ in range(5)]
    assert time.monotonic() - started < 0.5
    assert accepted.count(False) >= 3 and sender.dropped == accepted.count(False)
    sender.close(timeout=5)
    assert sender.delivered == accepted.count(True)


def test_a_runner_given_no_hook_calls_holds_hooked_steps_and_says_so(tmp_path: Path, rx: WebhookReceiver) -> None:
    """The engine calls hooks only through what the entry point gives it: without it a pre-step hook is never
    answered, so the step it guards holds (never a pass), and the log names the rollouts."""
    hooks = "  - {name: acceptance, type: pre-step, url: 'URL/pre', steps: [2], retries: 0}"
    clock = FakeClock()
    store = FileStateStore(tmp_path / "state")
    runner = RolloutRunner(router=RecordingRouter(), metrics=FixedMetrics(dict(HEALTHY)), store=store, clock=clock)
    runner.set_rollouts([ManagedRollout.from_spec(spec(spec_text(rx.url, hooks)))])
    with capture_logs() as logs:
        for _ in range(6):
            tick(runner, clock)
    state = store.load("shop")
    assert state is not None and state.step == 0 and state.phase == Phase.HEADER_TEST
    assert state.reason.startswith("holding before step 2/3: hook acceptance")
    assert rx.received("/pre") == []
    assert any(e["event"].startswith("specs have hooks but this runner calls none") and e["rollouts"] == ["shop"]
               for e in logs)  # fmt: skip
