"""Bounded state: the `ramp.dev/state` annotation (and the local state file) stay small however many rollouts.

Before, the annotation grew by ~550 bytes per rollout and a service hit Kubernetes' 256 KiB annotation limit
after a few hundred rollouts. History is now bounded in the core (MAX_HISTORY) and the annotation has a hard
cap (MAX_STATE_BYTES, 32 KiB: oldest history dropped first, then long texts cut).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from kubernetes import client as k8s_client

from controller.analysis.metrics import VersionMetrics
from controller.engine.phases import MAX_HISTORY, Phase, PhaseChange, RolloutState
from controller.engine.runner import ManagedRollout, RolloutRunner
from controller.k8s.client import KubeApi, RetryPolicy
from controller.plan import build_plan
from controller.routing.istio import IstioBackend
from controller.routing.state_codec import MAX_STATE_BYTES, encode_state, same_durable_state
from controller.state.file_store import FileStateStore, StateStore
from tests.k8s.emulator import KubeHarness
from tests.k8s.helpers import DR, REPO, VS, count, kube_api, stored, three_versions
from tests.unit.engine_fixtures import FakeClock, FixedMetrics, RecordingRouter, spec

ROLLOUTS = int(os.environ.get("RAMP_TEST_ROLLOUTS", "1000"))
EMULATOR_ROLLOUTS = 60  # kmock answers in O(stored versions) per request: 1,000 rollouts would take ~30 min
LIMIT = 256 * 1024  # Kubernetes: all annotations of an object together


def nth_rollout(i: int) -> ManagedRollout:
    """Rollout i of one service: v{i} -> v{i+1}, one short step."""
    return ManagedRollout.from_spec(spec(f"""
service: shop
namespace: prod
versions: [{{name: v{i}, weight: 100}}, {{name: v{i + 1}, weight: 0}}]
target: v{i + 1}
steps: [{{weight: 100, duration: 1s}}]
gates: [{{metric: error_rate, max: 2}}]
schedule: {{interval: 1s}}
"""))


def run_rollouts(store: StateStore, router: object, rollouts: int, size_of: Callable[[], int]) -> list[int]:
    """`rollouts` consecutive rollouts, each driven to Promoted; the state's size after each."""
    clock = FakeClock()
    metrics = FixedMetrics()
    runner = RolloutRunner(router=router, metrics=metrics, store=store, clock=clock)  # type: ignore[arg-type]
    sizes = []
    for i in range(rollouts):
        runner.set_rollouts([nth_rollout(i)])
        metrics.by_version = {f"v{i}": VersionMetrics(200, 0, {}), f"v{i + 1}": VersionMetrics(100, 0, {})}
        state = None
        for _ in range(6):
            events = runner.tick()
            clock.advance(1)
            if events and events[0].decision.state.settled:
                state = events[0].decision.state
                break
        assert state is not None and state.phase == Phase.PROMOTED and state.spec_digest == nth_rollout(i).digest
        sizes.append(size_of())
    return sizes


