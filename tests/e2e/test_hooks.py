"""Hooks end to end on the real stack (Envoy route file -> Envoy, gates on real Prometheus): a pre-step webhook
that answers 503 holds the rollout before its step (the data plane keeps the previous step's routing, the reason
names the hook), then 200 lets it proceed; the post-rollout hook receives the final, signed payload."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.analysis.prometheus import PrometheusSource
from controller.engine.phases import Phase
from controller.engine.runner import ManagedRollout, RolloutRunner, TickEvent
from controller.hooks.evaluation import HookRounds
from controller.hooks.post_rollout import PostRolloutHooks
from controller.local.loadgen import LoadGenerator, send_requests
from controller.local.stack import LocalStack, VersionKnobs
from controller.spec_loader import parse_spec_text
from controller.state.file_store import FileStateStore
from tests.e2e.conftest import require_local_stack
from tests.fakes.webhook_receiver import Answer, WebhookReceiver

require_local_stack()
pytestmark = pytest.mark.e2e

SPEC = """
service: shop
namespace: e2e
versions: [{name: v1, weight: 100}, {name: v2, weight: 0}]
target: v2
steps:
  - {header: {name: x-version, value: v2}, duration: 3s}
  - {weight: 10, duration: 3s}
  - {weight: 100, duration: 2s}
gates: [{metric: error_rate, max: 5}]
schedule: {interval: 1s}
analysis: {window: 5s, min_requests: 10}
rollback: {missing_data_timeout: 40s}
hooks:
  - {name: acceptance, type: pre-step, url: 'URL/pre', steps: [2], retries: 0, timeout: 2s, secret_file: 'SECRET'}
  - {name: release-log, type: post-rollout, url: 'URL/post', secret_file: 'SECRET', metadata: {team: shop}}
"""
HOLD = "holding before step 2/3: hook acceptance: HTTP 503"


@pytest.fixture()
def rx() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(secret=b"e2e-secret") as receiver:
        yield receiver


def test_a_pre_step_hook_holds_then_allows_and_the_post_rollout_hook_gets_the_outcome(
    tmp_path: Path, rx: WebhookReceiver
) -> None:
    secret = tmp_path / "hook-secret"
    secret.write_text("e2e-secret\n")
    rx.answer("/pre", [Answer(503), Answer(503), Answer(503), Answer(200)])
    spec = parse_spec_text(SPEC.replace("URL", rx.url).replace("SECRET", str(secret)), "hooks.yaml")
    rollout = ManagedRollout.from_spec(spec)
    knobs = {"v1": VersionKnobs(), "v2": VersionKnobs()}
    stack = LocalStack(spec.service, spec.namespace, knobs, tmp_path / "stack", rollout.plan.baseline).start()
    events: list[TickEvent] = []
    held_traffic: Counter[str] | None = None
    try:
        store = FileStateStore(tmp_path / "state")
        runner = RolloutRunner(stack.router, PrometheusSource(stack.prometheus_url), store, observers=[events.append],
                               hook_rounds=HookRounds(), post_rollout_hooks=PostRolloutHooks())  # fmt: skip
        runner.set_rollouts([rollout])
        load = LoadGenerator(
            stack.api_url, stack.host_header, rate_rps=40, max_requests=40 * 60, max_seconds=60,
            header_fraction=0.3, header=("x-version", "v2"), seed=5,
        )  # fmt: skip
        with load:
            limit = time.monotonic() + 45
            while not runner.all_terminal() and time.monotonic() < limit:
                (event,) = runner.tick()
                if event.decision.state.reason == HOLD and held_traffic is None:
                    got = send_requests(stack.api_url, stack.host_header, 50, random_seed=3)
                    held_traffic = Counter(str(v) if status == 200 else f"HTTP {status}" for status, v in got)
                time.sleep(1)
        state = store.load("shop")
        assert state is not None and state.phase == Phase.PROMOTED, state and state.reason
        # Held before step 2 with the hook's reason: the header step's routing stayed on the data plane.
        held = [e for e in events if e.decision.state.reason == HOLD]
        assert len(held) == 3 and all(e.decision.state.step == 0 and not e.routing_written for e in held)
        assert held_traffic == Counter({"v1": 50})  # had step 2 (10%) been entered: P(no v2 in 50) = 0.5%
        # Then the 200 let step 2 start: 10% on Envoy, then 100%, then promoted.
        written = [e.decision.routing.weight_of("v2") for e in events if e.routing_written]
        assert written == [0, 10, 100, 100]
        calls = rx.received("/pre")
        assert len(calls) == 4 and all(c.signed_ok for c in calls)
        assert calls[-1].json["step"] == 2 and calls[-1].json["weights"] == {"v1": 90, "v2": 10}
        final = rx.wait_for(lambda r: r.path == "/post", timeout=10)
        assert final is not None and final.signed_ok
        payload = final.json
        assert payload["phase"] == "Promoted" and payload["type"] == "post-rollout" and payload["hook"] == "release-log"
        assert payload["weights"] == {"v1": 0, "v2": 100} and payload["header_routes"] == []
        assert payload["reason"] == "all steps passed: v2 promoted" and payload["metadata"] == {"team": "shop"}
        assert len(rx.received("/post")) == 1
    finally:
        stack.stop()
