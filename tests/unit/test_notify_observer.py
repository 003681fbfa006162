"""Notifications from the runner: per rollout (its spec) and global (`--notifications FILE`), filtered by `events`,
queued off the tick; the global file's validation."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.analysis.metrics import VersionMetrics
from controller.cli import main
from controller.engine.phases import Phase
from controller.engine.runner import ManagedRollout, RolloutRunner, TickEvent
from controller.notify.delivery import DeliveryOptions, NotificationDispatcher
from controller.notify.observer import NotificationObserver, load_notifications
from controller.spec_loader import SpecError
from controller.spec_notify import Notification
from controller.state.file_store import FileStateStore
from tests.fakes.webhook_receiver import WebhookReceiver
from tests.unit.engine_fixtures import NO_APPROVAL_YAML, FakeClock, FixedMetrics, RecordingRouter, spec

HEALTHY = {"v1": VersionMetrics(200, 0, {}), "v2": VersionMetrics(100, 0, {})}
FAILING = {"v1": VersionMetrics(200, 0, {}), "v2": VersionMetrics(100, 10, {})}


@pytest.fixture()
def webhook_receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(secret=b"test-secret") as rx:
        yield rx


def with_notifications(text: str, name: str, url: str, secret: Path) -> str:
    return (
        text.replace("service: shop", f"service: {name}")
        + f"""
notifications:
  - {{name: ops, type: webhook, url: "{url}", secret_file: "{secret}", events: [rolled_back]}}
"""
    )


def test_spec_and_global_notifications_reach_their_receivers(webhook_receiver: WebhookReceiver, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("test-secret")
    slack_url = tmp_path / "slack-url"
    slack_url.write_text(webhook_receiver.url + "/slack")
    dispatcher = NotificationDispatcher(DeliveryOptions(attempt_timeout=1.0)).start()
    everyone = Notification(name="team", type="slack", url_file=str(slack_url), events=["started", "rolled_back"])
    observer = NotificationObserver(dispatcher, [everyone])
    metrics = FixedMetrics(dict(HEALTHY))
    clock = FakeClock()
    runner = RolloutRunner(RecordingRouter(), metrics, FileStateStore(tmp_path / "state"), clock=clock,
                           observers=[observer])  # fmt: skip
    own = spec(with_notifications(NO_APPROVAL_YAML, "shop", webhook_receiver.url + "/ops", secret))
    other = spec(NO_APPROVAL_YAML.replace("service: shop", "service: cart"))
    runner.set_rollouts([ManagedRollout.from_spec(own), ManagedRollout.from_spec(other)])
    for _ in range(3):
        runner.tick()
        clock.advance(5)
    metrics.by_version = dict(FAILING)
    runner.tick()
    try:
        assert wait_for_count(webhook_receiver, "/slack", 4)
        assert wait_for_count(webhook_receiver, "/ops", 1)
        time.sleep(0.2)  # nothing else arrives
        slack = sorted(r.json["text"].split(":")[0] for r in webhook_receiver.received("/slack"))
        assert slack == ["prod/cart started (v2, step 1/3)", "prod/cart was rolled back (v2, step 2/3)",
                         "prod/shop started (v2, step 1/3)", "prod/shop was rolled back (v2, step 2/3)"]  # fmt: skip
        ops = webhook_receiver.received("/ops")  # the spec's own: only its rollout, only what it asked for
        assert [(r.json["rollout"]["name"], r.json["event"]) for r in ops] == [("shop", "rolled_back")]
        assert all(r.signed_ok for r in ops)
    finally:
        dispatcher.stop(1.0)


def test_an_observer_failure_never_breaks_the_tick(tmp_path: Path) -> None:
    class Broken(NotificationDispatcher):
        def enqueue(self, *args: object) -> bool:
            raise RuntimeError("boom")

    seen: list[TickEvent] = []
    everyone = Notification(name="team", type="teams", url_file="/nonexistent")
    runner = RolloutRunner(
        RecordingRouter(),
        FixedMetrics(dict(HEALTHY)),
        FileStateStore(tmp_path),
        clock=FakeClock(),
        observers=[NotificationObserver(Broken(), [everyone]), seen.append],
    )
    runner.set_rollouts([ManagedRollout.from_spec(spec(NO_APPROVAL_YAML))])
    (event,) = runner.tick()
    assert event.decision.phase == Phase.HEADER_TEST and seen == [event]


def test_the_global_file_is_validated_with_lines(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("- {name: team, type: slack, url_file: /etc/ramp/slack-url, events: [rolled_back, failed]}\n"
                    "- {name: ops, type: webhook, url: 'https://ops.example.com/ramp'}\n")  # fmt: skip
    assert [n.name for n in load_notifications(good)] == ["team", "ops"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("- name: team\n  type: slack\n  url: https://hooks.slack.com/services/X\n"
                   "- name: team\n  type: pager\n  url_file: /x\n")  # fmt: skip
    with pytest.raises(SpecError) as caught:
        load_notifications(bad)
    text = str(caught.value)
    assert f"{bad}:1: 0: a slack webhook URL is a secret: give it in url_file" in text
    assert f"{bad}:5: 1.type:" in text
    for content, reason in [
        ("{a: 1}", "expected a YAML list"),
        ("- [", "invalid YAML"),
        ("", "expected exactly one YAML document"),
    ]:
        bad.write_text(content)
        with pytest.raises(SpecError, match=reason):
            load_notifications(bad)


def test_ramp_run_refuses_an_invalid_notifications_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "n.yaml"
    bad.write_text("- {name: Team, type: slack}\n")
    code = main(["run", "--prometheus", "http://127.0.0.1:9", "--envoy-routes-dir", str(tmp_path), "--envoy-admin", "http://127.0.0.1:9",
                 "--state-dir", str(tmp_path / "s"), "--notifications", str(bad), "--once"])  # fmt: skip
    assert code == 2
    assert f"ramp run: --notifications:\n{bad}:1: 0.name:" in capsys.readouterr().err


def wait_for_count(rx: WebhookReceiver, path: str, count: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(rx.received(path)) < count:
        time.sleep(0.02)
    return len(rx.received(path)) == count