@contextmanager
def fast_apiserver() -> Iterator[str]:
    """bench's in-memory apiserver (GET/LIST/POST/PUT with resourceVersion conflicts) on 127.0.0.1."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "bench.fast_apiserver", str(port)], cwd=REPO,
                               stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        yield f"http://127.0.0.1:{port}"
    finally:
        process.kill()
        process.wait(10)


def fast_api(url: str) -> KubeApi:
    config = k8s_client.Configuration()
    config.host, config.retries, config.proxy = url, False, None
    return KubeApi(k8s_client.ApiClient(config), request_timeout=5.0, retry=RetryPolicy(sleep=lambda _d: None))


def annotations_size(vs: dict[str, object] | None) -> int:
    assert isinstance(vs, dict)
    notes = vs["metadata"]["annotations"]  # type: ignore[index]
    return sum(len(k) + len(v.encode()) for k, v in notes.items())


def test_a_thousand_rollouts_of_one_service_keep_the_annotation_far_under_the_limit() -> None:
    with fast_apiserver() as url:
        api = fast_api(url)
        backend = IstioBackend(api)

        def read(plural: str) -> dict[str, object]:
            found = api.custom_objects.get_namespaced_custom_object("networking.istio.io", "v1", "prod", plural, "shop")
            assert isinstance(found, dict)
            return found

        sizes = run_rollouts(backend, backend, ROLLOUTS, lambda: annotations_size(read(VS)))
        vs, rule = read(VS), read(DR)
    saved = json.loads(vs["metadata"]["annotations"]["ramp.dev/state"])  # type: ignore[index]
    assert len(saved["history"]) <= MAX_HISTORY and saved["phase"] == "Promoted"
    assert saved["history"][-1]["reason"] == f"all steps passed: v{ROLLOUTS} promoted"
    assert max(sizes) <= 8 * 1024 < LIMIT // 30 and max(sizes) - min(sizes[MAX_HISTORY:]) <= 64  # flat
    assert sizes[-1] - sizes[MAX_HISTORY] <= 64  # rollout 40 and rollout 1000 weigh the same (digits aside)
    subsets = rule["spec"]["subsets"]  # type: ignore[index]
    print(f"\nannotations after {ROLLOUTS} rollouts: {sizes[-1]} bytes (max {max(sizes)}, after rollout "
          f"{MAX_HISTORY}: {sizes[MAX_HISTORY]}); history {len(saved['history'])} entries; DestinationRule "
          f"{len(json.dumps(rule))} bytes, {len(subsets)} subsets")


def test_the_emulator_agrees_on_the_annotation_size(kube: KubeHarness) -> None:
    backend = IstioBackend(kube_api(kube))
    size = lambda: annotations_size(stored(kube, VS, "prod", "shop"))  # noqa: E731
    sizes = run_rollouts(backend, backend, EMULATOR_ROLLOUTS, size)
    assert max(sizes) <= 8 * 1024 and sizes[-1] - sizes[MAX_HISTORY] <= 64
    assert count(kube, "put", VS) <= 2 * EMULATOR_ROLLOUTS


def test_a_thousand_rollouts_keep_the_local_state_file_small(tmp_path: Path) -> None:
    store = FileStateStore(tmp_path)
    path = tmp_path / "shop.state.json"
    sizes = run_rollouts(store, RecordingRouter(), ROLLOUTS, lambda: path.stat().st_size)
    saved = json.loads(path.read_text())
    assert len(saved["history"]) <= MAX_HISTORY
    assert max(sizes) <= 16 * 1024 and sizes[-1] - sizes[MAX_HISTORY] <= 256
    print(f"\nstate file after {ROLLOUTS} rollouts: {sizes[-1]} bytes (max {max(sizes)})")


def long_history(entries: int, reason_bytes: int) -> RolloutState:
    history = [PhaseChange(phase=Phase.PROGRESSING, step=1, at=1000.0 + i, reason=f"{i}:" + "r" * reason_bytes)
               for i in range(entries)]  # fmt: skip
    return RolloutState(rollout="reviews", spec_digest="d", phase=Phase.PROGRESSING, step=1, step_started_at=1.0,
                        history=history, reason="x" * 10_000)  # fmt: skip


def test_the_annotation_has_a_hard_cap_dropping_the_oldest_history_first() -> None:
    state = long_history(MAX_HISTORY, 4000)  # 160 KB of history: far over the cap
    raw = encode_state(state)
    assert len(raw.encode()) <= MAX_STATE_BYTES
    kept = RolloutState.model_validate_json(raw)
    assert kept.history == state.history[-len(kept.history) :] and 0 < len(kept.history) < MAX_HISTORY
    assert kept.dropped_history == MAX_HISTORY - len(kept.history)  # counted, not silently lost
    assert same_durable_state(raw, state)  # no write per tick for a capped state
    assert not same_durable_state(raw, state.model_copy(update={"step_started_at": 2.0}))
    huge = long_history(1, 100_000).model_copy(update={"drift": "d" * 50_000})  # one entry alone is too big
    raw = encode_state(huge)
    assert len(raw.encode()) <= MAX_STATE_BYTES
    assert RolloutState.model_validate_json(raw).phase == Phase.PROGRESSING


def test_the_backend_writes_a_capped_state_once_and_then_nothing(kube: KubeHarness) -> None:
    routing = build_plan(three_versions()).all_routings()[2]
    b = IstioBackend(kube_api(kube))
    b.track({"reviews": ("shop", "reviews")})
    b.load("reviews")
    b.save(long_history(MAX_HISTORY, 4000))
    assert b.apply(routing) is True
    vs = stored(kube, "virtualservices", "shop", "reviews")
    assert vs is not None and len(vs["metadata"]["annotations"]["ramp.dev/state"].encode()) <= MAX_STATE_BYTES
    puts = count(kube, "put", VS)
    for _ in range(3):
        loaded = b.load("reviews")
        assert loaded is not None
        b.save(loaded.model_copy(update={"reason": "still here"}))
        assert b.apply(routing) is False
    fresh = IstioBackend(kube_api(kube))  # a restart reads the capped state and has nothing to write either
    fresh.track({"reviews": ("shop", "reviews")})
    assert fresh.load("reviews") is not None and fresh.apply(routing) is False
    assert count(kube, "put", VS) == puts
