"""The load tester makes an unattended header step pass on real Envoy + Prometheus: a pre-step hook in the spec starts
it (signed), its requests carry the step's header, Envoy routes them to the target version, and Prometheus shows that
version's requests. Nobody else sends any traffic."""

from __future__ import annotations

import json
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from controller.analysis.credentials import CredentialFile
from controller.analysis.prometheus import PrometheusSource
from controller.deadline import Deadline
from controller.engine.phases import Phase
from controller.engine.runner import ManagedRollout, RolloutRunner, TickEvent
from controller.hooks.evaluation import HookRounds
from controller.hooks.post_rollout import PostRolloutHooks
from controller.http_deadline import bounded_request
from controller.loadtest.request import Caps
from controller.loadtest.server import LoadTestServer
from controller.loadtest.tester import LoadTester
from controller.local.stack import LocalStack, VersionKnobs
from controller.spec_loader import parse_spec_text
from controller.state.file_store import FileStateStore
from tests.e2e.conftest import require_local_stack

require_local_stack()
pytestmark = pytest.mark.e2e

RPS = 20
SPEC = """
service: shop
namespace: e2e
versions: [{{name: v1, weight: 100}}, {{name: v2, weight: 0}}]
target: v2
steps:
  - {{header: {{name: x-version, value: v2}}, duration: 5s}}
  - {{weight: 100, duration: 2s}}
gates:
  - {{metric: error_rate, max: 5}}
  - {{metric: latency, quantile: p99, max: 250}}
schedule: {{interval: 1s}}
analysis: {{window: 5s, min_requests: 10}}
rollback: {{on_missing_data: rollback, missing_data_timeout: 20s}}
hooks:
  - name: load
    type: pre-step
    steps: [1]
    url: {api}/start
    timeout: 5s
    secret_file: {secret}
    metadata: {{url: "{target}", host: "{host}", rps: "{rps}", duration: 40s}}
"""


def requests_of(prometheus: str, version: str) -> float:
    promql = f'sum(istio_requests_total{{destination_service_name="shop",destination_version="{version}"}})'
    answer = bounded_request("GET", f"{prometheus}/api/v1/query?query={urllib.parse.quote(promql)}",
                             deadline=Deadline(5))  # fmt: skip
    result: list[Any] = json.loads(answer.body)["data"]["result"]
    return float(result[0]["value"][1]) if result else 0.0


def test_a_pre_step_hook_starts_load_that_makes_the_unattended_header_step_pass(tmp_path: Path) -> None:
    secret = tmp_path / "hook-secret"
    secret.write_text("load-secret\n")
    tester = LoadTester(Caps(max_rps=50, max_duration=120))
    server = LoadTestServer(tester, "127.0.0.1", 0, secret=CredentialFile(secret, "load tester secret")).start()
    api = f"http://127.0.0.1:{server.port}"
    probe = parse_spec_text(SPEC.format(api=api, secret=secret, target="http://x/", host="shop", rps=RPS), "s.yaml")
    stack = LocalStack("shop", "e2e", {"v1": VersionKnobs(), "v2": VersionKnobs()}, tmp_path / "stack",
                       ManagedRollout.from_spec(probe).plan.baseline).start()  # fmt: skip
    try:
        text = SPEC.format(api=api, secret=secret, target=stack.api_url, host=stack.host_header, rps=RPS)
        rollout = ManagedRollout.from_spec(parse_spec_text(text, "loadtest.yaml"))
        store = FileStateStore(tmp_path / "state")
        events: list[TickEvent] = []
        runner = RolloutRunner(stack.router, PrometheusSource(stack.prometheus_url), store, observers=[events.append],
                               hook_rounds=HookRounds(), post_rollout_hooks=PostRolloutHooks())  # fmt: skip
        runner.set_rollouts([rollout])
        header_step_v2 = 0.0
        deadline = time.monotonic() + 50
        while not runner.all_terminal() and time.monotonic() < deadline:
            runner.tick()
            state = store.load("shop")
            if state is not None and state.phase == Phase.HEADER_TEST:
                header_step_v2 = requests_of(stack.prometheus_url, "v2")
            time.sleep(1)
        state = store.load("shop")
        assert state is not None and state.phase == Phase.PROMOTED, state and state.reason
        runs = tester.runs()
        # One run for the header step, however many ticks called the hook; it carried the step's header route.
        assert len(runs) == 1 and runs[0]["step"] == 1 and runs[0]["header"] == "x-version: v2"
        assert runs[0]["errors"] == {} and runs[0]["ok"] >= 10
        # The header step judged v2 on the load tester's traffic alone: Prometheus saw v2's requests during it.
        assert header_step_v2 >= 10
        # The step was judged on that traffic: no data until the load tester's requests were scraped, then a pass
        # that completed it (the step never completes on missing data).
        leaving = next(e for e in events if e.decision.state.phase == Phase.PROGRESSING)
        assert leaving.report is not None and leaving.report.verdict == "pass"
        assert [e.decision.state.phase for e in events[: events.index(leaving)]] == [Phase.HEADER_TEST] * events.index(
            leaving
        )
        # The header requests reached v2; v1 saw at most those sent between the hook's answer and Envoy's new route
        # (the hook is called before the step's routing is applied, within one tick).
        time.sleep(6)  # two scrapes
        assert requests_of(stack.prometheus_url, "v2") >= runs[0]["ok"] * 0.8
        assert requests_of(stack.prometheus_url, "v1") <= RPS * 2
    finally:
        server.stop()
        tester.close()
        stack.stop()
