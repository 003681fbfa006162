"""The notification queue: delivery to a real receiver on 127.0.0.1, retries, Retry-After, rate limits, a full queue,
shutdown, signatures, redaction, and a tick that never waits for any of it."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from prometheus_client import generate_latest
from structlog.testing import capture_logs

from controller.controller_metrics import ControllerMetrics
from controller.engine.phases import Phase
from controller.engine.ports import Transition
from controller.notify.delivery import DeliveryOptions, NotificationDispatcher
from controller.notify.destination import Destination
from controller.notify.registry import Notifier
from controller.notify.slack import render as slack_render
from controller.spec_notify import Notification
from tests.fakes.webhook_receiver import Answer, WebhookReceiver

FAST = DeliveryOptions(attempt_timeout=1.0, give_up_after=10.0, backoff=0.05, max_backoff=0.2)
SLACK_PATH = "/services/T000/B000/XXXXsecretXXXX"


@pytest.fixture()
def webhook_receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(secret=b"test-secret") as rx:
        yield rx


def transition(kind: str = "rolled_back", reason: str = "gate failed: error_rate of v2 is 20.00% > max 5.00%") -> Any:
    return Transition(kind=kind, rollout="shop", namespace="prod", service="shop", target="v2",  # type: ignore[arg-type]
                      phase=Phase.ROLLED_BACK, from_phase=Phase.PROGRESSING, step=1, steps=4, reason=reason,
                      at=1.0, weights=(("v1", 100), ("v2", 0)))  # fmt: skip


def slack_to(rx: WebhookReceiver, tmp_path: Path, path: str = SLACK_PATH, name: str = "chat") -> Destination:
    url_file = tmp_path / f"{name}-url"
    url_file.write_text(rx.url + path + "\n")
    return Destination(Notification(name=name, type="slack", url_file=str(url_file)), "shop")


@pytest.fixture()
def dispatcher() -> Iterator[NotificationDispatcher]:
    d = NotificationDispatcher(FAST).start()
    yield d
    d.stop(1.0)


def test_a_slack_message_is_delivered_and_counted(webhook_receiver: WebhookReceiver, tmp_path: Path,
                                                   dispatcher: NotificationDispatcher) -> None:  # fmt: skip
    assert dispatcher.enqueue(slack_to(webhook_receiver, tmp_path), transition())
    got = webhook_receiver.wait_for(lambda r: r.path == SLACK_PATH)
    assert got is not None and got.method == "POST" and got.headers["content-type"].startswith("application/json")
    assert "error_rate of v2 is 20.00% &gt; max 5.00%" in got.json["text"]
    assert wait_until(lambda: dispatcher.stats().get(("slack", "sent")) == 1)


def test_a_generic_webhook_is_signed_with_its_secret_file(
    webhook_receiver: WebhookReceiver, tmp_path: Path, dispatcher: NotificationDispatcher
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("test-secret\n")
    hook = Notification(name="ops", type="webhook", url=webhook_receiver.url + "/ops", secret_file=str(secret))
    dispatcher.enqueue(Destination(hook), transition())
    got = webhook_receiver.wait_for(lambda r: r.path == "/ops")
    assert got is not None and got.signed_ok is True
    assert got.json["event"] == "rolled_back" and got.json["rollout"]["name"] == "shop"
    secret.write_text("rotated\n")  # a rotated secret is used from the next message on
    dispatcher.enqueue(Destination(hook), transition("promoted"))
    second = webhook_receiver.wait_for(lambda r: r.path == "/ops" and r.json["event"] == "promoted")
    assert second is not None and second.signed_ok is False


def test_5xx_is_retried_with_backoff_then_sent(
    webhook_receiver: WebhookReceiver, tmp_path: Path, dispatcher: NotificationDispatcher
) -> None:
    webhook_receiver.answer(SLACK_PATH, [Answer(500), Answer(503), Answer(200, b"ok")])
    dispatcher.enqueue(slack_to(webhook_receiver, tmp_path), transition())
    assert wait_until(lambda: dispatcher.stats().get(("slack", "sent")) == 1)
    assert len(webhook_receiver.received(SLACK_PATH)) == 3
    assert dispatcher.stats()[("slack", "retried")] == 2


def test_a_final_4xx_is_not_retried_and_the_log_never_shows_the_url(
    webhook_receiver: WebhookReceiver, tmp_path: Path
) -> None:
    webhook_receiver.answer(SLACK_PATH, Answer(404, b"no_service " + SLACK_PATH.encode(), content_type="text/plain"))
    d = NotificationDispatcher(FAST).start()
    with capture_logs() as logs:
        d.enqueue(slack_to(webhook_receiver, tmp_path), transition())
        assert wait_until(lambda: d.stats().get(("slack", "failed")) == 1)
        d.stop(1.0)
    assert len(webhook_receiver.received(SLACK_PATH)) == 1
    (failure,) = [e for e in logs if e["event"] == "notification not delivered"]
    assert failure["log_level"] == "warning" and "HTTP 404: no_service" in failure["error"]
    assert failure["destination"] == "http://127.0.0.1/***" and failure["rollout"] == "shop"
    assert "XXXXsecretXXXX" not in repr(logs)


def test_a_receiver_that_never_answers_costs_the_tick_nothing(
    webhook_receiver: WebhookReceiver, tmp_path: Path
) -> None:
    webhook_receiver.answer(SLACK_PATH, Answer(delay=30))
    d = NotificationDispatcher(DeliveryOptions(attempt_timeout=0.3, give_up_after=0.9, backoff=0.05)).start()
    destination = slack_to(webhook_receiver, tmp_path)
    took = []
    for _ in range(20):
        started = time.perf_counter()
        d.enqueue(destination, transition())
        took.append(time.perf_counter() - started)
    assert max(took) < 0.01  # memory only: no I/O, no waiting
    assert wait_until(lambda: d.stats().get(("slack", "failed"), 0) >= 1, timeout=5)
    started = time.monotonic()
    d.stop(0.5)
    assert time.monotonic() - started < 2.0  # a bounded drain, even with a hanging receiver
    stats = d.stats()
    assert stats.get(("slack", "sent"), 0) == 0
    assert stats.get(("slack", "failed"), 0) + stats.get(("slack", "dropped"), 0) == 20


class _TooManyRequests(BaseHTTPRequestHandler):
    """429 with Retry-After: 1 on the first request, then 200 (the shared fake has no Retry-After header)."""

    seen: ClassVar[list[float]] = []

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).seen.append(time.monotonic())
        first = len(type(self).seen) == 1
        self.send_response(429 if first else 200)
        if first:
            self.send_header("Retry-After", "1")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")


def test_429_waits_for_retry_after(tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TooManyRequests)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        hook = Notification(name="ops", type="webhook", url=f"http://127.0.0.1:{server.server_address[1]}/x")
        d = NotificationDispatcher(FAST).start()
        d.enqueue(Destination(hook), transition())
        assert wait_until(lambda: d.stats().get(("webhook", "sent")) == 1, timeout=5)
        d.stop(1.0)
        first, second = _TooManyRequests.seen
        assert second - first >= 0.95  # not the 50 ms backoff: the receiver's Retry-After
    finally:
        server.shutdown()
        server.server_close()


def test_a_retry_after_beyond_the_budget_fails_at_once(tmp_path: Path) -> None:
    answers = iter([(429, "3600")])

    def post(method: str, url: str, **kwargs: Any) -> Any:
        from controller.http_deadline import HttpAnswer

        status, after = next(answers)
        return HttpAnswer(status, {"retry-after": after}, b"slow down")

    hook = Notification(name="ops", type="webhook", url="http://127.0.0.1:9/x")
    d = NotificationDispatcher(FAST, post=post).start()
    d.enqueue(Destination(hook), transition())
    assert wait_until(lambda: d.stats().get(("webhook", "failed")) == 1)
    d.stop(0.1)
    assert d.stats().get(("webhook", "retried"), 0) == 0


def test_one_destination_is_rate_limited(webhook_receiver: WebhookReceiver, tmp_path: Path) -> None:
    destination = slack_to(webhook_receiver, tmp_path)
    destination.notifier = Notifier(slack_render, per_second=5.0, burst=1)
    d = NotificationDispatcher(FAST).start()
    for _ in range(4):
        d.enqueue(destination, transition())
    assert wait_until(lambda: d.stats().get(("slack", "sent")) == 4, timeout=5)
    d.stop(1.0)
    times = [r.at for r in webhook_receiver.received(SLACK_PATH)]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.15 and times[-1] - times[0] >= 0.55  # 5/s: about 0.2 s apart, never a burst


def test_a_slow_destination_does_not_hold_back_another(webhook_receiver: WebhookReceiver, tmp_path: Path) -> None:
    webhook_receiver.answer("/slow", Answer(delay=30))
    d = NotificationDispatcher(DeliveryOptions(attempt_timeout=3.0, workers=2)).start()
    slow = slack_to(webhook_receiver, tmp_path, "/slow", "slow")
    fast = slack_to(webhook_receiver, tmp_path, "/fast", "fast")
    for _ in range(3):
        d.enqueue(slow, transition())
    d.enqueue(fast, transition())
    started = time.monotonic()
    assert webhook_receiver.wait_for(lambda r: r.path == "/fast", timeout=2.5) is not None
    assert time.monotonic() - started < 1.0
    d.stop(0.2)


def test_a_full_queue_drops_progress_before_outcomes_and_counts_it(tmp_path: Path) -> None:
    hook = Destination(Notification(name="ops", type="webhook", url="http://127.0.0.1:9/x"))
    d = NotificationDispatcher(DeliveryOptions(capacity=3))  # not started: nothing leaves the queue
    assert d.enqueue(hook, transition("rolled_back"))
    assert d.enqueue(hook, transition("step"))
    assert d.enqueue(hook, transition("step"))
    with capture_logs() as logs:
        assert d.enqueue(hook, transition("failed"))  # the oldest progress message makes room
        assert d.enqueue(hook, transition("promoted"))
    assert d.queued() == 3 and d.stats()[("webhook", "dropped")] == 2
    kinds = [item.transition.kind for lane in d._lanes.values() for item in lane.items]
    assert kinds == ["rolled_back", "failed", "promoted"]
    assert [e["event"] for e in logs] == ["notification queue full: message dropped"]  # logged once, counted always
    assert d.stop(0) == 3 and d.stats()[("webhook", "dropped")] == 5
    assert not d.enqueue(hook, transition())  # stopped: counted, never raised


def test_an_unreadable_url_file_is_retried_then_counted_as_failed(tmp_path: Path) -> None:
    missing = Notification(name="chat", type="teams", url_file=str(tmp_path / "nope"))
    d = NotificationDispatcher(DeliveryOptions(give_up_after=0.5, backoff=0.05, max_backoff=0.1)).start()
    with capture_logs() as logs:
        d.enqueue(Destination(missing, "shop"), transition())
        assert wait_until(lambda: d.stats().get(("teams", "failed")) == 1)
        d.stop(0.1)
    failure = next(e for e in logs if e["event"] == "notification not delivered")
    assert (
        "cannot use the teams notification URL file" in failure["error"]
        and failure["destination"] == "(URL unreadable)"
    )


def test_metrics_export_outcomes_by_notifier(
    webhook_receiver: WebhookReceiver, tmp_path: Path, dispatcher: NotificationDispatcher
) -> None:
    metrics = ControllerMetrics()
    metrics.watch_notifications(dispatcher.stats, dispatcher.queued)
    dispatcher.enqueue(slack_to(webhook_receiver, tmp_path), transition())
    assert wait_until(lambda: dispatcher.stats().get(("slack", "sent")) == 1)
    text = generate_latest(metrics.registry).decode()
    assert 'ramp_notifications_total{notifier="slack",outcome="sent"} 1.0' in text
    assert 'ramp_notifications_total{notifier="teams",outcome="failed"} 0.0' in text
    assert "ramp_notifications_queued 0.0" in text and 'ramp_notification_retries_total{notifier="slack"} 0.0' in text


def wait_until(check: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return bool(check())
