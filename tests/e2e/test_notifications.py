"""End to end: a faulty version on real Envoy + Prometheus is rolled back, and the team's Slack-format receiver hears
about it with the reason (the breaching gate and its value), sent from the notification queue, not the tick."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from controller.analysis.prometheus import PrometheusSource
from controller.engine.phases import Phase
from controller.engine.runner import ManagedRollout, RolloutRunner, TickEvent
from controller.local.loadgen import LoadGenerator
from controller.local.stack import LocalStack, VersionKnobs
from controller.notify.observer import start_notifications
from controller.spec_loader import parse_spec_text
from controller.state.file_store import FileStateStore
from tests.e2e.conftest import require_local_stack
from tests.fakes.webhook_receiver import Answer, WebhookReceiver

require_local_stack()
pytestmark = pytest.mark.e2e

SLACK_PATH = "/services/T0/B0/e2e-secret-token"
SPEC = """
service: shop
namespace: e2e
versions: [{name: v1, weight: 100}, {name: v2, weight: 0}]
target: v2
steps:
  - {weight: 20, duration: 30s}
  - {weight: 100, duration: 2s}
gates:
  - {metric: error_rate, max: 5}
schedule: {interval: 1s}
analysis: {window: 5s, min_requests: 10}
rollback: {missing_data_timeout: 40s}
notifications:
  - {name: team, type: slack, url_file: "URL_FILE", events: [started, rolled_back]}
"""


def test_a_rollback_reaches_slack_with_the_gate_and_its_value(tmp_path: Path) -> None:
    with WebhookReceiver() as slack:
        slack.answer(SLACK_PATH, [Answer(500), Answer(200, b"ok", content_type="text/plain")])  # one retry
        url_file = tmp_path / "slack-url"
        url_file.write_text(slack.url + SLACK_PATH + "\n")
        spec = parse_spec_text(SPEC.replace("URL_FILE", str(url_file)), "notify.yaml")
        rollout = ManagedRollout.from_spec(spec)
        knobs = {"v1": VersionKnobs(), "v2": VersionKnobs(error_rate=0.3, seed=3)}
        stack = LocalStack(spec.service, spec.namespace, knobs, tmp_path / "stack", rollout.plan.baseline).start()
        notifier, dispatcher = start_notifications()
        events: list[TickEvent] = []
        runner = RolloutRunner(stack.router, PrometheusSource(stack.prometheus_url), FileStateStore(tmp_path / "state"),
                               observers=[notifier, events.append])  # fmt: skip
        runner.set_rollouts([rollout])
        load = LoadGenerator(stack.api_url, stack.host_header, rate_rps=40, max_requests=40 * 50, max_seconds=50,
                             seed=5)  # fmt: skip
        try:
            with load:
                deadline = time.monotonic() + 45
                while not runner.all_terminal() and time.monotonic() < deadline:
                    runner.tick()
                    time.sleep(1)
            rolled_back = slack.wait_for(lambda r: r.path == SLACK_PATH and "rolled back" in r.body.decode(), 10)
        finally:
            dispatcher.stop(2.0)
            stack.stop()
        assert events[-1].decision.phase == Phase.ROLLED_BACK
        assert rolled_back is not None, [r.body for r in slack.received()]
        text = rolled_back.json["text"]
        assert text.startswith("e2e/shop was rolled back (v2, step 1/2): gate failed: error_rate of v2 is ")
        assert "&gt; max 5.00%" in text  # the gate, its value and its limit
        section = rolled_back.json["blocks"][0]["text"]["text"]
        assert section.startswith(":red_circle: *e2e/shop was rolled back") and "error_rate" in section
        kinds = ["started" if " started " in r.body.decode() else "rolled_back" for r in slack.received(SLACK_PATH)]
        assert kinds == ["started", "started", "rolled_back"]  # started: a 500, then retried and delivered
        assert dispatcher.stats()[("slack", "sent")] == 2 and dispatcher.stats()[("slack", "retried")] == 1
